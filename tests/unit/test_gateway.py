"""The gateway against real simulated engines on loopback: routing, holding, errors."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from openmodel.config import GatewayConfig, parse_config
from openmodel.gateway.auth.access_control import AccessControl
from openmodel.gateway.balancer import Balancer
from openmodel.gateway.proxy import Gateway
from openmodel.gateway.routes import Backend, Endpoint, RouteTable, backend_from, endpoint_from
from openmodel.gateway.server import serve
from openmodel.simulator.server import SimulatorHandle, start_simulator

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout=30)

    return asyncio.run(bounded())


def pod(name: str, ip: str, ready: bool = True, leaving: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if leaving:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def md_body(name: str, ns: str = "team-a", created: str = "2026-01-01T00:00:00Z",
            **spec: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
        "spec": {"model": "Qwen/Qwen2.5-7B-Instruct", "gpu": {"type": "nvidia-l4"}, **spec},
    }


# --- routes ---


def test_routes_by_served_name_and_adapter_and_the_older_claim_wins() -> None:
    table = RouteTable()
    table.put_model_deployment(md_body("qwen", servedModelName="qwen"))
    table.put_model_deployment(
        md_body(
            "llama",
            model="meta-llama/Llama-3.1-8B-Instruct",
            adapters=[{"name": "sql-lora", "source": "org/sql-lora"}],
        )
    )
    table.put_model_deployment(
        md_body("qwen-copy", ns="team-b", created="2026-02-01T00:00:00Z", servedModelName="qwen")
    )
    qwen = table.route("qwen")
    assert qwen is not None and qwen.backend.key == ("team-a", "qwen")
    assert table.conflicts == {"qwen": [("team-a", "qwen"), ("team-b", "qwen-copy")]}
    adapter = table.route("sql-lora")
    assert adapter is not None and adapter.adapter == "sql-lora"
    assert adapter.backend.key == ("team-a", "llama")
    assert table.route("meta-llama/Llama-3.1-8B-Instruct") is not None
    assert table.route("nope") is None
    table.delete_model_deployment("team-a", "qwen")
    moved = table.route("qwen")
    assert moved is not None and moved.backend.key == ("team-b", "qwen-copy")


def test_a_model_deployment_the_operator_refuses_is_not_routed() -> None:
    table = RouteTable()
    table.put_model_deployment(md_body("bad", engine="no-such-engine"))
    assert table.route("Qwen/Qwen2.5-7B-Instruct") is None
    assert backend_from(md_body("ok")) is not None


def test_only_ready_pods_that_are_not_leaving_take_new_requests() -> None:
    assert endpoint_from(pod("a", "10.0.0.1"), 8000) == Endpoint("a", "10.0.0.1", 8000)
    assert endpoint_from(pod("b", "10.0.0.2", ready=False), 8000) is None
    assert endpoint_from(pod("c", "10.0.0.3", leaving=True), 8000) is None


# --- balancer ---


def test_least_outstanding_work_wins_and_ties_rotate() -> None:
    key = ("ns", "m")
    eps = [Endpoint("p0", "10.0.0.1", 8000), Endpoint("p1", "10.0.0.2", 8000)]
    b = Balancer()
    b.started(key, "p0")
    assert b.pick(key, eps) == eps[1]
    b.engine_reported(key, "p1", 3.0)  # three requests of others
    assert b.pick(key, eps) == eps[0]
    b.finished(key, "p0")
    b.others_outstanding.clear()
    assert {b.pick(key, eps).pod for _ in range(4)} == {"p0", "p1"}  # type: ignore[union-attr]


def test_the_gateways_own_requests_are_not_counted_twice() -> None:
    """The engine counts the gateway's requests too: what it reports beyond the
    gateway's own in flight is the others' work."""
    key = ("ns", "m")
    eps = [Endpoint("p0", "10.0.0.1", 8000), Endpoint("p1", "10.0.0.2", 8000)]
    b = Balancer()
    for _ in range(3):
        b.started(key, "p0")
    b.engine_reported(key, "p0", 3.0)  # the gateway's own three, running or queued
    b.started(key, "p1")
    b.started(key, "p1")
    b.engine_reported(key, "p1", 4.0)  # its own two and two of others
    assert (b.load(key, "p0"), b.load(key, "p1")) == (3.0, 4.0)
    assert b.pick(key, eps) == eps[0]
    b.engine_reported(key, "p0", 1.0)  # a scrape that lags the gateway: never below zero
    assert b.load(key, "p0") == 3.0


def test_adapter_requests_go_only_to_pods_that_loaded_it() -> None:
    key = ("ns", "m")
    eps = [Endpoint("p0", "10.0.0.1", 8000), Endpoint("p1", "10.0.0.2", 8000)]
    b = Balancer()
    assert b.pick(key, eps, adapter="sql") is None
    b.loaded_adapters[(key, "p1")] = frozenset({"base", "sql"})
    assert [b.pick(key, eps, adapter="sql") for _ in range(3)] == [eps[1]] * 3


# --- the proxy, with simulated engines ---


@dataclass
class Running:
    gateway: Gateway
    url: str
    metrics_url: str  # the metrics port: /metrics, /demand
    session: aiohttp.ClientSession

    async def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(self.url + path, data=data, **kw) as r:
            text = await r.text()
            if r.content_type == "text/event-stream":
                return r.status, text, r.headers
            return r.status, (json.loads(text) if text else None), r.headers


async def listening(runner: web.AppRunner) -> str:
    """`runner`'s app served on a free loopback port: its base URL."""
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def running_gateway(config: GatewayConfig, table: RouteTable) -> AsyncIterator[Running]:
    gateway = Gateway(table, config, AccessControl.off(CollectorRegistry()))
    gateway.ready = True
    runner = web.AppRunner(gateway.application(), handler_cancellation=True)
    monitoring = web.AppRunner(gateway.monitoring_application())
    url, metrics_url = await listening(runner), await listening(monitoring)
    async with aiohttp.ClientSession() as session:
        try:
            yield Running(gateway, url, metrics_url, session)
        finally:
            await runner.cleanup()
            await monitoring.cleanup()


def backend(name: str, port: int, ns: str = "team-a") -> Backend:
    return Backend(key=(ns, name), served_name=name, adapters=frozenset(), engine="vllm", port=port)


def held_now(gw: Running, name: str) -> int:
    act = gw.gateway.activity.get(("team-a", name))
    return 0 if act is None else act.held


async def wait_until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)


def test_each_model_reaches_its_own_engine_and_v1_models_lists_them() -> None:
    async def scenario() -> None:
        sims: list[SimulatorHandle] = []
        try:
            table = RouteTable()
            for i, name in enumerate(("alpha", "beta")):
                sim = await start_simulator(
                    "vllm", f"127.0.0.{i + 2}", 0, service_time=0, model=name
                )
                sims.append(sim)
                table.put_backend(backend(name, sim.port), [pod(f"{name}-0", sim.host)])
            async with running_gateway(GatewayConfig(), table) as gw:
                for name, sim in zip(("alpha", "beta"), sims, strict=True):
                    status, body, _ = await gw.post(
                        "/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 2}
                    )
                    assert status == 200, body
                    assert body["model"] == name
                    assert sim.stats.succeeded == 1
                async with gw.session.get(gw.url + "/v1/models") as r:
                    listed = await r.json()
                assert [m["id"] for m in listed["data"]] == ["alpha", "beta"]
                status, body, _ = await gw.post("/v1/chat/completions", {"model": "gamma"})
                assert status == 404
                assert body["error"]["code"] == "model_not_found"
                assert body["error"]["type"] == "invalid_request_error"
                assert "gamma" in body["error"]["message"]
        finally:
            for sim in sims:
                await sim.stop()

    run(scenario)


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"prompt": "no model"}', 400, "missing_model"),
        (b'{"model": 7}', 400, "missing_model"),
        (b'{"model": "m", "prompt": "' + b"x" * 2048 + b'"}', 413, "request_too_large"),
    ],
)
def test_bad_input_gets_an_openai_style_error(payload: bytes, status: int, code: str) -> None:
    async def scenario() -> None:
        async with running_gateway(GatewayConfig(max_body_bytes=1024), RouteTable()) as gw:
            got, body, _ = await gw.post("/v1/completions", payload)
            assert got == status
            assert body["error"]["code"] == code
            assert body["error"]["message"]
            assert gw.gateway.demand() == {"models": []}

    run(scenario)


def test_a_request_for_a_model_at_zero_is_held_then_forwarded_when_a_pod_is_ready() -> None:
    async def scenario() -> None:
        sim = await start_simulator("vllm", "127.0.0.5", 0, service_time=0, model="sleepy")
        try:
            table = RouteTable()
            table.put_backend(backend("sleepy", sim.port))
            async with running_gateway(GatewayConfig(hold_seconds=20), table) as gw:
                request = asyncio.create_task(
                    gw.post("/v1/completions", {"model": "sleepy", "prompt": "hi"})
                )
                await wait_until(lambda: held_now(gw, "sleepy") == 1)
                held = gw.gateway.demand()["models"]
                assert held[0]["held"] == 1 and held[0]["name"] == "sleepy"
                assert not request.done()
                table.put_backend(backend("sleepy", sim.port), [pod("sleepy-0", sim.host)])
                gw.gateway.notify()
                status, body, _ = await request
                assert status == 200, body
                assert gw.gateway.demand()["models"][0]["held"] == 0
        finally:
            await sim.stop()

    run(scenario)


def test_past_the_hold_budget_503_with_retry_after_and_a_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        table = RouteTable()
        table.put_backend(backend("cold", 8000))
        config = GatewayConfig(hold_seconds=0.3, hold_queue_length=1)
        async with running_gateway(config, table) as gw:
            first = asyncio.create_task(gw.post("/v1/completions", {"model": "cold"}))
            await wait_until(lambda: held_now(gw, "cold") == 1)
            status, body, headers = await gw.post("/v1/completions", {"model": "cold"})
            assert status == 503 and body["error"]["code"] == "model_starting"
            assert "already waiting" in body["error"]["message"]
            assert int(headers["Retry-After"]) >= 1
            status, body, headers = await first
            assert status == 503 and "no ready replica after 0.3s" in body["error"]["message"]
            assert "Retry-After" in headers
            assert gw.gateway.activity[("team-a", "cold")].held == 0

    run(scenario)


def test_a_client_that_leaves_while_held_leaves_nothing_in_the_queue() -> None:
    async def scenario() -> None:
        table = RouteTable()
        table.put_backend(backend("cold", 8000))
        async with running_gateway(GatewayConfig(hold_seconds=20), table) as gw:
            leaving = asyncio.create_task(gw.post("/v1/completions", {"model": "cold"}))
            await wait_until(lambda: held_now(gw, "cold") == 1)
            leaving.cancel()
            await asyncio.gather(leaving, return_exceptions=True)
            await wait_until(lambda: held_now(gw, "cold") == 0)
            assert gw.gateway.demand()["models"][0]["held"] == 0

    run(scenario)


def test_a_pod_that_refuses_connections_is_skipped_for_one_that_answers() -> None:
    async def scenario() -> None:
        sim = await start_simulator("vllm", "127.0.0.6", 0, service_time=0, model="m")
        try:
            table = RouteTable()
            # 127.0.0.7 has nothing listening on that port: connection refused.
            table.put_backend(
                backend("m", sim.port), [pod("dead", "127.0.0.7"), pod("live", sim.host)]
            )
            async with running_gateway(GatewayConfig(), table) as gw:
                for _ in range(4):
                    status, body, _ = await gw.post(
                        "/v1/completions", {"model": "m", "prompt": "x"}
                    )
                    assert status == 200, body
                assert sim.stats.succeeded == 4
        finally:
            await sim.stop()

    run(scenario)


def test_engine_errors_pass_through_unchanged() -> None:
    async def scenario() -> None:
        sim = await start_simulator("vllm", "127.0.0.8", 0, service_time=0, model="m")
        try:
            table = RouteTable()
            table.put_backend(backend("m", sim.port), [pod("p", sim.host)])
            async with running_gateway(GatewayConfig(), table) as gw:
                status, body, _ = await gw.post("/v1/completions", {"model": "m", "prompt": 3})
                assert status == 400
                assert "prompt" in body["error"]["message"]
                async with gw.session.get(gw.metrics_url + "/metrics") as r:
                    text = await r.text()
                assert 'openmodel_gateway_requests_total{code="400"' in text
        finally:
            await sim.stop()

    run(scenario)


def test_a_request_refused_by_a_draining_engine_is_retried_on_another_pod() -> None:
    async def scenario() -> None:
        draining = await start_simulator("vllm", "127.0.0.9", 0, service_time=3, model="m")
        other = await start_simulator("vllm", "127.0.0.10", 0, service_time=0, model="m")
        port = draining.port
        other_sim = await start_simulator("vllm", "127.0.0.10", port, service_time=0, model="m")
        await other.stop()
        try:
            table = RouteTable()
            table.put_backend(
                backend("m", port), [pod("draining", draining.host), pod("other", other_sim.host)]
            )
            async with running_gateway(GatewayConfig(), table) as gw:
                # A stream in flight keeps the draining engine up (as vLLM's drain does).
                stream = asyncio.create_task(
                    gw.post("/v1/completions", {"model": "m", "prompt": "x", "stream": True})
                )
                await wait_until(lambda: draining.stats.running == 1)
                stopping = asyncio.create_task(draining.stop(drain_seconds=10))
                await wait_until(lambda: draining.draining)
                # The balancer would pick the draining pod (the other looks busier).
                gw.gateway.balancer.others_outstanding[(("team-a", "m"), "other")] = 50
                status, body, _ = await gw.post("/v1/completions", {"model": "m", "prompt": "y"})
                assert status == 200, body
                assert other_sim.stats.succeeded == 1
                assert draining.stats.refused_while_draining >= 1
                status, text, _ = await stream
                assert status == 200 and text.endswith("data: [DONE]\n\n"), text
                await stopping
                assert draining.stats.aborted_by_stop == 0
        finally:
            await draining.stop()
            await other_sim.stop()

    run(scenario)


# --- the two ports, through the gateway's own serve() ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def answered(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """GET `url` once the server listens (connection refused until then, 20 s at most)."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            async with session.get(url) as r:
                return r.status, await r.text()
        except aiohttp.ClientConnectorError:
            assert asyncio.get_running_loop().time() < deadline, f"{url}: nothing listens"
            await asyncio.sleep(0.05)


def test_metrics_and_demand_are_served_on_the_metrics_port_only(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "models: [{name: m, namespace: team-a, modelDeployment: m, port: 8000, hosts: []}]\n"
    )
    config = parse_config({"gateway": {"auth": {"mode": "off"}}})
    port, metrics_port = free_port(), free_port()
    api, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"

    async def scenario() -> dict[str, tuple[int, str]]:
        stop = asyncio.Event()
        served = asyncio.create_task(
            serve(config, "127.0.0.1", port, routes, stop, metrics_port=metrics_port)
        )
        seen: dict[str, tuple[int, str]] = {}
        try:
            async with aiohttp.ClientSession() as session:
                for base in (api, metrics):
                    for path in ("/healthz", "/readyz", "/v1/models", "/metrics", "/demand"):
                        seen[base + path] = await answered(session, base + path)
        finally:
            stop.set()
            await served
        return seen

    seen = run(scenario)
    # The API port: the probes and the API, and no usage counters or demand.
    assert seen[api + "/healthz"][0] == seen[api + "/readyz"][0] == 200
    assert seen[api + "/v1/models"][0] == 200
    assert seen[api + "/metrics"][0] == seen[api + "/demand"][0] == 404
    # The metrics port: exactly those two.
    status, text = seen[metrics + "/metrics"]
    assert status == 200 and "openmodel_gateway_requests_total" in text
    status, text = seen[metrics + "/demand"]
    assert status == 200
    assert [(m["namespace"], m["name"]) for m in json.loads(text)["models"]] == [("team-a", "m")]
    for path in ("/healthz", "/readyz", "/v1/models"):
        assert seen[metrics + path][0] == 404, path


def test_metrics_port_zero_serves_no_metrics_port(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("models: []\n")
    config = parse_config({"gateway": {"auth": {"mode": "off"}}})
    port = free_port()

    async def scenario() -> int:
        stop = asyncio.Event()
        served = asyncio.create_task(serve(config, "127.0.0.1", port, routes, stop, metrics_port=0))
        try:
            async with aiohttp.ClientSession() as session:
                status, _ = await answered(session, f"http://127.0.0.1:{port}/readyz")
        finally:
            stop.set()
            await served
        return status

    with caplog.at_level(logging.INFO, logger="openmodel.gateway.server"):
        assert run(scenario) == 200
    assert "no metrics port" in caplog.text
    assert "gateway metrics (/metrics, /demand) on" not in caplog.text
