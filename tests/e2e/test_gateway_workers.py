"""`gateway.workers: 2`: one gateway "pod" of two worker processes sharing the API port
(`python -m openmodel.gateway`, its supervisor serving the monitoring port), watching the
session's API server, in front of simulated engines on KWOK pods (EngineFleet).

Shown: new connections spread over both workers (each answer names its worker in
X-OpenModel-Gateway-Worker, and the pod's /metrics counts each worker's requests under a
`worker` label, the two agreeing); /v1/models the same from both workers; requests held
for a model at zero replicas on both workers, and /demand, asked again and again,
counting all of them (the sum of the workers' held gauges); a worker SIGKILLed is
started again under the same index while /demand keeps answering; and a limit of K
requests per minute holds pod-wide, each worker admitting its K/2 (limit / (replicas x
workers), docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from harness import NotYet, wait_for
from harness.engine_fleet import EngineFleet
from openmodel_fixtures import GROUP, VERSION, GatewayProcess, OperatorProcess, create_md
from openmodel_fixtures import start_gateway as start_gateway_process

pytestmark = pytest.mark.cluster

WORKER_HEADER = "X-OpenModel-Gateway-Worker"
WORKERS = 2
SERVED = "served"  # the ModelDeployment with a pod
COLD = "cold"  # the one at zero replicas: requests to it are held
REQUESTS_PER_MINUTE = 10


def md(namespace: str, name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": "Qwen/Qwen2.5-7B-Instruct",
            # Unique across namespaces: the session's gateway routes every namespace.
            "servedModelName": f"{name}-{namespace}",
            "gpu": {"type": "nvidia-h100-80gb", "count": 1},
            "maxModelLen": 4096,
            "replicas": replicas,
        },
    }


@pytest.fixture
def fleet(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> Iterator[EngineFleet]:
    create_md(api_client, md(namespace, SERVED, replicas=1))
    create_md(api_client, md(namespace, COLD, replicas=0))
    f = EngineFleet(
        api_client, namespace, SERVED, served_model=f"{SERVED}-{namespace}", slots=64,
        service_time=0.05,
    ).start()  # fmt: skip
    wait_for(lambda: len(f.urls()) == 1 or NotYet(f.urls()), 60, "a simulated engine")
    yield f
    f.stop()


def start_gateway(request: pytest.FixtureRequest, **settings: Any) -> GatewayProcess:
    cluster = request.getfixturevalue("cluster")
    gw = start_gateway_process(
        cluster.kubeconfig, cluster.workdir, name=f"gateway-{request.node.name}",
        workers=WORKERS, **settings,
    )  # fmt: skip
    request.addfinalizer(gw.stop)
    # The API port answers once one worker is ready; the supervisor's /readyz, both.
    wait_for(lambda: get_status(f"{gw.metrics_url}/readyz") == 200 or NotYet("not ready"),
             60, "both workers ready")  # fmt: skip
    return gw


def get_status(url: str) -> int:
    async def ask() -> int:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status

    try:
        return asyncio.run(ask())
    except aiohttp.ClientError:
        return 0


def fresh_session() -> aiohttp.ClientSession:
    """Every request on a connection of its own: the kernel picks a worker per connection."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def complete(session: aiohttp.ClientSession, url: str, model: str) -> tuple[str, int]:
    """(the worker that answered, the status)."""
    body = {"model": model, "prompt": "hello", "max_tokens": 2}
    async with session.post(f"{url}/v1/completions", json=body) as r:
        await r.read()
        return r.headers[WORKER_HEADER], r.status


def metric_samples(gw: GatewayProcess, name: str) -> list[tuple[dict[str, str], float]]:
    async def scrape() -> str:
        async with aiohttp.ClientSession() as s, s.get(f"{gw.metrics_url}/metrics") as r:
            assert r.status == 200
            return await r.text()

    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(asyncio.run(scrape()))
        for sample in family.samples
        if sample.name == name
    ]


def per_worker(gw: GatewayProcess, name: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in metric_samples(gw, name):
        if match.items() <= labels.items():
            out[labels["worker"]] = out.get(labels["worker"], 0.0) + value
    return out


def demand_of(gw: GatewayProcess, namespace: str, name: str) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(gw.demand_url) as r:
            assert r.status == 200, await r.text()
            doc: dict[str, Any] = await r.json()
            return doc

    (entry,) = [m for m in asyncio.run(ask())["models"]
                if (m["namespace"], m["name"]) == (namespace, name)]  # fmt: skip
    return entry


def worker_pids(gw: GatewayProcess) -> dict[int, int]:
    """Worker index -> its current pid, from the supervisor's log."""
    found = re.findall(r"worker (\d+) started \(pid (\d+)\)", gw.log_path.read_text())
    return {int(index): int(pid) for index, pid in found}


def test_two_workers_answer_as_one_pod(
    request: pytest.FixtureRequest, namespace: str, fleet: EngineFleet
) -> None:
    gw = start_gateway(request)
    served, cold = f"{SERVED}-{namespace}", f"{COLD}-{namespace}"

    # /v1/models: the same list from both workers (each watches the same objects).
    async def models() -> list[tuple[str, Any]]:
        async with fresh_session() as s:
            answers = []
            for _ in range(40):
                async with s.get(f"{gw.url}/v1/models") as r:
                    assert r.status == 200
                    answers.append((r.headers[WORKER_HEADER], await r.json()))
            return answers

    def both_list_the_models() -> list[tuple[str, Any]] | NotYet:
        answers = asyncio.run(models())
        names = [sorted(m["id"] for m in doc["data"]) for _, doc in answers]
        if not all({served, cold} <= set(n) for n in names):
            return NotYet(names[:2])
        return answers

    answers = wait_for(both_list_the_models, 60, "both models listed by every answer")
    assert {worker for worker, _ in answers} == {"0", "1"}
    ours = [
        json.dumps(sorted((m for m in doc["data"] if m["id"] in (served, cold)),
                          key=lambda m: m["id"]), sort_keys=True)
        for _, doc in answers
    ]  # fmt: skip
    assert len(set(ours)) == 1, set(ours)

    # Requests spread over the workers; the pod's /metrics counts each worker's own.
    async def spread() -> list[tuple[str, int]]:
        async with fresh_session() as s:
            return [await complete(s, gw.url, served) for _ in range(40)]

    results = asyncio.run(spread())
    assert all(status == 200 for _, status in results), results
    by_header = Counter(worker for worker, _ in results)
    assert set(by_header) == {"0", "1"}, by_header
    counted = per_worker(gw, "openmodel_gateway_requests_total", model=served, code="200")
    assert counted == {w: float(n) for w, n in by_header.items()}, (counted, by_header)
    print(f"\n40 requests: {dict(by_header)} by worker")

    # Requests held for the model at zero, on both workers; /demand counts them all.
    async def hold_and_check() -> int:
        async with fresh_session() as s:
            held: list[asyncio.Task[tuple[str, int]]] = []
            try:
                while len(held) < 40:
                    held.append(asyncio.create_task(complete(s, gw.url, cold)))
                    # Until both workers hold some, and at least 8 in all.
                    while True:
                        gauges = await asyncio.to_thread(
                            per_worker,
                            gw,
                            "openmodel_gateway_held_requests",
                            namespace=namespace,
                            model_deployment=COLD,
                        )
                        if sum(gauges.values()) == len(held):
                            break
                        await asyncio.sleep(0.02)
                    if len(held) >= 8 and all(gauges.get(w, 0) > 0 for w in ("0", "1")):
                        break
                assert all(gauges.get(w, 0) > 0 for w in ("0", "1")), gauges
                for _ in range(20):
                    entry = await asyncio.to_thread(demand_of, gw, namespace, COLD)
                    assert entry["held"] == len(held), (entry, gauges)
                return len(held)
            finally:
                for task in held:
                    task.cancel()
                await asyncio.gather(*held, return_exceptions=True)

    n_held = asyncio.run(hold_and_check())
    print(f"{n_held} requests held over both workers, counted by /demand 20 times in a row")
    wait_for(lambda: demand_of(gw, namespace, COLD)["held"] == 0 or NotYet("still held"),
             30, "the held requests forgotten once their clients left")  # fmt: skip
    assert demand_of(gw, namespace, SERVED)["idleSeconds"] < 60

    # A worker killed is started again under its index; /demand answers meanwhile.
    before = worker_pids(gw)
    os.kill(before[0], signal.SIGKILL)

    def restarted() -> dict[int, int] | NotYet:
        demand_of(gw, namespace, SERVED)  # answers (200) throughout
        pids = worker_pids(gw)
        restarts = metric_samples(gw, "openmodel_gateway_worker_restarts_total")
        ready = get_status(f"{gw.metrics_url}/readyz") == 200
        if pids[0] == before[0] or restarts != [({}, 1.0)] or not ready:
            return NotYet((pids, restarts, ready))
        return pids

    after = wait_for(restarted, 60, "worker 0 started again")
    assert after[1] == before[1]
    results = asyncio.run(spread())
    assert {worker for worker, _ in results} == {"0", "1"}
    assert all(status == 200 for _, status in results)
    assert gw.alive()


def test_a_limit_holds_pod_wide_each_worker_taking_its_share(
    request: pytest.FixtureRequest, namespace: str, fleet: EngineFleet
) -> None:
    limits = {"perIdentity": {"requestsPerMinute": REQUESTS_PER_MINUTE}, "replicas": 1}
    gw = start_gateway(request, limits=limits)
    served = f"{SERVED}-{namespace}"
    wait_for(lambda: served in model_ids(gw) or NotYet("not routed yet"), 60, "routed")

    async def hammer() -> list[tuple[str, int]]:
        async with fresh_session() as s:
            return [await complete(s, gw.url, served) for _ in range(40)]

    results = asyncio.run(hammer())
    tried = Counter(worker for worker, _ in results)
    accepted = Counter(worker for worker, status in results if status == 200)
    assert {status for _, status in results} == {200, 429}
    share = REQUESTS_PER_MINUTE // WORKERS
    print(f"\n40 requests, limit {REQUESTS_PER_MINUTE}/min: tried {dict(tried)}, "
          f"accepted {dict(accepted)}")  # fmt: skip
    assert sum(accepted.values()) <= REQUESTS_PER_MINUTE
    for worker, n in tried.items():
        assert accepted[worker] == min(n, share), (worker, tried, accepted)
    shares = per_worker(gw, "openmodel_gateway_limit_replicas")
    assert shares == {"0": float(WORKERS), "1": float(WORKERS)}


def model_ids(gw: GatewayProcess) -> set[str]:
    async def ask() -> set[str]:
        async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/v1/models") as r:
            return {m["id"] for m in (await r.json())["data"]}

    return asyncio.run(ask())
