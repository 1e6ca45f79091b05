"""Each ModelDeployment's NetworkPolicy against the real API server: for every engine and
every model source (a Hub repo, a claim, an object store), the policy is accepted, owned,
equal to what `openmodel render` prints for the same manifest and platform config,
restored after a hand edit, and garbage-collected with its ModelDeployment; an egress
exception the platform does not allow is refused by name. (Enforcement is the process
nodes': tests/e2e/test_netpol_enforcement.py, tests/e2e/test_real_vllm.py.)"""

from __future__ import annotations

import copy
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

from harness import Cluster, NotYet, create_namespace, delete_namespace, wait_for
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
