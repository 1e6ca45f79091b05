"""Sizing in the operator, and the CLI rendering exactly what the operator creates."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.cli import main as cli_main
from openmodel.kube import calls as kube
from openmodel.reconcile.drift import object_holds

from harness import NotYet, describe_namespace, wait_for
from harness.k8s import bind_cache_volume
from openmodel_fixtures import EXAMPLES, OperatorProcess, condition, create_md, get_md, load_example

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_cli_render_equals_what_the_operator_creates(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    tmp_path: Path,
    example: str,
    request: pytest.FixtureRequest,
) -> None:
    body = load_example(example, namespace)
    f = tmp_path / example
    f.write_text(yaml.safe_dump(body))
    out = io.StringIO()
    assert cli_main(["render", "-f", str(f)], out=out) == 0
    rendered = list(yaml.safe_load_all(out.getvalue()))
    assert rendered, "render printed nothing"
    claims = [o for o in rendered if o["kind"] == "PersistentVolumeClaim"]
    # A weights cache: the engine follows its download Job, which runs once the claim
    # is bound (KWOK completes the Job's pod).
    volumes = [
        bind_cache_volume(
            api_client,
            namespace,
            c["metadata"]["name"],
            c["spec"]["resources"]["requests"]["storage"],
            tmp_path / "cache",
        )
        for c in claims
    ]
    request.addfinalizer(
        lambda: [client.CoreV1Api(api_client).delete_persistent_volume(v) for v in volumes]
    )
    create_md(api_client, body)
    name = body["metadata"]["name"]
    uid = get_md(api_client, namespace, name)["metadata"]["uid"]

    def created() -> list[Any] | NotYet:
        seen = []
        for obj in rendered:
            live = kube.get(
                api_client, obj["apiVersion"], obj["kind"], namespace, obj["metadata"]["name"]
            )
            if live is None:
                return NotYet(f"{obj['kind']} not created yet")
            seen.append(live)
        return seen

    live_objects = wait_for(created, 60, lambda: describe_namespace(api_client, namespace))
    for obj, live in zip(rendered, live_objects, strict=True):
        # The file has no uid; the operator adds the owner reference.
        assert [r["uid"] for r in live["metadata"]["ownerReferences"]] == [uid]
        assert object_holds(obj, live), (obj, live)
        # And the other way round for what matters most: the container as rendered.
        if obj["kind"] == "Deployment":
            want = obj["spec"]["template"]["spec"]["containers"][0]
            have = live["spec"]["template"]["spec"]["containers"][0]
            assert have["args"] == want["args"] and have["image"] == want["image"]


def test_gpu_count_omitted_is_sized_and_reported(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    body = load_example(
        "llama70b-awq.yaml",
        namespace,
        model="meta-llama/Llama-3.1-70B-Instruct",
        quantization="none",
        gpu={"type": "nvidia-h100-80gb"},
        maxModelLen=8192,
    )
    create_md(api_client, body)

    def sized() -> dict[str, Any] | NotYet:
        md = get_md(api_client, namespace, "llama70b-awq")
        ready = condition(md, "Ready").get("status") == "True"
        return md if ready and md["status"].get("sizing") else NotYet(md.get("status"))

    md = wait_for(sized, 60, lambda: describe_namespace(api_client, namespace))
    # 70.6B params x 2 bytes = 131 GiB of bf16 weights: more than one 71.6 GiB budget, so 2.
    assert md["status"]["sizing"]["gpuCount"] == 2
    assert md["status"]["sizing"]["fits"] is True
    assert md["status"]["gpu"] == "2x nvidia-h100-80gb"
    dep = client.AppsV1Api(api_client).read_namespaced_deployment("llama70b-awq", namespace)
    assert dep.spec.template.spec.containers[0].resources.limits == {"nvidia.com/gpu": "2"}


def test_model_that_does_not_fit_gets_a_condition_with_numbers(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    body = load_example(
        "llama70b-awq.yaml",
        namespace,
        model="meta-llama/Llama-3.1-405B-Instruct",
        quantization="none",
        # One node: without gpu.nodes the replica would span two (test_multi_node.py).
        gpu={"type": "nvidia-h100-80gb", "count": 8, "nodes": 1},
        maxModelLen=8192,
    )
    create_md(api_client, body)

    def degraded() -> dict[str, Any] | NotYet:
        c = condition(get_md(api_client, namespace, "llama70b-awq"), "Degraded")
        return c if c.get("reason") == "InsufficientGPUMemory" else NotYet(c)

    c = wait_for(degraded, 30, lambda: describe_namespace(api_client, namespace))
    assert "GiB" in c["message"] and "fp8" in c["message"]
    assert "gpu.nodes 2 with gpu.count 8" in c["message"]
    with pytest.raises(ApiException) as err:
        client.AppsV1Api(api_client).read_namespaced_deployment("llama70b-awq", namespace)
    assert err.value.status == 404
