"""The install: manifests/ (kubectl apply -k) and the Helm chart (charts/openmodel).

Checked against the code they install: the RBAC rules against what the operator and
kopf call, the Deployment against the operator's defaults and Pod Security
"restricted", the chart against manifests/ and config.py. `kubectl kustomize`, `helm
lint` and `helm template` run with the binaries hack/build-control-plane.sh builds
(located exactly as the e2e harness does); without them those tests skip and say how
to build them.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import openmodel.__main__ as entry
import openmodel.main  # noqa: F401  (registers the kopf handlers inspected below)
from openmodel import telemetry
from openmodel.config import DEFAULT_ENGINE_IMAGES, PlatformConfig, parse_config
from openmodel.engines import ENGINES
from openmodel.kube import calls as kube
from openmodel.kube import leader
from openmodel.metering.loop import CHECKPOINT_NAME

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
CHART = REPO / "charts" / "openmodel"
NAMESPACE = "openmodel-system"
OPERATOR = "openmodel-operator"
RELEASE = "openmodel"

Obj = dict[str, Any]
Key = tuple[str, str]  # (kind, name)


# -- loading ---------------------------------------------------------------------------


def documents(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_key(objs: Iterable[Obj]) -> dict[Key, Obj]:
    out: dict[Key, Obj] = {}
    for obj in objs:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in out, f"duplicate {key}"
        out[key] = obj
    return out


def kustomization() -> Obj:
    return yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())  # type: ignore[no-any-return]


def manifest_objects() -> dict[Key, Obj]:
    objs: list[Obj] = []
    for resource in kustomization()["resources"]:
        objs += documents((MANIFESTS / resource).read_text())
    return by_key(objs)


M = manifest_objects()


def rule_set(role: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples: order and grouping do not matter."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def verbs_on(role: Mapping[str, Any], group: str, resource: str) -> set[str]:
    return {v for g, r, v in rule_set(role) if (g, r) == (group, resource)}


def operator_deployment(objs: Mapping[Key, Obj]) -> Obj:
    return objs[("Deployment", OPERATOR)]


def container(objs: Mapping[Key, Obj]) -> Obj:
    (only,) = operator_deployment(objs)["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def env(objs: Mapping[Key, Obj]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objs)["env"]}


def named_port(objs: Mapping[Key, Obj], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container(objs)["ports"]}
    return int(ports[name])


# -- manifests/ --------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_file():
    listed = set(kustomization()["resources"])
    on_disk = {
        str(p.relative_to(MANIFESTS))
        for p in MANIFESTS.rglob("*.yaml")
        if p.name != "kustomization.yaml"
    }
    assert listed == on_disk


def test_namespace_enforces_restricted_pod_security():
    labels = M[("Namespace", NAMESPACE)]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_namespaced_object_lives_in_the_operator_namespace():
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for (kind, name), obj in M.items():
        if kind not in cluster_scoped:
            assert obj["metadata"].get("namespace") == NAMESPACE, (kind, name)


EXPECTED_OPERATOR_RULES = {
    ("openmodel.dev", "modeldeployments"): {"get", "list", "watch"},
    ("openmodel.dev", "modeldeployments/status"): {"patch"},
    ("openmodel.dev", "externalmodels"): {"get", "list", "watch"},
    ("openmodel.dev", "externalmodels/status"): {"patch"},
    ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("leaderworkerset.x-k8s.io", "leaderworkersets"): {"get", "list", "create", "patch", "delete"},
    ("leaderworkerset.x-k8s.io", "leaderworkersets/scale"): {"patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "patch"},
    ("inference.networking.k8s.io", "inferencepools"): {"get", "create", "patch"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "namespaces"): {"get"},
    ("", "pods"): {"list", "watch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"create", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}


def grouped(triples: set[tuple[str, str, str]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in triples:
        out.setdefault((group, resource), set()).add(verb)
    return out


def test_operator_cluster_role_is_exactly_the_reviewed_list():
    role = M[("ClusterRole", OPERATOR)]
    assert grouped(rule_set(role)) == EXPECTED_OPERATOR_RULES


def test_operator_cluster_role_has_no_secrets_wildcards_or_escalation():
    for group, resource, verb in rule_set(M[("ClusterRole", OPERATOR)]):
        assert "*" not in (group, resource, verb)
        assert resource != "secrets"
        assert verb not in ("escalate", "bind", "impersonate", "deletecollection")
        # Deletes: the engine pods' own NetworkPolicy when the platform turns policies
        # off (patch could already open it; delete gives no power beyond that), and the
        # engine workload of one kind once its replacement of the other kind serves.
        assert verb != "delete" or resource in (
            "networkpolicies", "deployments", "leaderworkersets",
        )  # fmt: skip
        # The operator never writes a ModelDeployment's spec.
        assert not (resource == "modeldeployments" and verb in ("update", "patch", "create"))


def _resource_of(path: str) -> tuple[str, str]:
    """(apiGroup, plural) of an API collection path like /apis/apps/v1/namespaces/{ns}/x."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    return group, parts[-1]


def _kopf_watched() -> set[tuple[str, str]]:
    import kopf

    registry = kopf.get_default_registry()
    return {
        (h.selector.group or "", h.selector.plural or h.selector.any_name or "")
        for h in registry._watching.get_all_handlers()
    }


def test_kopf_can_list_and_watch_every_resource_it_has_handlers_for():
    role = M[("ClusterRole", OPERATOR)]
    watched = _kopf_watched()
    assert ("openmodel.dev", "modeldeployments") in watched
    for group, resource in watched:
        assert {"list", "watch"} <= verbs_on(role, group, resource), (group, resource)


def _api_paths() -> list[str]:
    """Every API path kube.py keeps in a module-level table (_COLLECTIONS, ...)."""
    return [
        path
        for value in vars(kube).values()
        if isinstance(value, Mapping)
        for path in value.values()
        if isinstance(path, str) and path.startswith(("/api/", "/apis/"))
    ]


def test_every_resource_the_operator_calls_is_granted():
    role = M[("ClusterRole", OPERATOR)]
    assert len(_api_paths()) >= len(kube._COLLECTIONS)
    for path in _api_paths():
        group, resource = _resource_of(path)
        assert verbs_on(role, group, resource), f"{path}: no rule for {group}/{resource}"
    # Children are applied (create + patch) and read back for drift.
    for group, resource in (
        ("apps", "deployments"),
        ("", "services"),
        ("", "persistentvolumeclaims"),
    ):
        assert {"get", "create", "patch"} <= verbs_on(role, group, resource)


def test_no_rule_for_a_resource_nobody_uses():
    role = M[("ClusterRole", OPERATOR)]
    used = {_resource_of(p) for p in _api_paths()} | _kopf_watched()
    used |= {
        ("openmodel.dev", "modeldeployments/status"),  # kube.apply(subresource="status")
        ("openmodel.dev", "externalmodels/status"),  # the ExternalModel loop's verdict
        _resource_of(kube.ACCESS_REVIEWS),  # kube.service_account_may (ExternalModel keys)
        ("apiextensions.k8s.io", "customresourcedefinitions"),  # kopf's resource scanning
        ("leaderworkerset.x-k8s.io", "leaderworkersets/scale"),  # kube.scale (autoscaler)
        ("", "pods/log"),  # kube.log_tail: a weights download's progress line
    }
    assert set(grouped(rule_set(role))) <= used


def _lease_name() -> str:
    """The Lease leader.leader_elector() takes (LeaseElector(api, namespace, NAME, ...))."""
    source = Path(leader.__file__).read_text()
    found = re.search(r'LeaseElector\(\s*api,\s*namespace,\s*"([^"]+)"', source)
    assert found, "cannot find the Lease name in openmodel/kube/leader.py"
    return found.group(1)


def test_leader_election_is_a_namespaced_role_on_the_one_lease_and_the_checkpoint():
    assert _resource_of(leader.LEASES) == ("coordination.k8s.io", "leases")
    role = M[("Role", "openmodel-leader-election")]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert grouped(rule_set(role)) == {
        ("coordination.k8s.io", "leases"): {"get", "create", "update"},
        ("", "configmaps"): {"get", "create", "patch"},
    }
    # create cannot be limited by name; reading and renewing (saving) can.
    by_names = {
        (r["resources"][0], *r.get("resourceNames", [])): sorted(r["verbs"]) for r in role["rules"]
    }
    assert by_names == {
        ("leases",): ["create"],
        ("leases", _lease_name()): ["get", "update"],
        ("configmaps",): ["create"],
        ("configmaps", CHECKPOINT_NAME): ["get", "patch"],
    }


def test_bindings_give_the_roles_to_the_operator_service_account():
    sa = M[("ServiceAccount", OPERATOR)]
    subject = {"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}
    assert sa["metadata"]["namespace"] == NAMESPACE
    crb = M[("ClusterRoleBinding", OPERATOR)]
    assert crb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": OPERATOR,
    }
    assert crb["subjects"] == [subject]
    rb = M[("RoleBinding", "openmodel-leader-election")]
    assert rb["roleRef"]["kind"] == "Role"
    assert rb["roleRef"]["name"] == "openmodel-leader-election"
    assert rb["subjects"] == [subject]
    pod_spec = operator_deployment(M)["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == OPERATOR


def test_aggregated_roles_extend_admin_edit_and_view():
    edit = M[("ClusterRole", "openmodel-modeldeployments-edit")]
    view = M[("ClusterRole", "openmodel-modeldeployments-view")]
    edit_labels = edit["metadata"]["labels"]
    assert edit_labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert edit_labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit_labels
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    all_verbs = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
    assert verbs_on(edit, "openmodel.dev", "modeldeployments") == all_verbs
    # kubectl scale md/x goes through the scale subresource.
    assert {"get", "update", "patch"} <= verbs_on(edit, "openmodel.dev", "modeldeployments/scale")
    # Users do not write status: that is the operator's.
    assert verbs_on(edit, "openmodel.dev", "modeldeployments/status") == {"get"}
    for _, _, verb in rule_set(view):
        assert verb in ("get", "list", "watch")
    assert verbs_on(view, "openmodel.dev", "modeldeployments") == {"get", "list", "watch"}


def test_operator_pod_meets_pod_security_restricted():
    pod = operator_deployment(M)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"configMap", "emptyDir", "projected", "secret"}, volume
    sc = container(M)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc.get("privileged")
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_liveness_probe_is_kopfs_endpoint_at_the_operators_default():
    source = Path(entry.__file__).read_text()
    default = re.search(r'"OPENMODEL_LIVENESS", "([^"]+)"', source)
    assert default, "cannot find the OPENMODEL_LIVENESS default in openmodel/__main__.py"
    assert env(M)["OPENMODEL_LIVENESS"] == default.group(1) == "http://0.0.0.0:8080/healthz"
    for probe in ("livenessProbe", "startupProbe"):
        http = container(M)[probe]["httpGet"]
        assert http["path"] == "/healthz"
        assert named_port(M, http["port"]) == 8080


def test_every_env_var_set_for_the_operator_is_read_by_it():
    source = "\n".join(p.read_text() for p in (REPO / "operator" / "openmodel").rglob("*.py"))
    for name in env(M):
        assert re.search(rf"[\"']{name}[\"']", source), (
            f"{name} is set in manifests/deployment.yaml but no operator code reads it"
        )


def test_metrics_port_matches_the_telemetry_default_and_the_service():
    assert int(env(M)["OPENMODEL_METRICS_PORT"]) == telemetry.DEFAULT_METRICS_PORT
    assert named_port(M, "metrics") == telemetry.DEFAULT_METRICS_PORT
    service = M[("Service", "openmodel-operator-metrics")]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    pod_labels = operator_deployment(M)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_platform_config_is_mounted_where_openmodel_config_points():
    pod = operator_deployment(M)["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container(M)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    cm = M[("ConfigMap", volumes[config_volume]["configMap"]["name"])]
    assert env(M)["OPENMODEL_CONFIG"] == f"{mounts[config_volume]}/config.yaml"
    assert parse_config(yaml.safe_load(cm["data"]["config.yaml"])) == PlatformConfig()
    # The root filesystem is read-only: /tmp is a volume (HOME=/tmp in the image).
    assert mounts["tmp"] == "/tmp"


def test_image_tag_is_the_chart_app_version_and_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version
    assert container(M)["image"] == f"openmodel/operator:{chart['appVersion']}"
    assert chart["appVersion"] == version.group(1)


def test_documented_default_engine_images_are_the_engines() -> None:
    # Copies a person reads: the chart's example, the config reference. The default is the
    # engine module's (engines/vllm.py), which the platform config starts from; a default
    # bumped in one place only would send them to an old image.
    vllm = ENGINES["vllm"].image
    assert DEFAULT_ENGINE_IMAGES["vllm"] == vllm
    values = (CHART / "values.yaml").read_text()
    assert re.search(rf"^\s*#\s+vllm: {re.escape(vllm)}$", values, re.MULTILINE), values
    docs = (REPO / "docs" / "configuration.md").read_text()
    assert f"| `engineImages.vllm` | `{vllm}` |" in docs
    for key in DEFAULT_ENGINE_IMAGES:
        assert f"| `engineImages.{key}` |" in docs, key


# -- binaries built by hack/build-control-plane.sh ------------------------------------------


def _bin_dir() -> Path:
    """tests/e2e/harness/binaries.py's bin_dir(): same versions, same cache path."""
    path = REPO / "tests" / "e2e" / "harness" / "binaries.py"
    spec = importlib.util.spec_from_file_location("_openmodel_binaries", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.bin_dir()  # type: ignore[no-any-return]


BIN_DIR = _bin_dir()
KUBE_VERSION = re.search(
    r"^K8S_VERSION=v?(\S+)$", (REPO / "hack/build-control-plane.sh").read_text(), re.MULTILINE
)


def _binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        pytest.skip(f"{name} not built at {path}: run `bash hack/build-control-plane.sh`")
    return path


@pytest.fixture(scope="module")
def helm() -> Path:
    return _binary("helm")


@pytest.fixture(scope="module")
def kubectl() -> Path:
    return _binary("kubectl")


def run(*argv: str | Path) -> str:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{' '.join(map(str, argv))}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_kubectl_kustomize_builds_the_same_objects(kubectl):
    built = by_key(documents(run(kubectl, "kustomize", MANIFESTS)))
    assert set(built) == set(M)
    assert built[("ClusterRole", OPERATOR)]["rules"] == M[("ClusterRole", OPERATOR)]["rules"]


def template(helm: Path, *args: str) -> dict[Key, Obj]:
    assert KUBE_VERSION
    # --kube-version: a helm built from source reports a default of v1.20, below the
    # chart's kubeVersion; the control plane here is the one to match.
    text = run(
        helm, "template", RELEASE, CHART, "--namespace", NAMESPACE,
        "--kube-version", KUBE_VERSION.group(1), *args,
    )  # fmt: skip
    return by_key(documents(text))


def test_helm_lint_strict(helm):
    out = run(helm, "lint", CHART, "--strict")
    assert "0 chart(s) failed" in out
    out = run(
        helm, "lint", CHART, "--strict", "--set", "replicaCount=3",
        "--set", "watchNamespaces={team-a,team-b}", "--set", "metrics.service.enabled=false",
        "--set", "gateway.replicaCount=2", "--set", "networkPolicy.enabled=false",
    )  # fmt: skip
    assert "0 chart(s) failed" in out


def is_hook(obj: Obj) -> bool:
    """Created by `helm test` (or another hook), not by the install."""
    return "helm.sh/hook" in (obj["metadata"].get("annotations") or {})


def test_helm_renders_the_same_rbac_as_manifests(helm):
    rendered = {k: o for k, o in template(helm).items() if not is_hook(o)}
    rbac_kinds = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"}
    manifest_rbac = {k for k in M if k[0] in rbac_kinds}
    assert {k for k in rendered if k[0] in rbac_kinds} == manifest_rbac
    for key in manifest_rbac:
        want, got = M[key], rendered[key]
        if "rules" in want:
            assert rule_set(got) == rule_set(want), key
            assert [r.get("resourceNames") for r in got["rules"]][: len(want["rules"])] == [
                r.get("resourceNames") for r in want["rules"]
            ], key
        for field in ("roleRef", "subjects"):
            assert got.get(field) == want.get(field), (key, field)
        assert got["metadata"].get("namespace") == want["metadata"].get("namespace"), key
        aggregation = {
            k: v
            for k, v in want["metadata"]["labels"].items()
            if k.startswith("rbac.authorization")
        }
        assert aggregation.items() <= got["metadata"]["labels"].items(), key


def test_helm_renders_the_same_operator_pod_as_manifests(helm):
    rendered = template(helm)
    want, got = operator_deployment(M), operator_deployment(rendered)
    assert got["spec"]["replicas"] == want["spec"]["replicas"] == 1
    assert got["spec"]["strategy"] == want["spec"]["strategy"] == {"type": "Recreate"}
    want_pod, got_pod = want["spec"]["template"]["spec"], got["spec"]["template"]["spec"]
    for field in ("securityContext", "serviceAccountName", "volumes", "nodeSelector"):
        assert got_pod[field] == want_pod[field], field
    want_c, got_c = container(M), container(rendered)
    for field in (
        "image", "securityContext", "ports", "startupProbe", "livenessProbe", "resources",
        "volumeMounts", "env",
    ):  # fmt: skip
        assert got_c[field] == want_c[field], field
    assert rendered[("ConfigMap", "openmodel-config")]["data"]["config.yaml"]
    assert ("Service", "openmodel-operator-metrics") in rendered


def test_helm_replicas_above_one_turn_on_leader_election(helm):
    assert "OPENMODEL_LEADER_ELECTION" not in env(template(helm))
    two = template(helm, "--set", "replicaCount=2")
    assert env(two)["OPENMODEL_LEADER_ELECTION"] == "true"
    assert operator_deployment(two)["spec"]["replicas"] == 2
    assert operator_deployment(two)["spec"]["strategy"] == {"type": "RollingUpdate"}


def test_helm_watch_namespaces_become_env_and_namespace_watch_rights(helm):
    default = template(helm)
    assert "OPENMODEL_NAMESPACES" not in env(default)
    # get: one namespace's openmodel.dev/data label (reconcile/reconciler.py).
    assert verbs_on(default[("ClusterRole", OPERATOR)], "", "namespaces") == {"get"}
    chosen = template(helm, "--set", "watchNamespaces={team-a,team-b}")
    assert env(chosen)["OPENMODEL_NAMESPACES"] == "team-a,team-b"
    # The operator splits it exactly like this (openmodel/__main__.py).
    assert [n for n in env(chosen)["OPENMODEL_NAMESPACES"].split(",") if n] == ["team-a", "team-b"]
    assert verbs_on(chosen[("ClusterRole", OPERATOR)], "", "namespaces") == {"get", "list", "watch"}


AMD_VALUES = """
config:
  engineImages:
    vllm: registry.example/vllm-openai:v0.11.0-rocm
  accelerators:
    amd-mi300x:
      memoryGiB: 192
      nodeLabel: amd.com/gpu.product-name
      nodeLabelValues: [AMD_Instinct_MI300X_OAM]
      resourceName: amd.com/gpu
      tolerations: [{key: amd.com/gpu, operator: Exists}]
      maxPerNode: 8
  autoscaler: {pollSeconds: 10, tolerance: 0.2, scrapeTimeoutSeconds: 3}
  startupBudgetSeconds: 3600
  clusterDomain: corp.internal
"""


def test_helm_config_is_what_config_py_reads(helm, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(AMD_VALUES)
    rendered = template(helm, "-f", str(values))
    raw = yaml.safe_load(rendered[("ConfigMap", "openmodel-config")]["data"]["config.yaml"])
    config = parse_config(raw)
    assert config.engine_images["vllm"] == "registry.example/vllm-openai:v0.11.0-rocm"
    assert config.engine_images["tgi"] == PlatformConfig().engine_images["tgi"]
    amd = config.accelerators.get("amd-mi300x")
    assert amd is not None
    assert (amd.memory_gib, amd.resource_name, amd.node_label) == (
        192.0,
        "amd.com/gpu",
        "amd.com/gpu.product-name",
    )
    assert amd.node_label_values == ("AMD_Instinct_MI300X_OAM",)
    assert [t.key for t in amd.tolerations] == ["amd.com/gpu"]
    assert config.accelerators.get("nvidia-h100-80gb") is not None  # built-ins kept
    assert (config.autoscaler.poll_seconds, config.autoscaler.tolerance) == (10.0, 0.2)
    assert config.autoscaler.scrape_timeout_seconds == 3.0
    assert (config.startup_budget_seconds, config.cluster_domain) == (3600, "corp.internal")
    # The defaults render the operator's own defaults.
    default_raw = yaml.safe_load(
        template(helm)[("ConfigMap", "openmodel-config")]["data"]["config.yaml"]
    )
    assert parse_config(default_raw) == PlatformConfig()
    # A config change rolls the operator, which reads its config only at start.
    annotation = "checksum/config"
    pod_annotations = operator_deployment(rendered)["spec"]["template"]["metadata"]["annotations"]
    default_annotations = operator_deployment(template(helm))["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert pod_annotations[annotation] != default_annotations[annotation]


def helm_refusal(helm, setting: str) -> str:
    """What `helm template` said when it refused the chart with `--set setting`."""
    return helm_refusal_of(helm, "--set", setting)


def helm_refusal_of(helm, *args: str) -> str:
    """What `helm template` said when it refused the chart with `args` (e.g. -f FILE)."""
    assert KUBE_VERSION
    argv = [str(helm), "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION.group(1)]
    result = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0, result.stdout[-2000:]
    return result.stderr


def test_helm_schema_refuses_a_misspelt_config_key(helm):
    assert "acelerators" in helm_refusal(helm, "config.acelerators.x.memoryGiB=1")


def test_helm_metrics_service_and_aggregated_roles_are_optional(helm):
    rendered = template(
        helm,
        "--set",
        "metrics.service.enabled=false",
        "--set",
        "rbac.aggregateToDefaultRoles=false",
    )
    assert ("Service", "openmodel-operator-metrics") not in rendered
    assert ("Service", "openmodel-gateway-metrics") not in rendered
    assert ("ClusterRole", "openmodel-modeldeployments-edit") not in rendered
    assert ("ClusterRole", "openmodel-modeldeployments-view") not in rendered
    assert ("ClusterRole", OPERATOR) in rendered


LIMITS_VALUES = """
config:
  gateway:
    limits:
      perIdentity: {requestsPerMinute: 600, tokensPerMinute: 200000, concurrentRequests: 16}
      perNamespace: {tokensPerMinute: 1000000}
      namespaces:
        team-a: {perIdentity: {tokensPerMinute: null}}
      defaultMaxTokens: 512
      windowSeconds: 30
      replicas: auto
"""


def test_helm_takes_gateway_limits_and_refuses_a_misspelt_one(helm, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(LIMITS_VALUES)
    rendered = template(helm, "-f", str(values))
    raw = yaml.safe_load(rendered[("ConfigMap", "openmodel-config")]["data"]["config.yaml"])
    limits = parse_config(raw).gateway.limits
    assert limits.defaults.per_identity.tokens_per_minute == 200000
    assert limits.for_namespace("team-a").per_identity.tokens_per_minute is None
    assert (limits.window_seconds, limits.default_max_tokens, limits.replicas) == (30, 512, None)
    refusal = helm_refusal(helm, "config.gateway.limits.perIdentity.tokensPerHour=1")
    assert "tokensPerHour" in refusal
