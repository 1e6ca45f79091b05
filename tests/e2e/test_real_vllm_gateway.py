"""One gateway in front of three ModelDeployments, one a real vLLM that scales from zero.

The real engine serves the tiny model with a LoRA adapter on a process node; the two
others are simulated engines on KWOK GPU nodes. The real one starts at zero replicas:
20 concurrent requests through the gateway are held, the autoscaler reads them from the
gateway's /demand, brings 0 -> 1, and all 20 are answered when the pod is Ready. Then
the adapter and the other models are reached by name, /v1/models lists all of them, an
unknown model gets the 404 body, and after scaleToZeroAfterSeconds the model goes back
to zero by itself. Along the way the gateway's usage counters for the real model equal
the sum of the `usage` fields vLLM returned (plain answers and streams, with the usage
chunk asked for by the client or only by the gateway, which then strips it), and a
marker sent in a prompt and as a bearer token never shows in the gateway's log. A second
gateway with authentication enforced (real TokenReview and SubjectAccessReview) keeps a
caller of another namespace out of the real model and its adapter (401 without a token,
403 with one) until a RoleBinding grants `use`, then lets the real adapter answer it
through the official OpenAI SDK. One real-engine start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from kubernetes import client

from openmodel.engine_metrics.exposition import parse_exposition
from openmodel.metering import dashboard

from harness import (
    Cluster,
    NotYet,
    describe_namespace,
    wait_for,
)
from harness.engine_fleet import EngineFleet
from harness.k8s import create_namespace, delete_namespace, service_account_token
from harness.prometheus import start_prometheus
from openmodel_fixtures import (
    AUTOSCALER_POLL_SECONDS,
    GROUP,
    VERSION,
    GatewayProcess,
    OperatorProcess,
    condition,
    create_md,
    get_md,
    grant_use,
    start_gateway,
)
from real_engine.cluster_objects import engine_namespace
from real_engine.cpu import CPU_ARGS, CPU_ENV, START_TIMEOUT

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine]

REAL = "tiny-gw"
# Names no other test's ModelDeployment claims: the session's one gateway routes every
# namespace, and a name claimed twice goes to the older claimant.
SERVED = "tiny-behind-gateway"
ADAPTER = "gw-a1"
SIMULATED = {"sim-l4": "nvidia-l4", "sim-h100": "nvidia-h100-80gb"}
TO_ZERO_AFTER = 30
CONCURRENT = 20
MARKER = "zq-usage-marker-51c0"


def real_md(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": REAL, "namespace": namespace},
        "spec": {
            "model": "pvc://tiny/model",
            "servedModelName": SERVED,
            "gpu": {"type": "nvidia-a10g", "count": 1},
            "maxModelLen": 1024,
            "args": CPU_ARGS,
            "env": CPU_ENV,
            "adapters": [{"name": ADAPTER, "source": "pvc://tiny/adapters/a1"}],
            "lora": {"maxRank": 16, "maxAdapters": 2},
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 1,
                "targetQueueDepth": 4,
                "scaleDownStabilizationSeconds": 0,
                "scaleToZeroAfterSeconds": TO_ZERO_AFTER,
            },
        },
    }


def simulated_md(namespace: str, name: str, gpu: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "servedModelName": name,  # the simulator answers to its ModelDeployment's name
            "gpu": {"type": gpu, "count": 1},
            "maxModelLen": 4096,
        },
    }


def replicas(api: client.ApiClient, namespace: str) -> int:
    return int(client.AppsV1Api(api).read_namespaced_deployment(REAL, namespace).spec.replicas)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def gateway_namespace(
    api_client: client.ApiClient, cluster: Cluster, tiny_model: Path, tiny_adapters: Path
) -> Iterator[str]:
    with engine_namespace(api_client, cluster, "e2e-real-gateway", tiny_model) as namespace:
        yield namespace


@pytest.fixture(scope="module")
def fleets(
    api_client: client.ApiClient, gateway_namespace: str, operator: OperatorProcess
) -> Iterator[dict[str, EngineFleet]]:
    started = {}
    for name, gpu in SIMULATED.items():
        create_md(api_client, simulated_md(gateway_namespace, name, gpu))
        started[name] = EngineFleet(
            api_client, gateway_namespace, name, slots=4, service_time=0.05, max_seconds=900
        ).start()
    yield started
    for fleet in started.values():
        fleet.stop()


async def chat(session: aiohttp.ClientSession, url: str, model: str) -> tuple[int, Any, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "the cat and the dog"}],
        "max_tokens": 4,
        "temperature": 0,
    }
    async with session.post(f"{url}/v1/chat/completions", json=body) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None), time.time()


async def burst(url: str, model: str, count: int) -> list[tuple[int, Any, float]]:
    timeout = aiohttp.ClientTimeout(total=START_TIMEOUT + 120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await asyncio.gather(*(chat(session, url, model) for _ in range(count)))


async def stream(
    url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[str, dict[str, int] | None]:
    """A streamed request: its whole text and the usage chunk's usage, if one came."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}{path}", json={**body, "stream": True}, headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        text = await r.text()
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: {")]
    usages = [json.loads(e)["usage"] for e in events if '"usage"' in e]
    return text, (usages[-1] if usages else None)


def gateway_usage(metrics_url: str, namespace: str) -> dict[str, dict[str, float]]:
    """The gateway's usage counters for the real ModelDeployment, per model name (read on
    its metrics port)."""
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    found: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        for kind in ("prompt", "completion"):
            name = f"openmodel_gateway_usage_{kind}_tokens_total{{"
            if not line.startswith(name):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if labels["namespace"] == namespace and labels["model_deployment"] == REAL:
                counts = found.setdefault(labels["model"], {"prompt": 0.0, "completion": 0.0})
                counts[kind] += float(line.rsplit(" ", 1)[1])
    return found


def engine_tokens(metrics_url: str, namespace: str) -> dict[str, float]:
    """The operator's metering counters of the engines' tokens for the real model."""
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=5) as response:
        exposition = parse_exposition(response.read().decode())
    found: dict[str, float] = {}
    for sample in exposition.samples:
        if sample.name.endswith("_tokens_total") and dict(sample.labels) == {
            "namespace": namespace,
            "name": REAL,
        }:
            found[sample.name] = sample.value
    return found


def metered_series(metrics_url: str, namespace: str, name: str) -> float:
    """One metering series of the real model, summed over its other labels."""
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=5) as response:
        exposition = parse_exposition(response.read().decode())
    return sum(
        s.value
        for s in exposition.samples
        if s.name == name and s.label("namespace") == namespace and s.label("name") == REAL
    )


def dashboard_queries_answer(
    cluster: Cluster,
    ns: str,
    operator: OperatorProcess,
    gateway: GatewayProcess,
    engine_ip: str,
) -> None:
    """Every query of the Grafana dashboard (hack/dashboard.py), run by a real Prometheus
    scraping the operator, the gateway and the real vLLM, returns data for this model."""
    targets = {
        "operator": operator.metrics_url.removeprefix("http://"),
        "gateway": gateway.metrics_url.removeprefix("http://"),
        "vllm": f"{engine_ip}:8000",
    }
    prometheus = start_prometheus(cluster.workdir / "prometheus", targets)
    try:
        prometheus.wait_until_scraped(list(targets))
        # Something to count while it watches: one more answer.
        status, _, _ = asyncio.run(burst(gateway.url, SERVED, 1))[0]
        assert status == 200

        def counted() -> bool | NotYet:
            grown = prometheus.query(
                "increase(openmodel_engine_generation_tokens_total"
                f'{{namespace="{ns}",name="{REAL}"}}[5m])'
            )
            return bool(grown and float(grown[0]["value"][1]) > 0) or NotYet(grown)

        wait_for(counted, 30, "Prometheus to see the answer's tokens counted")
        assert prometheus.query("vllm:generation_tokens_total"), "the real vLLM, scraped"
        empty = []
        for query in dashboard.queries():
            concrete = query.replace("$namespace", ns).replace("$__range", "5m")
            if not prometheus.query(concrete):
                empty.append(concrete)
        assert not empty, f"dashboard queries without data: {empty}"
    finally:
        prometheus.stop()


def add(total: dict[str, dict[str, float]], model: str, usage: dict[str, int]) -> None:
    counts = total.setdefault(model, {"prompt": 0.0, "completion": 0.0})
    counts["prompt"] += usage["prompt_tokens"]
    counts["completion"] += usage["completion_tokens"]


def door_refuses_then_admits(
    api_client: client.ApiClient, cluster: Cluster, namespace: str
) -> dict[str, int]:
    """The real model and its adapter behind a gateway that enforces authentication: a
    caller of another namespace gets 401 without a token and 403 with its token, then 200
    from the real engine (the adapter's own answer) once a RoleBinding grants `use`.
    Returns the `usage` the engine answered with, summed."""
    door = start_gateway(
        cluster.kubeconfig, cluster.workdir, name="gateway-real-door",
        auth={"mode": "enforce", "accessCacheSeconds": 1, "deniedCacheSeconds": 1},
    )  # fmt: skip
    caller_ns = create_namespace(api_client, "e2e-real-caller")
    try:
        client.CoreV1Api(api_client).create_namespaced_service_account(
            caller_ns, {"metadata": {"name": "client"}}
        )
        token = service_account_token(api_client, caller_ns, "client")

        def sdk(key: str) -> openai.OpenAI:
            return openai.OpenAI(base_url=f"{door.url}/v1", api_key=key, max_retries=0)

        def completion(key: str, model: str) -> Any:
            return sdk(key).completions.create(
                model=model, prompt="the cat", max_tokens=4, temperature=0
            )

        for model in (SERVED, ADAPTER):
            with pytest.raises(openai.AuthenticationError):
                completion("none", model)
            with pytest.raises(openai.PermissionDeniedError) as refused:
                completion(token, model)
            assert refused.value.body["code"] == "permission_denied"  # type: ignore[index]
        assert not {m.id for m in sdk(token).models.list()} & {SERVED, ADAPTER}

        grant_use(api_client, namespace, caller_ns, "client")

        def adapter_answer() -> Any:
            try:
                return completion(token, ADAPTER)
            except openai.PermissionDeniedError as e:
                return NotYet(e.status_code)

        answer = wait_for(adapter_answer, 30, "the RoleBinding to let the caller in")
        assert answer.model == ADAPTER and answer.usage.completion_tokens >= 1, answer
        base = completion(token, SERVED)
        assert base.model == SERVED
        assert {SERVED, ADAPTER} <= {m.id for m in sdk(token).models.list()}
        return {
            "prompt": answer.usage.prompt_tokens + base.usage.prompt_tokens,
            "completion": answer.usage.completion_tokens + base.usage.completion_tokens,
        }
    finally:
        door.stop()
        delete_namespace(api_client, caller_ns)


def _time(value: dt.datetime) -> float:
    return value.timestamp()


@pytest.mark.timeout(START_TIMEOUT + 600)
def test_one_gateway_routes_every_model_and_a_real_vllm_scales_from_zero_and_back(
    api_client: client.ApiClient,
    gateway_namespace: str,
    fleets: dict[str, EngineFleet],
    gateway: GatewayProcess,
    operator: OperatorProcess,
    cluster: Cluster,
    api_key_crd: None,
) -> None:
    ns = gateway_namespace
    core = client.CoreV1Api(api_client)
    create_md(api_client, real_md(ns))

    def at_zero() -> dict[str, Any] | NotYet:
        md = get_md(api_client, ns, REAL)
        ready = condition(md, "Ready")
        if ready.get("reason") != "ScaledToZero" or replicas(api_client, ns) != 0:
            return NotYet(ready or md.get("status"))
        return md

    md = wait_for(at_zero, 60, "the real model to settle at zero replicas")
    assert condition(md, "Ready")["status"] == "True"  # idle as asked: settled
    assert md["status"]["reason"] == "ScaledToZero"
    assert not core.list_namespaced_pod(
        ns, label_selector=f"openmodel.dev/model-deployment={REAL}"
    ).items

    # 20 concurrent requests for a model with no pod: held, none refused.
    sent_at = time.time()
    answers = asyncio.run(burst(gateway.url, SERVED, CONCURRENT))
    statuses = [status for status, _, _ in answers]
    assert statuses == [200] * CONCURRENT, [a[:2] for a in answers if a[0] != 200]
    assert all(body["model"] == SERVED for _, body, _ in answers)
    first_answer = min(at for _, _, at in answers) - sent_at

    (engine_pod,) = core.list_namespaced_pod(
        ns, label_selector=f"openmodel.dev/model-deployment={REAL}"
    ).items
    created = _time(engine_pod.metadata.creation_timestamp) - sent_at
    ready_at = next(
        _time(c.last_transition_time) for c in engine_pod.status.conditions if c.type == "Ready"
    )
    engine_start = ready_at - _time(engine_pod.metadata.creation_timestamp)
    print(
        f"\nscale from zero: pod created {created:.1f}s after the burst, engine start "
        f"{engine_start:.1f}s, first answer {first_answer:.1f}s, all {CONCURRENT} answered"
    )
    # The autoscaler woke it within a poll or two (plus the gateway's first hold report);
    # the first answer came within the engine's start plus that, plus a second of slack
    # for the gateway to see the Ready pod (second-resolution timestamps).
    assert created <= 2 * AUTOSCALER_POLL_SECONDS + 3, created
    assert first_answer <= created + engine_start + AUTOSCALER_POLL_SECONDS + 2, first_answer

    # The adapter by its name (held until its engine lists it), the others by theirs.
    adapter_status = asyncio.run(burst(gateway.url, ADAPTER, 1))[0]
    assert adapter_status[0] == 200, adapter_status[1]
    assert adapter_status[1]["model"] == ADAPTER
    for name, fleet in fleets.items():
        wait_for(lambda f=fleet: bool(f.urls()) or NotYet("no simulator yet"), 60,  # type: ignore[misc]
                 f"{name}'s simulated engine")  # fmt: skip
        before = sum(h.stats.succeeded for _, h in fleet.handles.values())
        status, body, _ = asyncio.run(burst(gateway.url, name, 1))[0]
        assert status == 200 and body["model"] == name, body
        after = sum(h.stats.succeeded for _, h in fleet.handles.values())
        assert after == before + 1, f"{name}: its own engine did not answer"

    through_the_door = door_refuses_then_admits(api_client, cluster, ns)

    # Usage: the counters equal the usage vLLM returned, streams included.
    returned: dict[str, dict[str, float]] = {}
    for _, body, _ in answers:
        add(returned, SERVED, body["usage"])
    add(returned, ADAPTER, adapter_status[1]["usage"])
    chat_body = {
        "model": SERVED,
        "messages": [{"role": "user", "content": f"the cat and the dog {MARKER}"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    asked = {**chat_body, "stream_options": {"include_usage": True}}
    text, usage = asyncio.run(stream(gateway.url, "/v1/chat/completions", asked))
    assert usage is not None and usage["completion_tokens"] >= 1, text
    add(returned, SERVED, usage)
    # The same request, greedy, without asking: same usage, counted; the chunk stripped.
    bearer = {"Authorization": f"Bearer {MARKER}"}
    text, stripped = asyncio.run(stream(gateway.url, "/v1/chat/completions", chat_body, bearer))
    assert stripped is None and '"usage"' not in text and text.endswith("data: [DONE]\n\n")
    add(returned, SERVED, usage)
    completion = {"model": ADAPTER, "prompt": "the cat", "max_tokens": 5, "temperature": 0,
                  "stream_options": {"include_usage": True}}  # fmt: skip
    _, adapter_usage = asyncio.run(stream(gateway.url, "/v1/completions", completion))
    assert adapter_usage is not None
    add(returned, ADAPTER, adapter_usage)
    counted = gateway_usage(gateway.metrics_url, ns)
    print(f"usage returned by vLLM {returned}; counted by the gateway {counted}")
    assert counted == returned
    # The engine's own counters, as the operator's metering reads them, agree: what went
    # through this gateway and through the door's.
    served = {
        "openmodel_engine_prompt_tokens_total": through_the_door["prompt"]
        + sum(c["prompt"] for c in returned.values()),
        "openmodel_engine_generation_tokens_total": through_the_door["completion"]
        + sum(c["completion"] for c in returned.values()),
    }

    def metered() -> dict[str, float] | NotYet:
        found = engine_tokens(operator.metrics_url, ns)
        return found if found == served else NotYet((found, served))

    wait_for(metered, 30, "the operator's metering to count what vLLM served")
    # GPU time: the process-node pod's time since its start, times its one GPU, within
    # one metering poll (1 s) and the start time's one-second resolution.
    started = engine_pod.status.start_time.timestamp()
    before = time.time()
    gpu_seconds = metered_series(operator.metrics_url, ns, "openmodel_gpu_seconds_total")
    after = time.time()
    assert before - started - 4.0 <= gpu_seconds <= after - started + 2.0, (
        before - started,
        gpu_seconds,
    )
    dashboard_queries_answer(cluster, ns, operator, gateway, engine_pod.status.pod_ip)

    listed = {m["id"] for m in get_json(f"{gateway.url}/v1/models")["data"]}
    assert {SERVED, ADAPTER, *SIMULATED} <= listed
    status, body, _ = asyncio.run(burst(gateway.url, "no-such-model", 1))[0]
    assert status == 404 and body["error"]["code"] == "model_not_found"

    # Idle: back to zero by itself after scaleToZeroAfterSeconds.
    idle_from = time.time()
    try:
        wait_for(at_zero, TO_ZERO_AFTER + 90, "the real model to go back to zero")
    except BaseException:
        print(describe_namespace(api_client, ns))
        raise
    print(f"back to zero {time.time() - idle_from:.1f}s after the last request")
    assert time.time() - idle_from >= TO_ZERO_AFTER - 1
    demand = get_json(gateway.demand_url)
    mine = [m for m in demand["models"] if m["namespace"] == ns and m["name"] == REAL]
    assert mine and mine[0]["held"] == 0 and mine[0]["inFlight"] == 0
    log = gateway.log_path.read_text()
    assert MARKER not in log, [line for line in log.splitlines() if MARKER in line]
