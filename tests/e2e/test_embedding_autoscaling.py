"""An embedding model (`spec.task: embed`) scales on the same queue gauges as a
generative one, and to and from zero through the gateway: real control plane, KWOK GPU
nodes, the operator and the gateway processes, a simulated pooling engine on every
pod's IP (vLLM 0.32's pooling runner: every input is one request in
`vllm:num_requests_running` / `waiting`, checked against the real engine in
test_pooling_simulator_contract.py).

The model is the catalogue's small Llama with `task: embed` (vLLM converts a decoder
into an embedding model); its engine is simulated, so only the task matters here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from kubernetes import client

from harness import NotYet, describe_namespace, wait_for
from harness.engine_fleet import EngineFleet, LoadGenerator
from openmodel_fixtures import (
    GatewayProcess,
    OperatorProcess,
    autoscaled_small_md,
    condition,
    create_md,
    get_md,
)

pytestmark = pytest.mark.cluster

NAME = "embedder"
SLOTS = 4
# 3 clients, each a batch of 4 inputs: 12 engine requests at once. One replica runs 4
# and queues 8, far over the target of 1 per replica: 2 (the most allowed) carry it.
CLIENTS = 3
BATCH = 4
DOWN_WINDOW = 4
TO_ZERO_AFTER = 30  # the CRD's least scaleToZeroAfterSeconds


def served(namespace: str) -> str:
    # Unique across namespaces: the session's one gateway routes every namespace.
    return f"{NAME}-{namespace}"


def embedding_md(namespace: str, **autoscaling: Any) -> dict[str, Any]:
    body = autoscaled_small_md(namespace, NAME, **autoscaling)
    body["spec"]["task"] = "embed"
    body["spec"]["servedModelName"] = served(namespace)
    return body


def replicas(api: client.ApiClient, namespace: str) -> int:
    dep = client.AppsV1Api(api).read_namespaced_deployment(NAME, namespace)
    return int(dep.spec.replicas)


def start_fleet(api: client.ApiClient, namespace: str) -> EngineFleet:
    return EngineFleet(
        api, namespace, NAME, task="embed", served_model=served(namespace), slots=SLOTS,
        service_time=0.3,
    ).start()  # fmt: skip


@pytest.fixture
def scaling_fleet(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> Iterator[EngineFleet]:
    create_md(
        api_client,
        embedding_md(
            namespace, minReplicas=1, maxReplicas=2, targetQueueDepth=1,
            scaleDownStabilizationSeconds=DOWN_WINDOW,
        ),
    )  # fmt: skip
    fleet = start_fleet(api_client, namespace)
    yield fleet
    fleet.stop()


def test_an_embedding_model_scales_1_2_1_on_the_queue_of_a_batch_load(
    api_client: client.ApiClient, namespace: str, scaling_fleet: EngineFleet
) -> None:
    fleet = scaling_fleet
    wait_for(
        lambda: len(fleet.urls()) == 1 or NotYet(fleet.urls()),
        60,
        lambda: describe_namespace(api_client, namespace),
    )
    assert replicas(api_client, namespace) == 1
    assert get_md(api_client, namespace, NAME)["spec"]["task"] == "embed"

    load = LoadGenerator(fleet, clients=CLIENTS, batch=BATCH, max_seconds=90).start()
    try:
        peak = [0]

        def scaled_up() -> int | NotYet:
            r = replicas(api_client, namespace)
            peak[0] = max(peak[0], fleet.total_waiting())
            return r if r == 2 else NotYet(f"replicas {r}, waiting {fleet.total_waiting()}")

        wait_for(scaled_up, 30, lambda: describe_namespace(api_client, namespace))
        wait_for(lambda: len(fleet.urls()) == 2 or NotYet(fleet.urls()), 30, "a second engine")
        assert peak[0] > 0, peak  # the batch queued on one engine
        served_before = load.sent
        wait_for(
            lambda: load.sent > served_before + 10 or NotYet(load.sent), 20, "load on two pods"
        )
    finally:
        load.stop()
    assert load.failed == 0, f"{load.failed} of {load.sent} embeddings requests failed"
    every = [*fleet.handles.values(), *((p, h) for p, h in fleet.retired)]
    assert sum(h.stats.generation_tokens for _, h in every) == 0  # nothing generated
    # Each answered request was BATCH requests inside the engines.
    assert sum(h.stats.finished.get("stop", 0) for _, h in every) >= BATCH * load.sent

    def at_one() -> bool | NotYet:
        r = replicas(api_client, namespace)
        return r == 1 or NotYet(f"replicas {r}, waiting {fleet.total_waiting()}")

    wait_for(at_one, DOWN_WINDOW + 30, lambda: describe_namespace(api_client, namespace))
    events = (
        client.CoreV1Api(api_client)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}")
        .items
    )
    assert {"ScaleUp", "ScaleDown"} <= {e.reason for e in events}
    up = next(e for e in events if e.reason == "ScaleUp")
    assert "queue" in up.message, up.message


@pytest.fixture
def cold_fleet(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> Iterator[EngineFleet]:
    create_md(
        api_client,
        embedding_md(
            namespace, minReplicas=0, maxReplicas=1, scaleToZeroAfterSeconds=TO_ZERO_AFTER
        ),
    )
    fleet = start_fleet(api_client, namespace)
    yield fleet
    fleet.stop()


@pytest.mark.timeout(300)
def test_an_embedding_model_scales_from_zero_for_the_openai_sdk_and_back(
    api_client: client.ApiClient,
    namespace: str,
    cold_fleet: EngineFleet,
    gateway: GatewayProcess,
) -> None:
    model = served(namespace)
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)

    def at_zero() -> dict[str, Any] | NotYet:
        md = get_md(api_client, namespace, NAME)
        if condition(md, "Ready").get("reason") != "ScaledToZero" or replicas(
            api_client, namespace
        ):
            return NotYet(md.get("status"))
        return md

    wait_for(at_zero, TO_ZERO_AFTER + 60, "the embedding model to settle at zero replicas")

    # A chat to an embedding model: refused at once, naming the task; it wakes nothing.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["code"] == "wrong_task", refused.value.body  # type: ignore[index]
    assert "(task: embed)" in refused.value.message
    assert replicas(api_client, namespace) == 0

    # Embeddings at zero: held until the autoscaler's replica is ready, then answered.
    sent = time.monotonic()
    answer = sdk.embeddings.create(model=model, input=["hello world", "the cat sat", "hi"])
    waited = time.monotonic() - sent
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert {len(d.embedding) for d in answer.data} == {64}
    assert answer.usage.prompt_tokens == 2 + 3 + 1
    assert replicas(api_client, namespace) == 1
    print(f"\nembeddings from zero answered after {waited:.1f}s")

    # The engine's own 400 for an empty batch passes through the gateway.
    with pytest.raises(openai.BadRequestError) as empty:
        sdk.embeddings.create(model=model, input=[])
    assert "at least one prompt" in empty.value.message

    idle_from = time.monotonic()
    wait_for(at_zero, TO_ZERO_AFTER + 60, "the embedding model to go back to zero")
    print(f"back to zero {time.monotonic() - idle_from:.1f}s after the last request")
