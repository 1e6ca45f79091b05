"""No stream cut by the operator's own actions: 50 streamed requests through the gateway
while the ModelDeployment rolls out a spec edit, and again while it scales down; and a
client that leaves mid-stream leaves nothing behind.

Simulated engines on KWOK pods (EngineFleet): a pod that leaves drains its requests as
vLLM does with `--shutdown-timeout` (which the operator sets), while the gateway sends
it nothing new.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from harness import NotYet, wait_for
from harness.engine_fleet import EngineFleet
from openmodel_fixtures import GROUP, PLURAL, VERSION, GatewayProcess, OperatorProcess, create_md

pytestmark = pytest.mark.cluster

NAME = "streamer"
STREAMS = 50
STREAM_SECONDS = 8.0  # each stream's length on the simulated engine
TOKENS = 16


def served(namespace: str) -> str:
    return f"{NAME}-{namespace}"


def md(namespace: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": "Qwen/Qwen2.5-7B-Instruct",
            # Unique across namespaces: the session's one gateway routes every namespace,
            # and a name two ModelDeployments claim goes to the older one.
            "servedModelName": served(namespace),
            "gpu": {"type": "nvidia-h100-80gb", "count": 1},
            "maxModelLen": 4096,
            "replicas": replicas,
        },
    }


def pods(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    listed = client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"openmodel.dev/model-deployment={NAME}"
    )
    return {p.metadata.name: p for p in listed.items}


@pytest.fixture
def fleet(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> Iterator[EngineFleet]:
    create_md(api_client, md(namespace, replicas=2))
    f = EngineFleet(
        api_client,
        namespace,
        NAME,
        served_model=served(namespace),
        slots=64,
        service_time=STREAM_SECONDS,
        drain_seconds=40,
    ).start()
    wait_for(lambda: len(f.urls()) == 2 or NotYet(f.urls()), 60, "two simulated engines")
    yield f
    f.stop()


async def stream(session: aiohttp.ClientSession, url: str, model: str) -> dict[str, Any]:
    body = {"model": model, "prompt": "tell me", "max_tokens": TOKENS, "stream": True}
    async with session.post(f"{url}/v1/completions", json=body) as r:
        events: list[str] = []
        async for line in r.content:
            text = line.decode().strip()
            if text.startswith("data: "):
                events.append(text.removeprefix("data: "))
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
        return {
            "status": r.status,
            "done": bool(events) and events[-1] == "[DONE]",
            "tokens": sum(1 for c in chunks if c.get("choices") and c["choices"][0].get("text")),
            "finish": [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")][-1:],
        }


def in_flight(gateway: GatewayProcess, namespace: str) -> int:
    async def read() -> int:
        async with aiohttp.ClientSession() as s, s.get(gateway.demand_url) as r:
            doc = await r.json()
        return sum(m["inFlight"] for m in doc["models"] if m["namespace"] == namespace)

    return asyncio.run(read())


def run_streams_during(
    gateway: GatewayProcess, namespace: str, action: Any
) -> tuple[list[dict[str, Any]], float]:
    """Start STREAMS streams, run `action()` once they are all in flight, wait for all."""

    async def main() -> tuple[list[dict[str, Any]], float]:
        timeout = aiohttp.ClientTimeout(total=STREAM_SECONDS * 6)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            tasks = [
                asyncio.create_task(stream(session, gateway.url, served(namespace)))
                for _ in range(STREAMS)
            ]
            deadline = time.monotonic() + STREAM_SECONDS / 2
            while await asyncio.to_thread(in_flight, gateway, namespace) < STREAMS:
                assert time.monotonic() < deadline, "the streams did not all start in time"
                await asyncio.sleep(0.05)
            acted = time.monotonic()
            await asyncio.to_thread(action)
            results = await asyncio.gather(*tasks)
            return results, time.monotonic() - acted

    return asyncio.run(main())


def assert_none_cut(results: list[dict[str, Any]]) -> None:
    cut = [r for r in results if not (r["status"] == 200 and r["done"] and r["tokens"] == TOKENS)]
    assert not cut, f"{len(cut)} of {len(results)} streams cut: {cut[:3]}"
    assert all(r["finish"] == ["length"] for r in results)


def test_a_rollout_under_50_streams_cuts_none(
    api_client: client.ApiClient, namespace: str, fleet: EngineFleet, gateway: GatewayProcess
) -> None:
    before = set(pods(api_client, namespace))
    custom = client.CustomObjectsApi(api_client)

    def roll() -> None:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, NAME,
            {"spec": {"env": [{"name": "ROLLOUT", "value": "1"}]}},
        )  # fmt: skip

        def rolled() -> bool | NotYet:
            now = pods(api_client, namespace)
            live = {n for n, p in now.items() if not p.metadata.deletion_timestamp}
            return (len(live) == 2 and not (live & before)) or NotYet(sorted(now))

        wait_for(rolled, 60, "the rollout to replace both pods")

    results, _ = run_streams_during(gateway, namespace, roll)
    assert_none_cut(results)
    assert len(fleet.retired) >= 2, "the old pods' engines were not stopped"
    assert sum(h.stats.aborted_by_stop for _, h in fleet.retired) == 0


def test_a_scale_down_under_50_streams_cuts_none_and_a_leaving_client_is_forgotten(
    api_client: client.ApiClient, namespace: str, fleet: EngineFleet, gateway: GatewayProcess
) -> None:
    custom = client.CustomObjectsApi(api_client)

    def scale_down() -> None:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"replicas": 1}}
        )
        wait_for(lambda: len(fleet.urls()) == 1 or NotYet(fleet.urls()), 60, "one engine left")

    results, _ = run_streams_during(gateway, namespace, scale_down)
    assert_none_cut(results)
    assert sum(h.stats.aborted_by_stop for _, h in fleet.retired) == 0

    # A client that disconnects mid-stream: the gateway's in-flight count and the
    # engine's slot are both released.
    async def leave_mid_stream() -> None:
        async with aiohttp.ClientSession() as session:
            body = {"model": served(namespace), "prompt": "x", "max_tokens": TOKENS, "stream": True}
            async with session.post(f"{gateway.url}/v1/completions", json=body) as r:
                assert r.status == 200
                await r.content.readline()  # the first event, then leave

    asyncio.run(leave_mid_stream())
    wait_for(
        lambda: in_flight(gateway, namespace) == 0 or NotYet("still in flight"),
        STREAM_SECONDS,
        "the gateway to forget the client that left",
    )
    wait_for(
        lambda: sum(h.stats.running for _, h in fleet.handles.values()) == 0 or NotYet("busy"),
        STREAM_SECONDS,
        "the engine to free the slot",
    )
