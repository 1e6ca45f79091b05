"""Each ModelDeployment's NetworkPolicy against the real API server: for every engine and
every model source (a Hub repo, a claim, an object store), the policy is accepted, owned,
equal to what `openmodel render` prints for the same manifest and platform config,
restored after a hand edit, and garbage-collected with its ModelDeployment; an egress
exception the platform does not allow is refused by name; and, enforced on the process
nodes, the engine port admits the gateway's and the operator's pods and nobody else (the
engines' egress: tests/e2e/test_real_vllm.py; the enforcement itself:
tests/e2e/test_netpol_enforcement.py)."""

from __future__ import annotations

import copy
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.api import OWNER_LABEL

from harness import Cluster, NotYet, create_namespace, delete_namespace, wait_for
from harness.netpol import connects, connects_from
from harness.nodepool import RUNTIME_LABEL
from harness.process_node.sandbox import Sandbox
from harness.process_nodes import HOST_IMAGE
from openmodel_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    condition,
    create_md,
    get_md,
)

pytestmark = pytest.mark.cluster

GGUF = {"ggufFile": "qwen2.5-7b-instruct-q4_k_m.gguf"}
CASES: dict[str, tuple[str, str, dict[str, Any], str]] = {
    # name: (engine, model, more spec, status.egress)
    "vllm-hub": ("vllm", "Qwen/Qwen2.5-7B-Instruct", {}, "Open"),
    "vllm-claim": ("vllm", "pvc://weights/qwen", {}, "Closed"),
    "vllm-s3": ("vllm", "s3://weights/qwen", {}, "Open"),
    "tgi-hub": ("tgi", "Qwen/Qwen2.5-7B-Instruct", {}, "Open"),
    "sglang-hub": ("sglang", "Qwen/Qwen2.5-7B-Instruct", {}, "Open"),
    "sglang-claim": ("sglang", "pvc://weights/qwen", {}, "Closed"),
    "llamacpp-hub": ("llamacpp", "Qwen/Qwen2.5-7B-Instruct-GGUF", GGUF, "Open"),
    "llamacpp-claim": ("llamacpp", "pvc://weights/qwen-q4_k_m.gguf", {}, "Closed"),
}


def manifest(namespace: str, name: str) -> dict[str, Any]:
    engine, model, more, _ = CASES[name]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            # Models the sizing catalogue does not know: the stated count is taken as is.
            "annotations": {"openmodel.dev/skip-fit-check": "true"},
        },
        "spec": {
            "model": model,
            "engine": engine,
            "gpu": {"type": "nvidia-l4", "count": 1},
            "maxModelLen": 4096,
            **copy.deepcopy(more),
        },
    }


def rendered_policy(body: dict[str, Any], config: Path, workdir: Path) -> dict[str, Any]:
    """What `openmodel render` prints for `body` under the operator's platform config."""
    path = workdir / f"render-{body['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(body))
    out = subprocess.run(
        [sys.executable, "-m", "openmodel.cli", "render", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "OPENMODEL_CONFIG": str(config)},
    )
    (policy,) = [d for d in yaml.safe_load_all(out.stdout) if d["kind"] == "NetworkPolicy"]
    return policy  # type: ignore[no-any-return]


def live_policy(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | NotYet:
    try:
        found = client.NetworkingV1Api(api).read_namespaced_network_policy(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return NotYet("no NetworkPolicy yet")
        raise
    return api.sanitize_for_serialization(found)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def namespace(api_client: client.ApiClient, operator: OperatorProcess) -> Iterator[str]:
    ns = create_namespace(api_client, "e2e-netpol")
    yield ns
    delete_namespace(api_client, ns)


def test_every_engine_and_source_gets_the_policy_render_prints(
    api_client: client.ApiClient, cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    config = cluster.workdir / "operator-config.yaml"
    assert config.is_file(), "the session operator's platform config"
    for name in CASES:
        create_md(api_client, manifest(namespace, name))
    for name, (_, _, _, egress) in CASES.items():
        live = wait_for(lambda n=name: live_policy(api_client, namespace, n), 60, name)  # type: ignore[misc]
        md = get_md(api_client, namespace, name)
        owners = live["metadata"]["ownerReferences"]
        assert [(o["kind"], o["uid"], o.get("controller")) for o in owners] == [
            ("ModelDeployment", md["metadata"]["uid"], True)
        ]
        assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "openmodel"
        expected = rendered_policy(manifest(namespace, name), config, cluster.workdir)
        # The API server stores an empty egress list as no key.
        assert live["spec"] == {k: v for k, v in expected["spec"].items() if v != []}, name
        status = wait_for(
            lambda n=name: (
                get_md(api_client, namespace, n).get("status", {}).get("egress")  # type: ignore[misc]
                or NotYet("no status.egress")
            ),
            30,
            f"{name}'s status.egress",
        )
        assert status == egress, name
        if egress == "Closed":
            assert "egress" not in live["spec"] and "Egress" in live["spec"]["policyTypes"]


def test_a_hand_edit_is_put_back_and_the_policy_goes_with_its_model(
    api_client: client.ApiClient, namespace: str
) -> None:
    name = "vllm-claim"
    networking = client.NetworkingV1Api(api_client)
    before = wait_for(lambda: live_policy(api_client, namespace, name), 60, name)
    # Someone opens the engine pods to everything.
    networking.patch_namespaced_network_policy(
        name, namespace, {"spec": {"egress": [{}], "ingress": [{}]}}
    )

    def restored() -> bool | NotYet:
        now = live_policy(api_client, namespace, name)
        if isinstance(now, NotYet) or now["spec"] != before["spec"]:
            return NotYet(now)
        return True

    wait_for(restored, 30, "the operator to put the policy back")
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )

    def collected() -> bool | NotYet:
        now = live_policy(api_client, namespace, name)
        return True if isinstance(now, NotYet) else NotYet("still there")

    wait_for(collected, 60, "the garbage collector to delete the policy")


def test_an_exception_the_platform_did_not_list_is_refused_by_name(
    api_client: client.ApiClient, namespace: str
) -> None:
    body = manifest(namespace, "vllm-hub")
    body["metadata"]["name"] = "wants-out"
    body["spec"]["network"] = {"egress": ["the-internet"]}
    create_md(api_client, body)

    def refused() -> dict[str, Any] | NotYet:
        degraded = condition(get_md(api_client, namespace, "wants-out"), "Degraded")
        return degraded if degraded.get("status") == "True" else NotYet(degraded)

    degraded = wait_for(refused, 30, "the refusal")
    assert degraded["reason"] == "EgressNotAllowed"
    assert "'the-internet'" in degraded["message"] and "spec.network.egress" in degraded["message"]
    assert isinstance(live_policy(api_client, namespace, "wants-out"), NotYet)


def process_pod(name: str, labels: dict[str, str], command: list[str]) -> dict[str, Any]:
    """A pod of the host image on a process node (the only nodes whose pods really run,
    and whose network namespaces the process node confines)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeSelector": {RUNTIME_LABEL: "process"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": HOST_IMAGE,
                    "command": command,
                    "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
                }
            ],
        },
    }


ENGINE_PORT = 8000  # vLLM's
GATEWAY = {"app.kubernetes.io/name": "openmodel", "app.kubernetes.io/component": "gateway"}
OPERATOR = {"app.kubernetes.io/name": "openmodel", "app.kubernetes.io/component": "operator"}


def test_the_engine_port_admits_the_gateway_and_operator_pods_and_nobody_else(
    api_client: client.ApiClient, cluster: Cluster
) -> None:
    """The policy `openmodel render` prints, applied and enforced on the process nodes: a
    pod standing for the engine (labelled as the ModelDeployment's pods, serving on the
    engine port) is reached from the gateway's and the operator's pods and from its node,
    and not from a pod without those labels nor from one with them in another namespace.
    The platform config names the test's namespace as the gateway's and the operator's."""
    cluster.require_process_nodes()
    system = create_namespace(api_client, "e2e-np-sys")
    stranger_ns = create_namespace(api_client, "e2e-np-other")
    core = client.CoreV1Api(api_client)
    try:
        config = cluster.workdir / f"netpol-{system}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "gateway": {"demandNamespace": system},
                    "privacy": {"networkPolicy": {"operator": {"namespace": system}}},
                }
            )
        )
        body = manifest(system, "vllm-claim")
        policy = rendered_policy(body, config, cluster.workdir)
        policy["metadata"].pop("ownerReferences", None)  # no ModelDeployment here
        client.NetworkingV1Api(api_client).create_namespaced_network_policy(system, policy)
        serve = ["python3", "-m", "http.server", str(ENGINE_PORT), "--bind", "0.0.0.0"]
        idle = ["sleep", "3600"]
        pods = {
            (system, "engine"): process_pod("engine", {OWNER_LABEL: "vllm-claim"}, serve),
            (system, "gateway"): process_pod("gateway", GATEWAY, idle),
            (system, "operator"): process_pod("operator", OPERATOR, idle),
            (system, "unlabelled"): process_pod("unlabelled", {}, idle),
            (stranger_ns, "gateway-elsewhere"): process_pod("gateway-elsewhere", GATEWAY, idle),
        }
        for (ns, _), pod in pods.items():
            core.create_namespaced_pod(ns, pod)

        def addresses() -> dict[str, str] | NotYet:
            found = {}
            for ns, name in pods:
                status = core.read_namespaced_pod(name, ns).status
                if status.phase != "Running" or not status.pod_ip:
                    return NotYet(f"{ns}/{name}: {status.phase}")
                found[name] = status.pod_ip
            engine_up = connects(found["engine"], ENGINE_PORT, greeting=False)
            return found if engine_up else NotYet("the engine pod does not listen yet")

        ips = wait_for(addresses, 60, "the pods to run")

        def reaches(name: str) -> bool:
            netns = Sandbox(ipaddress.IPv4Address(ips[name])).netns
            return connects_from(netns, ips["engine"], ENGINE_PORT, greeting=False)

        verdicts = {name: reaches(name) for name in ips if name != "engine"}
        assert verdicts == {
            "gateway": True,
            "operator": True,
            "unlabelled": False,
            "gateway-elsewhere": False,
        }, verdicts
        # The node (the operator and gateway as host processes in the other tests).
        assert connects(ips["engine"], ENGINE_PORT, greeting=False)
    finally:
        delete_namespace(api_client, system)
        delete_namespace(api_client, stranger_ns)
