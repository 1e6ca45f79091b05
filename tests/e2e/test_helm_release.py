"""The Helm chart installed into a namespace not named openmodel-system, its gateway
running for real on the process nodes: a model at zero wakes on a request held by the
gateway pods; `helm upgrade` across a CRD change applies the new schema; `helm test`
passes; `helm uninstall` keeps the CRDs and the ModelDeployments.

The tests run in file order on one release (module fixture):

1. installed from a copy of the chart whose ModelDeployment CRD lacks `spec.network`
   (the "old version"), into `e2e-helmrel-*`; the gateway pods get the process nodes'
   nodeSelector and the GPU taint's toleration (the only nodes that really run pods) and
   route only the model namespace `e2e-helmmd-*` (which the session's operator leaves
   alone: SESSION_SCOPE). The release namespace is nowhere in the values: the chart must
   point the operator at its gateway pods by itself.
2. the operator runs as test_install.py runs it (no container runtime for its image's
   entrypoint here): `python -m openmodel` as a local process, with a kubeconfig holding
   the release's operator ServiceAccount's token and the platform config from the
   release's ConfigMap, watching the model namespace. A request to a gateway pod for a
   ModelDeployment at zero replicas is held; the operator reads it from the gateway
   pods' /demand (found in the release namespace, and says so in its log) and scales the
   engine Deployment up; the simulated engine on the new KWOK pod answers; the request
   gets its 200.
3. `helm upgrade` to the chart as it is: the CRD gets `spec.network`, which the API
   server had pruned before, and keeps it now.
4. `helm test`: its pod (process node) calls /readyz and /v1/models with its token. No
   cluster DNS or kube-proxy here: `tests.gatewayURL` (set by the upgrade) names the
   gateway pod's address instead of its Service's name.
5. `helm uninstall`: the CRDs stay (helm.sh/resource-policy keep), and so does the
   ModelDeployment.

The CRDs are the session's (installed before by `crd` fixtures): they are adopted into
the release the way docs/install.md says (Helm's ownership label and annotations), and
handed back at the end (the marks removed). The gateway pods run the main checkout's
`openmodel` (harness/process_nodes.py: a worktree has no venv of its own).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.autoscaler import DecisionReason

from harness import Cluster, NotYet, binaries, describe_namespace, wait_for
from harness.engine_fleet import EngineFleet
from harness.k8s import (
    create_namespace,
    delete_namespace,
    service_account_kubeconfig,
    service_account_token,
)
from harness.nodepool import RUNTIME_LABEL
from openmodel_fixtures import (
    API_KEY_CRD_FILE,
    CRD_FILE,
    EXTERNAL_MODEL_CRD_FILE,
    GROUP,
    HELM_RELEASE_NAMESPACE_PREFIX,
    PLURAL,
    VERSION,
    create_md,
    get_md,
    grant_use,
    install_crd,
    start_operator,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "openmodel"
RELEASE = "om-rel"
MODEL = "helm-zero"
CRDS = (f"{PLURAL}.{GROUP}", f"apikeys.{GROUP}", f"externalmodels.{GROUP}")
OWNER_ANNOTATIONS = ("meta.helm.sh/release-name", "meta.helm.sh/release-namespace")
# The field the "old" chart's CRD lacks (an allowlist entry name the platform config has).
DROPPED = "network"
ALLOWLIST = "tools"
PROCESS_NODES = {
    "nodeSelector": {RUNTIME_LABEL: "process"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def gateway_pod(api: client.ApiClient, namespace: str) -> client.V1Pod:
    def one_ready() -> client.V1Pod | NotYet:
        pods = ready_pods(api, namespace, "gateway")
        return pods[0] if len(pods) == 1 else NotYet([p.metadata.name for p in pods])

    return wait_for(one_ready, 120, lambda: describe_namespace(api, namespace))


@dataclass
class Release:
    workdir: Path
    namespace: str
    model_namespace: str
    values: Path
    helm: Any  # (*args) -> CompletedProcess
    fleet: EngineFleet
    token: str


def release_values(model_namespace: str) -> dict[str, Any]:
    return {
        "watchNamespaces": [model_namespace],
        "gateway": dict(PROCESS_NODES),
        "config": {
            "autoscaler": {"pollSeconds": 1, "scrapeTimeoutSeconds": 0.5},
            "gateway": {"namespaces": [model_namespace], "queuePollSeconds": 0.5},
            "privacy": {
                "networkPolicy": {
                    "egressAllowlist": {
                        ALLOWLIST: [
                            {"to": [{"namespaceSelector": {"matchLabels": {
                                "kubernetes.io/metadata.name": "tools"}}}]}
                        ]
                    }
                }
            },
        },
    }  # fmt: skip


def old_chart(tmp: Path) -> Path:
    """The chart with a ModelDeployment CRD that does not know spec.network."""
    copy = tmp / "openmodel-old"
    shutil.copytree(CHART, copy)
    path = copy / "files" / "crds" / "modeldeployment.yaml"
    crd = yaml.safe_load(path.read_text())
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        del spec["properties"][DROPPED]
    path.write_text(yaml.safe_dump(crd))
    return copy


def stored_crd(api: client.ApiClient, name: str) -> dict[str, Any]:
    answer = client.ApiextensionsV1Api(api).read_custom_resource_definition(
        name, _preload_content=False
    )
    return json.loads(answer.data)  # type: ignore[no-any-return]


def spec_field(api: client.ApiClient) -> bool:
    """Whether the stored ModelDeployment CRD has spec.<DROPPED>."""
    crd = stored_crd(api, CRDS[0])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return DROPPED in spec["properties"]


def mark_crds(api: client.ApiClient, namespace: str | None) -> None:
    """Adopt the session's CRDs into the release (docs/install.md), or with None hand
    them back (remove Helm's ownership marks)."""
    ext = client.ApiextensionsV1Api(api)
    for name in CRDS:
        if namespace is None:
            patch = {
                "metadata": {
                    "labels": {"app.kubernetes.io/managed-by": None},
                    "annotations": dict.fromkeys(OWNER_ANNOTATIONS),
                }
            }
        else:
            patch = {
                "metadata": {
                    "labels": {"app.kubernetes.io/managed-by": "Helm"},
                    "annotations": dict(zip(OWNER_ANNOTATIONS, (RELEASE, namespace), strict=True)),
                }
            }
        ext.patch_custom_resource_definition(name, patch)


def model_deployment(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL, "namespace": namespace},
        "spec": {
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "servedModelName": MODEL,
            "gpu": {"type": "nvidia-h100-80gb", "count": 1},
            "maxModelLen": 4096,
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 1,
                "targetQueueDepth": 4,
                "scaleToZeroAfterSeconds": 30,
            },
        },
    }


def engine_replicas(api: client.ApiClient, namespace: str) -> int | None:
    try:
        deployment = client.AppsV1Api(api).read_namespaced_deployment(MODEL, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return int(deployment.spec.replicas)


def ready_pods(api: client.ApiClient, namespace: str, component: str) -> list[client.V1Pod]:
    selector = f"app.kubernetes.io/name=openmodel,app.kubernetes.io/component={component}"
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return [
        p
        for p in pods
        if p.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


@pytest.fixture(scope="module")
def release(
    cluster: Cluster, api_client: client.ApiClient, crd: None, api_key_crd: None,
    external_model_crd: None, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:  # fmt: skip
    cluster.require_process_nodes()
    helm_bin = binaries.require_bin_dir() / "helm"
    tmp = tmp_path_factory.mktemp("helm-release")
    namespace = create_namespace(api_client, "e2e-helmrel")
    model_namespace = create_namespace(api_client, HELM_RELEASE_NAMESPACE_PREFIX)
    client.CoreV1Api(api_client).patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HOME": str(cluster.workdir)}

    def helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm_bin), *map(str, args), "--namespace", namespace],
            capture_output=True, text=True, timeout=300, check=False, env=env,
        )  # fmt: skip

    values = tmp / "values.yaml"
    values.write_text(yaml.safe_dump(release_values(model_namespace)))
    fleet = EngineFleet(api_client, model_namespace, MODEL, slots=4, service_time=0.05)
    mark_crds(api_client, namespace)
    started = False
    try:
        assert spec_field(api_client), "the session's CRD should have spec.network"
        installed = helm("install", RELEASE, old_chart(tmp), "-f", values)
        assert installed.returncode == 0, installed.stderr
        # The old chart's CRD replaced the session's: the field is gone.
        assert not spec_field(api_client)
        client.CoreV1Api(api_client).create_namespaced_service_account(
            model_namespace, {"metadata": {"name": "caller"}}
        )
        grant_use(api_client, model_namespace, model_namespace, "caller")
        token = service_account_token(api_client, model_namespace, "caller")
        fleet.start()
        started = True
        yield Release(tmp, namespace, model_namespace, values, helm, fleet, token)
    finally:
        if started:
            fleet.stop()
        helm("uninstall", RELEASE, "--wait")
        delete_namespace(api_client, model_namespace)
        delete_namespace(api_client, namespace)
        mark_crds(api_client, None)
        # The session's CRDs as they are in crds/ (the old chart's may still be stored).
        install_crd(api_client, CRD_FILE)
        install_crd(api_client, API_KEY_CRD_FILE)
        install_crd(api_client, EXTERNAL_MODEL_CRD_FILE)


def test_a_model_at_zero_wakes_on_a_request_held_by_the_charts_gateway_pods(
    release: Release, api_client: client.ApiClient
) -> None:
    ns, model_ns = release.namespace, release.model_namespace
    gateway = gateway_pod(api_client, ns)
    config_text = (
        client.CoreV1Api(api_client)
        .read_namespaced_config_map(f"{RELEASE}-openmodel-config", ns)
        .data["config.yaml"]
    )
    assert yaml.safe_load(config_text)["gateway"]["demandNamespace"] == ns  # the chart's
    config = release.workdir / "platform-config.yaml"
    config.write_text(config_text)
    account = f"{RELEASE}-openmodel-operator"
    kubeconfig = service_account_kubeconfig(
        api_client, ns, account, release.workdir / "operator.kubeconfig"
    )
    operator = start_operator(
        kubeconfig,
        release.workdir,
        extra_env={
            "OPENMODEL_CONFIG": str(config),
            "OPENMODEL_NAMESPACES": model_ns,
            "OPENMODEL_POD_NAMESPACE": ns,
            "OPENMODEL_LOG_LEVEL": "info",
        },
        name="helm-release-operator",
    )
    try:
        scale_from_zero(release, api_client, gateway)
        log = operator.log_path.read_text(errors="replace")
        assert f"reading demand from gateway pods in namespace {ns}" in log
        assert "no running gateway pod" not in log
    finally:
        operator.stop()


def scale_from_zero(release: Release, api_client: client.ApiClient, gateway: client.V1Pod) -> None:
    model_ns = release.model_namespace
    create_md(api_client, model_deployment(model_ns))

    def at_zero() -> bool | NotYet:
        replicas = engine_replicas(api_client, model_ns)
        return replicas == 0 or NotYet(f"engine replicas {replicas}")

    # minReplicas 0 with no request ever: the operator creates the Deployment at zero.
    wait_for(at_zero, 90, lambda: describe_namespace(api_client, model_ns))

    async def ask() -> tuple[int, str]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        timeout = aiohttp.ClientTimeout(total=240)
        headers = {"Authorization": f"Bearer {release.token}"}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                f"http://{gateway.status.pod_ip}:8080/v1/chat/completions",
                json=body,
                headers=headers,
            ) as answer,
        ):
            return answer.status, await answer.text()

    status, text = asyncio.run(ask())
    assert status == 200, (text, describe_namespace(api_client, model_ns))
    assert engine_replicas(api_client, model_ns) == 1
    events = (
        client.CoreV1Api(api_client)
        .list_namespaced_event(model_ns, field_selector=f"involvedObject.name={MODEL}")
        .items
    )
    woken = [e.message for e in events if e.reason == str(DecisionReason.SCALE_FROM_ZERO)]
    assert woken, [(e.reason, e.message) for e in events]


def test_helm_upgrade_applies_the_new_crd_schema(
    release: Release, api_client: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(api_client)
    patch = {"spec": {DROPPED: {"egress": [ALLOWLIST]}}}
    ns = release.model_namespace
    # The old schema: the API server prunes the field it does not know.
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, MODEL, patch)
    assert DROPPED not in get_md(api_client, ns, MODEL)["spec"]

    address = gateway_pod(api_client, release.namespace).status.pod_ip
    upgraded = release.helm(
        "upgrade", RELEASE, CHART, "-f", release.values,
        "--set", f"tests.gatewayURL=http://{address}:8080",
    )  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr
    assert spec_field(api_client)
    crd = stored_crd(api_client, CRDS[0])
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    def kept() -> dict[str, Any] | NotYet:
        # The API server's new schema takes a moment to serve (Established is immediate).
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, MODEL, patch)
        spec = get_md(api_client, ns, MODEL)["spec"]
        return spec if DROPPED in spec else NotYet(spec)

    spec = wait_for(kept, 30, "spec.network kept after the upgrade")
    assert spec[DROPPED] == {"egress": [ALLOWLIST]}


def test_helm_test_calls_the_gateway_with_its_token(
    release: Release, cluster: Cluster, api_client: client.ApiClient
) -> None:
    # Without --logs: the process nodes serve no kubelet API; their log files are read.
    tested = release.helm("test", RELEASE, "--timeout", "180s")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    pod = client.CoreV1Api(api_client).read_namespaced_pod(
        f"{RELEASE}-openmodel-test", release.namespace
    )
    assert pod.status.phase == "Succeeded", pod.status
    assert pod.spec.node_name.startswith("process-"), pod.spec.node_name
    pattern = f"*/pods/{release.namespace}_{pod.metadata.name}_*/logs/test/*.log"
    logs = sorted((cluster.workdir / "nodes").glob(pattern))
    text = "".join(p.read_text(errors="replace") for p in logs)
    assert "GET /readyz: 200" in text, (logs, text)
    assert "GET /v1/models: 200" in text, text


def test_helm_uninstall_keeps_the_crds_and_the_model_deployments(
    release: Release, api_client: client.ApiClient
) -> None:
    gone = release.helm("uninstall", RELEASE, "--wait")
    assert gone.returncode == 0, gone.stderr
    for name in CRDS:
        assert "deletionTimestamp" not in stored_crd(api_client, name)["metadata"], name
    assert get_md(api_client, release.model_namespace, MODEL)["metadata"]["name"] == MODEL
    assert not client.AppsV1Api(api_client).list_namespaced_deployment(release.namespace).items
