"""SGLang and llama.cpp against the real control plane: placement and probes, the
closed loop on each engine's own queue gauge (simulated engines in their exact
exposition), a GGUF model on the CPU-only nodes sized from the file and the same model
on an L4, and the engine x quantization matrix refused at apply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness import NotYet, describe_namespace, wait_for
from harness.engine_fleet import EngineFleet, LoadGenerator
from openmodel_fixtures import OperatorProcess, condition, create_md, get_md, load_example

pytestmark = pytest.mark.cluster

GGUF_REPO = "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF"
GGUF_FILE = "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"

# engine -> (spec overrides, node-name prefix its pods must land on, port)
ENGINE_CASES: dict[str, tuple[dict[str, Any], str, int]] = {
    "sglang": (
        {
            "engine": "sglang",
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "quantization": "none",
            "gpu": {"type": "nvidia-h100-80gb", "count": 1},
        },
        "kwok-h100-",
        30000,
    ),
    "llamacpp": (
        {
            "engine": "llamacpp",
            "model": GGUF_REPO,
            "ggufFile": GGUF_FILE,
            "quantization": "gguf",
            "gpu": {"type": "nvidia-l4", "count": 1},
        },
        "kwok-l4-",
        8080,
    ),
}


def pods(api: client.ApiClient, namespace: str, name: str) -> list[Any]:
    return list(
        client.CoreV1Api(api)
        .list_namespaced_pod(namespace, label_selector=f"openmodel.dev/model-deployment={name}")
        .items
    )


def replicas(api: client.ApiClient, namespace: str, name: str) -> int:
    return int(client.AppsV1Api(api).read_namespaced_deployment(name, namespace).spec.replicas)


def md_body(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body = load_example("llama70b-awq.yaml", namespace, maxModelLen=8192, **spec)
    body["metadata"]["name"] = name
    return body


def ready(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | NotYet:
    md = get_md(api, namespace, name)
    c = condition(md, "Ready")
    return md if c.get("status") == "True" else NotYet(md.get("status"))


@pytest.fixture
def engine_fleet(
    request: pytest.FixtureRequest,
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
) -> Iterator[tuple[str, EngineFleet]]:
    engine = request.param
    spec, _, port = ENGINE_CASES[engine]
    name = f"auto-{engine}"
    body = md_body(
        namespace,
        name,
        **spec,
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 3,
            "targetQueueDepth": 1,
            "scaleDownStabilizationSeconds": 4,
        },
    )
    create_md(api_client, body)
    fleet = EngineFleet(
        api_client, namespace, name, engine=engine, port=port, slots=2, service_time=0.3
    ).start()
    yield engine, fleet
    fleet.stop()


@pytest.mark.parametrize("engine_fleet", sorted(ENGINE_CASES), indirect=True)
def test_engine_is_placed_probed_and_autoscaled_on_its_own_queue(
    api_client: client.ApiClient, namespace: str, engine_fleet: tuple[str, EngineFleet]
) -> None:
    engine, fleet = engine_fleet
    _, node_prefix, port = ENGINE_CASES[engine]
    name = fleet.name
    describe = lambda: describe_namespace(api_client, namespace)  # noqa: E731

    wait_for(lambda: len(fleet.urls()) == 1 or NotYet(fleet.urls()), 60, describe)
    (pod,) = pods(api_client, namespace, name)
    assert pod.spec.node_name.startswith(node_prefix), pod.spec.node_name
    c = pod.spec.containers[0]
    assert c.ports[0].container_port == port
    for probe in (c.startup_probe, c.readiness_probe, c.liveness_probe):
        assert probe.http_get.path == "/health" and probe.http_get.port == "http"
    md = wait_for(lambda: ready(api_client, namespace, name), 30, describe)
    assert md["status"]["gpu"] == f"1x {ENGINE_CASES[engine][0]['gpu']['type']}"

    # 8 clients on 2-slot engines with a target of 1 waiting per replica: one replica
    # has 6 waiting, so the autoscaler must add replicas, on this engine's gauge.
    load = LoadGenerator(fleet, clients=8, max_seconds=60).start()
    try:

        def scaled_up() -> int | NotYet:
            r = replicas(api_client, namespace, name)
            return r if r >= 2 else NotYet(f"replicas {r}, waiting {fleet.total_waiting()}")

        wait_for(scaled_up, 40, describe)
        wait_for(lambda: len(fleet.urls()) >= 2 or NotYet(fleet.urls()), 30, describe)
        for p in pods(api_client, namespace, name):
            assert p.spec.node_name.startswith(node_prefix), p.spec.node_name
        # `sent` counts answered requests: on a loaded machine the scale-up can come
        # before the first 0.3 s completion has returned.
        wait_for(
            lambda: load.sent > 0 or NotYet(f"none answered yet, {load.failed} failed"),
            30,
            describe,
        )
    finally:
        load.stop()

    def at_min() -> bool | NotYet:
        r = replicas(api_client, namespace, name)
        return r == 1 or NotYet(f"replicas {r}, waiting {fleet.total_waiting()}")

    wait_for(at_min, 40, describe)
    events = (
        client.CoreV1Api(api_client)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        .items
    )
    up = [e for e in events if e.reason == "ScaleUp"]
    assert up and "queue" in up[0].message, [(e.reason, e.message) for e in events]
    assert condition(get_md(api_client, namespace, name), "ScalingActive")["status"] == "True"


def test_gguf_on_cpu_nodes_is_sized_from_the_file_and_on_an_l4_uses_the_gpu(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    describe = lambda: describe_namespace(api_client, namespace)  # noqa: E731
    gguf = {"engine": "llamacpp", "model": GGUF_REPO, "ggufFile": GGUF_FILE, "quantization": "gguf"}
    create_md(api_client, md_body(namespace, "gguf-cpu", **gguf, gpu={"type": "cpu"}))
    create_md(
        api_client, md_body(namespace, "gguf-l4", **gguf, gpu={"type": "nvidia-l4", "count": 1})
    )
    cpu_md = wait_for(lambda: ready(api_client, namespace, "gguf-cpu"), 60, describe)
    l4_md = wait_for(lambda: ready(api_client, namespace, "gguf-l4"), 60, describe)

    # CPU: on a CPU-only node, requests from the file (4.58 GiB for Q4_K_M) + its KV cache
    # (1 GiB for 8192 tokens) + overhead, as status.sizing reports them.
    sizing = cpu_md["status"]["sizing"]
    assert cpu_md["status"]["gpu"] == "cpu"
    assert sizing["quantization"] == "gguf Q4_K_M"
    assert sizing["weightsGiB"] == pytest.approx(4.6, abs=0.05)
    assert sizing["kvCacheGiB"] == pytest.approx(1.0)
    (cpu_pod,) = pods(api_client, namespace, "gguf-cpu")
    assert cpu_pod.spec.node_name.startswith("kwok-cpu-"), cpu_pod.spec.node_name
    c = cpu_pod.spec.containers[0]
    assert c.image == "ghcr.io/ggml-org/llama.cpp:server"
    assert c.resources.requests == {
        "cpu": sizing["cpuRequest"],
        "memory": sizing["memoryRequest"],
    }
    assert "nvidia.com/gpu" not in (c.resources.limits or {})
    assert c.args[c.args.index("-ngl") + 1] == "0"
    assert c.args[c.args.index("--threads") + 1] == sizing["cpuRequest"]

    # L4: the same file, all layers on the GPU, the CUDA image, a GPU limit.
    assert l4_md["status"]["gpu"] == "1x nvidia-l4"
    assert l4_md["status"]["sizing"]["quantization"] == "gguf Q4_K_M"
    (l4_pod,) = pods(api_client, namespace, "gguf-l4")
    assert l4_pod.spec.node_name.startswith("kwok-l4-"), l4_pod.spec.node_name
    g = l4_pod.spec.containers[0]
    assert g.image == "ghcr.io/ggml-org/llama.cpp:server-cuda"
    assert g.resources.limits == {"nvidia.com/gpu": "1"}
    assert g.args[g.args.index("-ngl") + 1] == "all"


@pytest.mark.parametrize(
    ("spec_patch", "field", "words"),
    [
        (
            {"engine": "llamacpp", "model": "pvc://m/x.gguf", "quantization": "awq"},
            "spec.quantization",
            "loads GGUF files only",
        ),
        ({"engine": "sglang", "quantization": "gguf"}, "spec.quantization", "engine 'llamacpp'"),
        ({"engine": "vllm", "quantization": "gguf"}, "spec.quantization", "engine 'vllm'"),
        ({"engine": "vllm", "gpu": {"type": "cpu"}}, "spec.gpu.type", "needs engine 'llamacpp'"),
        (
            {"engine": "llamacpp", "model": GGUF_REPO, "quantization": "gguf"},
            "spec.ggufFile",
            "is required",
        ),
        ({"ggufFile": GGUF_FILE}, "spec.ggufFile", "for engine 'llamacpp' only"),
        (
            {"engine": "sglang", "model": "s3://bucket/llama", "quantization": "none"},
            "spec.model",
            "s3://",
        ),
    ],
    ids=["llamacpp-awq", "sglang-gguf", "vllm-gguf", "cpu-vllm", "no-gguf-file", "gguf-file-vllm",
         "sglang-s3"],
)  # fmt: skip
def test_matrix_refused_at_apply(
    api_client: client.ApiClient,
    namespace: str,
    crd: None,
    spec_patch: dict[str, Any],
    field: str,
    words: str,
) -> None:
    body = load_example("llama70b-awq.yaml", namespace, **spec_patch)
    with pytest.raises(ApiException) as err:
        create_md(api_client, body)
    assert err.value.status == 422
    assert field in err.value.body, err.value.body
    assert words in err.value.body, err.value.body
