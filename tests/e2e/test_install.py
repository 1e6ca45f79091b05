"""The install against the real control plane: `kubectl apply -k manifests/`, Pod
Security "restricted" admission of the operator pod, the operator working with exactly
its ServiceAccount's rights, the aggregated user roles, the NetworkPolicies and (with
two gateway replicas) the gateway's PodDisruptionBudget, and the Helm chart's objects
accepted by the API server. (No CNI enforces the policies here: what they allow is
checked field by field in tests/unit/test_network_policies.py.)

The operator cannot run from its image here (no container runtime: KWOK only pretends
to run pods), so the RBAC proof runs `python -m openmodel` locally with a kubeconfig
holding the installed ServiceAccount's token: the same identity and the same rules as
the pod would have.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import openmodel.kube.leader

from harness import (
    Cluster,
    NotYet,
    binaries,
    create_namespace,
    delete_namespace,
    describe_namespace,
    service_account_kubeconfig,
    wait_for,
)
from harness.k8s import bind_cache_volume
from openmodel_fixtures import (
    GROUP,
    PLURAL,
    RESTRICTED_NAMESPACE_PREFIX,
    VERSION,
    load_example,
    start_operator,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "openmodel-system"
OPERATOR = "openmodel-operator"
SA_USER = f"system:serviceaccount:{SYSTEM}:{OPERATOR}"
SA_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{SYSTEM}", "system:authenticated"]
OPERATOR_POD_LABELS = "app.kubernetes.io/name=openmodel,app.kubernetes.io/component=operator"
FORBIDDEN_IN_LOG = re.compile(r"\b403\b|Forbidden|Not enough permissions", re.IGNORECASE)


def kubectl(
    cluster: Cluster, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    exe = binaries.require_bin_dir() / "kubectl"
    return subprocess.run(
        [str(exe), f"--kubeconfig={cluster.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def manifest_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((REPO / "manifests" / "kustomization.yaml").read_text())
    objs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        objs += [d for d in yaml.safe_load_all((REPO / "manifests" / resource).read_text()) if d]
    return objs


@pytest.fixture(scope="module")
def installed(cluster: Cluster, api_client: client.ApiClient) -> Iterator[None]:
    """manifests/ applied as a user would. On exit, everything but the CRD is removed
    (the CRD is shared with the other tests of the session)."""
    result = kubectl(
        cluster, "apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests")
    )
    assert result.returncode == 0, f"kubectl apply -k manifests/ failed:\n{result.stderr}"
    ext = client.ApiextensionsV1Api(api_client)

    def established() -> bool | NotYet:
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        conds = {c.type: c.status for c in crd.status.conditions or []}
        return conds.get("Established") == "True" or NotYet(conds)

    wait_for(established, 30, "the CRD from manifests/ to be Established")
    yield
    rbac = client.RbacAuthorizationV1Api(api_client)
    for obj in manifest_objects():
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            if kind == "ClusterRole":
                rbac.delete_cluster_role(name)
            elif kind == "ClusterRoleBinding":
                rbac.delete_cluster_role_binding(name)
        except ApiException as e:
            if e.status != 404:
                raise
    client.CoreV1Api(api_client).delete_namespace(SYSTEM, propagation_policy="Background")


def access(
    api: client.ApiClient,
    verb: str,
    resource: str,
    *,
    group: str = "",
    name: str | None = None,
    namespace: str | None = None,
    subresource: str | None = None,
    user: str = SA_USER,
    groups: list[str] | None = None,
) -> bool:
    """What the API server's authorizer answers for `user` (a SubjectAccessReview)."""
    attributes: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
    if namespace:
        attributes["namespace"] = namespace
    if subresource:
        attributes["subresource"] = subresource
    if name:
        attributes["name"] = name
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": SA_GROUPS if groups is None else groups,
                "resourceAttributes": attributes,
            },
        }
    )
    return bool(review.status.allowed)


# -- Pod Security ------------------------------------------------------------------------


def test_operator_pod_is_admitted_under_restricted_pod_security(
    installed: None, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    labels = core.read_namespace(SYSTEM).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

    # The control: the same namespace refuses a pod that breaks "restricted", so an
    # admitted operator pod below means something.
    offender = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "offender"},
        "spec": {
            "containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]
        },
    }
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(SYSTEM, offender, dry_run="All")
    assert refused.value.status == 403
    assert "violates PodSecurity" in str(refused.value.body), refused.value.body

    def operator_pod() -> Any:
        pods = core.list_namespaced_pod(SYSTEM, label_selector=OPERATOR_POD_LABELS).items
        return pods[0] if pods else NotYet("no operator pod yet")

    def why() -> str:
        events = core.list_namespaced_event(SYSTEM).items
        return "events in openmodel-system:\n" + "\n".join(
            f"  {e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}"
            for e in events
        )

    # The ReplicaSet controller creates the pod only if admission lets it.
    pod = wait_for(operator_pod, 60, why)
    assert pod.spec.security_context.run_as_non_root is True
    failed = [
        e.message for e in core.list_namespaced_event(SYSTEM).items if e.reason == "FailedCreate"
    ]
    assert failed == []


# -- the NetworkPolicies ---------------------------------------------------------------


def test_network_policies_are_stored_as_written(installed: None, cluster: Cluster) -> None:
    policies = [o for o in manifest_objects() if o["kind"] == "NetworkPolicy"]
    assert {p["metadata"]["name"] for p in policies} == {"openmodel-gateway", OPERATOR}
    for policy in policies:
        name = policy["metadata"]["name"]
        got = kubectl(cluster, "-n", SYSTEM, "get", "networkpolicy", name, "-o", "json")
        assert got.returncode == 0, got.stderr
        # Nothing dropped or defaulted differently (a misplaced key would be refused by
        # the strict field validation of `apply --server-side` already).
        assert yaml.safe_load(got.stdout)["spec"] == policy["spec"], name


# -- the operator's ServiceAccount -------------------------------------------------------


ALLOWED = [
    # (verb, group, resource, subresource, namespace or None for cluster-wide)
    ("watch", GROUP, PLURAL, None, None),
    ("list", GROUP, PLURAL, None, None),
    ("get", GROUP, PLURAL, None, "team-a"),
    ("patch", GROUP, PLURAL, "status", "team-a"),
    ("list", "apps", "deployments", None, None),
    ("watch", "apps", "deployments", None, None),
    ("create", "apps", "deployments", None, "team-a"),
    ("patch", "apps", "deployments", None, "team-a"),
    ("get", "apps", "deployments", None, "team-a"),
    ("create", "", "services", None, "team-a"),
    ("patch", "", "services", None, "team-a"),
    ("watch", "", "services", None, None),
    ("create", "", "persistentvolumeclaims", None, "team-a"),
    ("patch", "", "persistentvolumeclaims", None, "team-a"),
    ("get", "", "persistentvolumeclaims", None, "team-a"),
    ("list", "", "pods", None, None),
    ("watch", "", "pods", None, None),
    ("create", "", "events", None, "team-a"),
    ("list", "apiextensions.k8s.io", "customresourcedefinitions", None, None),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions", None, None),
    ("create", "coordination.k8s.io", "leases", None, SYSTEM),
    # A replica that comes to span nodes: the Deployment goes once its group serves.
    ("delete", "apps", "deployments", None, "team-a"),
]

DENIED = [
    ("get", "", "secrets", None, "team-a"),
    ("list", "", "secrets", None, None),
    ("get", "", "secrets", None, SYSTEM),
    ("update", GROUP, PLURAL, None, "team-a"),  # the spec is Git's
    ("patch", GROUP, PLURAL, None, "team-a"),
    ("create", GROUP, PLURAL, None, "team-a"),
    ("delete", GROUP, PLURAL, None, "team-a"),
    ("update", GROUP, PLURAL, "scale", "team-a"),
    ("update", "apps", "deployments", None, "team-a"),
    ("update", "apps", "deployments", "scale", "team-a"),
    ("create", "", "pods", None, "team-a"),
    ("delete", "", "pods", None, "team-a"),
    ("create", "", "pods", "exec", "team-a"),
    ("delete", "", "persistentvolumeclaims", None, "team-a"),
    ("get", "", "configmaps", None, "team-a"),
    ("list", "", "nodes", None, None),
    ("create", "coordination.k8s.io", "leases", None, "team-a"),
    ("update", "coordination.k8s.io", "leases", None, "kube-system"),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", None, None),
    ("create", "rbac.authorization.k8s.io", "rolebindings", None, "team-a"),
]


def test_service_account_may_hold_only_the_autoscaler_lease(
    installed: None, api_client: client.ApiClient
) -> None:
    lease, coordination = "openmodel-autoscaler", "coordination.k8s.io"
    for verb in ("get", "update"):
        assert access(api_client, verb, "leases", group=coordination, namespace=SYSTEM, name=lease)
        assert not access(
            api_client, verb, "leases", group=coordination, namespace=SYSTEM, name="other"
        )
    assert not access(
        api_client, "delete", "leases", group=coordination, namespace=SYSTEM, name=lease
    )


def _case_id(case: tuple[str, str, str, str | None, str | None]) -> str:
    verb, group, resource, sub, ns = case
    return f"{verb}-{group or 'core'}-{resource}{'-' + sub if sub else ''}-{ns or 'all'}"


@pytest.mark.parametrize("case", ALLOWED, ids=_case_id)
def test_service_account_may(installed: None, api_client: client.ApiClient, case: Any) -> None:
    verb, group, resource, sub, ns = case
    assert access(api_client, verb, resource, group=group, namespace=ns, subresource=sub)


@pytest.mark.parametrize("case", DENIED, ids=_case_id)
def test_service_account_may_not(installed: None, api_client: client.ApiClient, case: Any) -> None:
    verb, group, resource, sub, ns = case
    assert not access(api_client, verb, resource, group=group, namespace=ns, subresource=sub)


@pytest.fixture
def rbac_namespace(api_client: client.ApiClient) -> Iterator[str]:
    """A namespace the session's (admin) operator leaves alone (it serves
    !e2e-rbac-*), so only the operator under test can do the work there."""
    name = create_namespace(api_client, RESTRICTED_NAMESPACE_PREFIX)
    yield name
    delete_namespace(api_client, name)


def test_operator_with_only_its_service_account_serves_a_model_deployment(
    installed: None, api_client: client.ApiClient, rbac_namespace: str, tmp_path: Path
) -> None:
    namespace = rbac_namespace
    # The shipped default: cluster-wide, as manifests/deployment.yaml runs it.
    kubeconfig = service_account_kubeconfig(
        api_client, SYSTEM, OPERATOR, tmp_path / "sa.kubeconfig"
    )
    op = start_operator(
        kubeconfig,
        tmp_path,
        extra_env={
            "OPENMODEL_POD_NAMESPACE": SYSTEM,
            "POD_NAME": "e2e-install",
            "OPENMODEL_LEADER_ELECTION": "true",
        },
        name="operator-as-sa",
    )
    try:
        _serve_and_repair(api_client, namespace, tmp_path / "cache")
        if hasattr(openmodel.kube.leader, "leader_elector"):  # leader election wired in
            _lease_held_by(api_client, "e2e-install")
        # kopf and the operator log refusals as warnings (Python's last-resort handler
        # prints them when nothing configured logging).
        op_log = op.log_path.read_text(errors="replace")
        denied = [line for line in op_log.splitlines() if FORBIDDEN_IN_LOG.search(line)]
        assert denied == [], "the operator was refused something:\n" + "\n".join(denied)
        assert op.alive(), op.log_tail()
    except BaseException:
        print(f"operator log ({op.log_path}):\n{op.log_tail(120)}")
        raise
    finally:
        op.stop()


def _lease_held_by(api: client.ApiClient, identity_prefix: str) -> None:
    coordination = client.CoordinationV1Api(api)

    def held() -> bool | NotYet:
        holders = {
            lease.metadata.name: lease.spec.holder_identity
            for lease in coordination.list_namespaced_lease(SYSTEM).items
        }
        mine = [n for n, h in holders.items() if (h or "").startswith(identity_prefix)]
        return bool(mine) or NotYet(holders)

    wait_for(held, 30, f"a Lease in {SYSTEM} held by the operator (Role on leases)")


def _serve_and_repair(api: client.ApiClient, namespace: str, cache_dir: Path) -> None:
    core = client.CoreV1Api(api)
    body = load_example("qwen7b-l4.yaml", namespace)  # has a cache: a claim and a Job too
    name = body["metadata"]["name"]
    # KWOK completes the download Job's pod once its claim is bound.
    volume = bind_cache_volume(
        api, namespace, f"{name}-cache-rwx", body["spec"]["cache"]["size"], cache_dir
    )
    try:
        _serve_and_repair_cached(api, namespace, name, body)
    finally:
        core.delete_persistent_volume(volume)


def _serve_and_repair_cached(
    api: client.ApiClient, namespace: str, name: str, body: dict[str, Any]
) -> None:
    custom = client.CustomObjectsApi(api)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def children() -> tuple[Any, Any, Any] | NotYet:
        try:
            return (
                apps.read_namespaced_deployment(name, namespace),
                core.read_namespaced_service(name, namespace),
                core.read_namespaced_persistent_volume_claim(f"{name}-cache-rwx", namespace),
            )
        except ApiException as e:
            return NotYet(f"{e.status} {e.reason}")

    # The engine only once the download Job completed (the Job, its pod and the claim
    # are the service account's to create and read, too).
    deployment, service, _ = wait_for(children, 60, lambda: describe_namespace(api, namespace))
    assert deployment.metadata.owner_references[0].name == name

    def status_written() -> dict[str, Any] | NotYet:
        md = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = md.get("status") or {}
        if status.get("observedGeneration") == md["metadata"]["generation"] and status.get(
            "conditions"
        ):
            return md
        return NotYet(status)

    wait_for(status_written, 30, "status written through modeldeployments/status")

    def event_posted() -> bool | NotYet:
        reasons = {
            e.reason
            for e in core.list_namespaced_event(namespace).items
            if e.involved_object.name == name and (e.source.component or "") == "openmodel"
        }
        # Creation posts no "Applied" Event (the conditions say it); the pods here do
        # not schedule, so the Event is Unschedulable: any Event proves the right.
        return bool(reasons) or NotYet(reasons)

    wait_for(event_posted, 30, "an Event posted by the operator as its service account")

    # A deleted child comes back: the watch on Services and create rights, as the SA.
    core.delete_namespaced_service(name, namespace)

    def service_recreated() -> bool | NotYet:
        try:
            again = core.read_namespaced_service(name, namespace)
        except ApiException as e:
            return NotYet(f"{e.status} {e.reason}")
        return again.metadata.uid != service.metadata.uid or NotYet(
            "the old Service is still there"
        )

    wait_for(service_recreated, 30, "the deleted Service to be recreated")


# -- people ---------------------------------------------------------------------------


def test_built_in_roles_cover_model_deployments(
    installed: None, api_client: client.ApiClient, namespace: str
) -> None:
    rbac = client.RbacAuthorizationV1Api(api_client)
    for user, role in (("alice", "edit"), ("bob", "view"), ("carol", "admin")):
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": f"{user}-{role}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                ],
            },
        )

    def may(user: str, verb: str, subresource: str | None = None) -> bool:
        return access(
            api_client, verb, PLURAL, group=GROUP, namespace=namespace, subresource=subresource,
            user=user, groups=["system:authenticated"],
        )  # fmt: skip

    # The clusterrole-aggregation controller folds the labelled roles in shortly after
    # they are created.
    wait_for(
        lambda: (
            (may("alice", "create") and may("bob", "list") and may("carol", "delete"))
            or NotYet(
                {
                    u: may(u, v)
                    for u, v in (("alice", "create"), ("bob", "list"), ("carol", "delete"))
                }
            )
        ),
        30,
        "aggregation into admin, edit and view",
    )
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"):
        assert may("alice", verb), verb
        assert may("carol", verb), verb
    for verb in ("get", "update", "patch"):
        assert may("alice", verb, "scale"), f"kubectl scale needs {verb} on modeldeployments/scale"
    assert not may("alice", "patch", "status"), "status is the operator's"
    for verb in ("get", "list", "watch"):
        assert may("bob", verb), verb
    for verb in ("create", "update", "patch", "delete"):
        assert not may("bob", verb), verb
    assert not may("bob", "update", "scale")
    assert not may("dave", "get"), "no binding, no access"


# -- the Helm chart ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set", "replicaCount=2", "--set", "watchNamespaces={team-a,team-b}",
         "--set", "gateway.replicaCount=2"],
    ],
    ids=["defaults", "two-replicas-two-namespaces"],
)  # fmt: skip
def test_helm_chart_objects_are_accepted_by_the_api_server(
    installed: None, cluster: Cluster, api_client: client.ApiClient, values: list[str]
) -> None:
    helm = binaries.bin_dir() / "helm"
    assert helm.is_file(), f"helm not built at {helm}: run `bash hack/build-control-plane.sh`"
    version = kubectl(cluster, "version", "-o", "json")
    assert version.returncode == 0, version.stderr
    server = yaml.safe_load(version.stdout)["serverVersion"]["gitVersion"]
    # A namespace of its own, labelled as docs/install.md says: the objects of the
    # kubectl install in openmodel-system have a different (immutable) selector.
    target = create_namespace(api_client, "openmodel-helm")
    core = client.CoreV1Api(api_client)
    core.patch_namespace(
        target, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                         "pod-security.kubernetes.io/warn": "restricted"}}}
    )  # fmt: skip
    try:
        chart = str(REPO / "charts" / "openmodel")
        rendered = subprocess.run(
            # --skip-tests: `helm test`'s pod names a ServiceAccount that a dry run does
            # not create (test_helm_release.py runs it for real).
            [str(helm), "template", "openmodel", chart, "--namespace", target,
             "--kube-version", server, "--skip-tests", *values],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        # Server-side dry run: the API server validates every object (strict field
        # validation), and the namespace's Pod Security "warn" level judges the pod template.
        applied = kubectl(
            cluster, "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-",
            stdin=rendered.stdout,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        assert "PodSecurity" not in applied.stderr, applied.stderr
        assert "deployment.apps/openmodel-operator serverside-applied (server dry run)" in (
            applied.stdout
        )
        accepted = [
            "networkpolicy.networking.k8s.io/openmodel-gateway",
            "networkpolicy.networking.k8s.io/openmodel-operator",
        ]
        if "gateway.replicaCount=2" in values:
            accepted.append("poddisruptionbudget.policy/openmodel-gateway")
        else:
            assert "poddisruptionbudget" not in applied.stdout, applied.stdout
        for name in accepted:
            assert f"{name} serverside-applied (server dry run)" in applied.stdout, name
    finally:
        delete_namespace(api_client, target)


def test_helm_install_and_uninstall(
    installed: None, cluster: Cluster, api_client: client.ApiClient
) -> None:
    """A real `helm install` of the chart (release `om-e2e`, so its cluster-scoped names
    do not clash with the kubectl install), the operator and gateway pods scheduled and
    Running on KWOK nodes, then `helm uninstall` removing them again."""
    helm = binaries.bin_dir() / "helm"
    assert helm.is_file(), f"helm not built at {helm}: run `bash hack/build-control-plane.sh`"
    target = create_namespace(api_client, "openmodel-helm-install")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HOME": str(cluster.workdir)}

    def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm), *args, "--namespace", target],
            capture_output=True, text=True, timeout=120, check=False, env=env,
        )  # fmt: skip

    try:
        # The CRDs exist already (the kubectl install's, not Helm's): a second install
        # leaves them to whoever manages them (docs/install.md).
        done = run_helm(
            "install", "om-e2e", str(REPO / "charts" / "openmodel"), "--set", "crds.enabled=false"
        )
        assert done.returncode == 0, done.stderr
        status = run_helm("status", "om-e2e", "-o", "json")
        assert status.returncode == 0, status.stderr
        assert yaml.safe_load(status.stdout)["info"]["status"] == "deployed"
        core = client.CoreV1Api(api_client)

        def both_running() -> Any:
            pods = core.list_namespaced_pod(target).items
            running = {
                p.metadata.labels["app.kubernetes.io/component"]: p
                for p in pods
                if p.status.phase == "Running"
            }
            if set(running) != {"operator", "gateway"}:
                return NotYet([(p.metadata.name, p.status.phase) for p in pods])
            return running

        pods = wait_for(both_running, 60, lambda: describe_namespace(api_client, target))
        assert pods["operator"].spec.service_account_name == "om-e2e-openmodel-operator"
        assert pods["gateway"].spec.service_account_name == "om-e2e-openmodel-gateway"
        gone = run_helm("uninstall", "om-e2e", "--wait")
        assert gone.returncode == 0, gone.stderr
        rbac = client.RbacAuthorizationV1Api(api_client)
        names = [r.metadata.name for r in rbac.list_cluster_role().items]
        assert not [n for n in names if n.startswith("om-e2e-")], names
    finally:
        delete_namespace(api_client, target)
