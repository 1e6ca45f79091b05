"""External models in the gateway: the pure parts (model rewriting in JSON and in SSE,
the upstream's headers, the overflow decision, the routing table across kinds, the
private namespaces), and a gateway in process in front of a small upstream of ours that
answers with each fault shape (the e2e tests use a real vLLM for the must-show)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from openmodel.api import Overflow
from openmodel.config import GatewayConfig
from openmodel.external_model import parse_external_model
from openmodel.gateway.auth.access_control import AccessControl
from openmodel.gateway.external.forward import ExternalForwarder
from openmodel.gateway.external.keys import ExternalKeys, KeyUnavailable
from openmodel.gateway.external.overflow import QUEUE_DEPTH, STARTING, overflow_reason
from openmodel.gateway.external.privacy import PrivateNamespaces
from openmodel.gateway.external.rewrite import (
    ModelRewriter,
    rewrite_event,
    rewrite_json,
    upstream_body,
    upstream_headers,
)
from openmodel.gateway.metrics import GatewayMetrics
from openmodel.gateway.proxy import Gateway
from openmodel.gateway.routes import Backend, RouteTable, allowed_overflow, backend_from
from openmodel.simulator.server import start_simulator

T = TypeVar("T")
KEY = "sk-unit-0123456789abcdef"


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout=30)

    return asyncio.run(bounded())


def xm_body(
    name: str,
    base_url: str = "https://api.example.test/v1",
    ns: str = "platform",
    created: str = "2026-01-01T00:00:00Z",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ExternalModel",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created, "uid": "u1"},
        "spec": {
            "baseURL": base_url,
            "upstreamModel": spec.pop("upstreamModel", "up-" + name),
            "apiKeySecretRef": {"name": "xm-key", "key": "key"},
            **spec,
        },
    }


def md_body(
    name: str,
    ns: str = "team-a",
    created: str = "2026-02-01T00:00:00Z",
    overflow: dict[str, Any] | None = None,
    verdict: str | None = None,
    verdict_generation: int = 3,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "gpu": {"type": "nvidia-l4"},
        "servedModelName": name,
    }
    if overflow is not None:
        spec["gateway"] = {"overflow": overflow}
    body: dict[str, Any] = {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "creationTimestamp": created,
            "generation": 3,
        },
        "spec": spec,
    }
    if verdict is not None:
        body["status"] = {
            "conditions": [
                {"type": "Overflow", "status": verdict, "observedGeneration": verdict_generation}
            ]
        }
    return body


# --- pure: rewriting ---


def test_a_json_answer_carries_the_clients_model_name() -> None:
    answer = json.dumps({"id": "x", "model": "gpt-upstream", "choices": []}).encode()
    assert json.loads(rewrite_json(answer, "mine"))["model"] == "mine"
    assert rewrite_json(b'{"error": {"message": "m"}}', "mine") == b'{"error": {"message": "m"}}'
    assert rewrite_json(b"not json", "mine") == b"not json"


def test_every_sse_event_carries_the_clients_model_however_the_stream_is_cut() -> None:
    events = [
        b'data: {"id":"1","model":"gpt-upstream","choices":[{"delta":{"content":"a"}}]}\n\n',
        b'data: {"id":"2","model":"gpt-upstream","choices":[{"delta":{"content":"b"}}]}\r\n\r\n',
        b": keep-alive\n\n",
        b"data: [DONE]\n\n",
    ]
    stream = b"".join(events)
    for cut in range(1, len(stream)):
        rewriter = ModelRewriter("mine")
        out = rewriter.feed(stream[:cut]) + rewriter.feed(stream[cut:]) + rewriter.end()
        assert b"gpt-upstream" not in out
        assert out.count(b'"model": "mine"') == 2
        assert out.endswith(b"data: [DONE]\n\n") and b": keep-alive\n\n" in out
    assert rewrite_event(b"data: [DONE]\n\n", "mine") == b"data: [DONE]\n\n"


def test_the_upstream_gets_its_model_name_the_key_and_the_declared_headers_only() -> None:
    bearer = parse_external_model(xm_body("a", headers=[{"name": "X-Org", "value": "o1"}]))
    assert upstream_headers(bearer, KEY)["Authorization"] == f"Bearer {KEY}"
    assert upstream_headers(bearer, KEY)["X-Org"] == "o1"
    custom = parse_external_model(xm_body("b", apiKeyHeader="api-key"))
    headers = upstream_headers(custom, KEY)
    assert headers["api-key"] == KEY and "Authorization" not in headers
    assert "Authorization" not in upstream_headers(bearer, None)
    sent = json.loads(upstream_body(b'{"model":"mine","stream":true}', "up-a"))
    assert sent == {"model": "up-a", "stream": True}


# --- pure: overflow ---


def test_the_overflow_decision() -> None:
    starting = Overflow(model="x")
    deep = Overflow(model="x", when_starting=False, queue_depth_above=4)
    assert overflow_reason(None, 0, 10) is None
    assert overflow_reason(starting, 0, 0) == STARTING
    assert overflow_reason(starting, 1, 100) is None  # no depth set: the replica takes it
    assert overflow_reason(deep, 0, 100) is None  # whenStarting off: held
    assert overflow_reason(deep, 2, 8) is None  # 4 per replica is not above 4
    assert overflow_reason(deep, 2, 9) == QUEUE_DEPTH


def test_overflow_only_when_the_operator_allowed_it_for_this_generation() -> None:
    spec = {"model": "ext"}
    assert backend_from(md_body("m", overflow=spec)).overflow is None  # type: ignore[union-attr]
    allowed = backend_from(md_body("m", overflow=spec, verdict="True"))
    assert allowed is not None and allowed.overflow == Overflow(model="ext")
    stale = md_body("m", overflow=spec, verdict="True", verdict_generation=2)
    assert allowed_overflow(stale, Overflow(model="ext")) is None
    refused = backend_from(md_body("m", overflow=spec, verdict="False"))
    assert refused is not None and refused.overflow is None


def test_a_name_goes_to_the_oldest_claimant_whatever_its_kind() -> None:
    table = RouteTable()
    table.put_model_deployment(md_body("shared", created="2026-02-01T00:00:00Z"))
    table.put_external_model(
        xm_body("ext", servedModelName="shared", created="2026-03-01T00:00:00Z")
    )
    first = table.route("shared")
    assert first is not None and first.external is None
    assert [r.resource for r in table.routes("shared")] == ["modeldeployments", "externalmodels"]
    table.put_external_model(
        xm_body("old", servedModelName="shared", created="2025-01-01T00:00:00Z")
    )
    oldest = table.route("shared")
    assert oldest is not None and oldest.external is not None and oldest.external.name == "old"
    assert [r.backend.key for r in table.external_routes("shared")] == [
        ("platform", "old"),
        ("platform", "ext"),
    ]
    table.put_external_model(xm_body("bad", baseURL="ftp://nope"))  # invalid: not routed
    assert table.route("bad") is None
    table.delete_external_model("platform", "old")
    assert [r.backend.key for r in table.external_routes("shared")] == [("platform", "ext")]


def test_until_listed_every_namespace_is_private() -> None:
    privacy = PrivateNamespaces()
    assert privacy.is_private("anything")
    privacy.replace([{"metadata": {"name": "vault", "labels": {"openmodel.dev/data": "private"}}}])
    assert privacy.is_private("vault") and not privacy.is_private("team-a")
    privacy.put({"metadata": {"name": "vault", "labels": {}}})
    assert not privacy.is_private("vault")


# --- the gateway in process, in front of an upstream of each fault shape ---


@dataclass
class Upstream:
    url: str
    seen: list[dict[str, Any]]  # (headers, body) of each request


async def upstream_app(seen: list[dict[str, Any]]) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"headers": dict(request.headers), "body": body})
        shape = body["model"]
        if shape == "slow":
            await asyncio.sleep(10)
        if shape == "denied":
            return web.json_response(
                {"error": {"message": f"Incorrect API key {KEY[:8]}"}}, status=401
            )
        if shape == "limited":
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "7"}
            )
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "c1",
                    "model": shape,
                    "usage": usage,
                    "choices": [{"message": {"content": "hi"}}],
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("a", "b"):
            event = {"id": "c1", "model": shape, "choices": [{"delta": {"content": word}}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        if shape == "cut":
            assert request.transport is not None
            request.transport.close()
            return response
        if (body.get("stream_options") or {}).get("include_usage"):
            last = {"id": "c1", "model": shape, "choices": [], "usage": usage}
            await response.write(f"data: {json.dumps(last)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def listening(runner: web.AppRunner) -> str:
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def read_key(namespace: str, name: str) -> dict[str, str]:
    assert (namespace, name) == ("platform", "xm-key")
    return {"key": base64.b64encode(KEY.encode()).decode()}


@dataclass
class Running:
    gateway: Gateway
    url: str
    upstream: Upstream
    session: aiohttp.ClientSession

    async def chat(self, model: str, stream: bool = False) -> tuple[int, str, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        async with self.session.post(self.url + "/v1/chat/completions", json=body) as r:
            return r.status, await r.text(), r.headers


@asynccontextmanager
async def running(private: set[str] | None = None, **md: Any) -> AsyncIterator[Running]:
    seen: list[dict[str, Any]] = []
    up_runner = web.AppRunner(await upstream_app(seen))
    up_url = await listening(up_runner)
    table = RouteTable()
    for shape in ("ok", "slow", "denied", "limited", "cut"):
        table.put_external_model(
            xm_body(
                shape,
                f"{up_url}/v1",
                upstreamModel=shape,
                timeoutSeconds=1,
                price={"promptPerMillionTokens": 1e6, "completionPerMillionTokens": 2e6},
            )
        )
    if md:
        table.put_model_deployment(md_body(**md))
    metrics = GatewayMetrics()
    gateway = Gateway(
        table,
        GatewayConfig(hold_seconds=2.0),
        AccessControl.off(CollectorRegistry()),
        metrics,
        external=ExternalForwarder(ExternalKeys(read_key), metrics),
        privacy=PrivateNamespaces(names=private or set(), synced=True),
    )
    gateway.ready = True
    runner = web.AppRunner(gateway.application(), handler_cancellation=True)
    url = await listening(runner)
    async with aiohttp.ClientSession() as session:
        try:
            yield Running(gateway, url, Upstream(up_url, seen), session)
        finally:
            await runner.cleanup()
            await up_runner.cleanup()


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    value = gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_an_external_model_answers_with_the_clients_name_marked_and_priced() -> None:
    async def scenario() -> None:
        async with running() as gw:
            status, text, headers = await gw.chat("ok")
            assert status == 200 and json.loads(text)["model"] == "ok"
            assert headers["x-openmodel-route"] == "external"
            sent = gw.upstream.seen[-1]
            assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
            status, text, _ = await gw.chat("ok", stream=True)
            assert status == 200 and '"usage"' not in text  # the client did not ask for it
            assert text.endswith("data: [DONE]\n\n")
            assert gw.upstream.seen[-1]["body"]["stream_options"] == {"include_usage": True}
            # 5 prompt tokens at 1 per token and 2 completion tokens at 2, twice.
            cost = metric(
                gw.gateway,
                "openmodel_gateway_external_cost_total",
                namespace="platform",
                external_model="ok",
            )
            assert cost == pytest.approx(18.0)
            usage = metric(
                gw.gateway,
                "openmodel_gateway_usage_prompt_tokens_total",
                namespace="platform",
                model_deployment="ok",
                model="ok",
                caller_namespace="",
                identity="anonymous",
            )
            assert usage == 10

    run(scenario)


def test_faults_timeout_refused_key_rate_limit_and_a_cut_stream() -> None:
    async def scenario() -> None:
        async with running() as gw:
            status, text, _ = await gw.chat("slow")
            assert status == 504 and json.loads(text)["error"]["code"] == "upstream_timeout"
            assert "platform/slow" in text
            status, text, headers = await gw.chat("denied")
            error = json.loads(text)["error"]
            assert status == 502 and error["code"] == "external_auth_failed"
            assert "platform/denied" in error["message"] and "xm-key" in error["message"]
            assert KEY[:8] not in text  # the upstream's body is not passed on
            assert headers["x-openmodel-route"] == "external"
            status, text, headers = await gw.chat("limited")
            assert status == 429 and headers["Retry-After"] == "7"
            with pytest.raises(aiohttp.ClientPayloadError):
                await gw.chat("cut", stream=True)
            await asyncio.sleep(0)
            for reason in ("upstream_timeout", "external_auth_failed", "upstream_cut"):
                model = {
                    "upstream_timeout": "slow",
                    "external_auth_failed": "denied",
                    "upstream_cut": "cut",
                }[reason]
                assert (
                    metric(gw.gateway, "openmodel_gateway_errors_total", model=model, reason=reason)
                    == 1
                ), reason

    run(scenario)


def test_a_private_namespace_never_reaches_an_external_model() -> None:
    async def scenario() -> None:
        # Auth off: the caller is anonymous, of namespace "": label that one private.
        async with running(private={""}) as gw:
            status, text, _ = await gw.chat("ok")
            assert status == 403 and json.loads(text)["error"]["code"] == "data_must_stay_in"
            assert gw.upstream.seen == []

    run(scenario)


def test_a_model_at_zero_overflows_counts_as_demand_and_is_marked() -> None:
    async def scenario() -> None:
        async with running(name="qwen", overflow={"model": "ok"}, verdict="True") as gw:
            status, text, headers = await gw.chat("qwen")
            assert status == 200 and json.loads(text)["model"] == "qwen"
            assert headers["x-openmodel-overflow"] == "ok"
            assert gw.upstream.seen[-1]["body"]["model"] == "ok"
            demand = gw.gateway.demand()["models"]
            entry = next(m for m in demand if m["name"] == "qwen")
            assert entry["held"] == 1
            assert (
                metric(
                    gw.gateway,
                    "openmodel_gateway_overflow_requests_total",
                    namespace="team-a",
                    model_deployment="qwen",
                    model="qwen",
                    external_model="ok",
                    reason="starting",
                )
                == 1
            )

    run(scenario)


def test_without_the_operators_verdict_or_in_a_private_namespace_the_request_is_held() -> None:
    async def scenario() -> None:
        for private, verdict in ((set(), None), ({"team-a"}, "True")):
            async with running(
                private, name="qwen", overflow={"model": "ok"}, verdict=verdict
            ) as gw:
                status, text, _ = await gw.chat("qwen")
                assert status == 503 and json.loads(text)["error"]["code"] == "model_starting"
                assert gw.upstream.seen == []

    run(scenario)


def test_a_deep_queue_overflows_and_a_short_one_stays_on_the_replica() -> None:
    async def scenario() -> None:
        engine = await start_simulator("vllm", "127.0.0.5", 0, service_time=0, model="deep")
        try:
            async with running() as gw:
                key = ("team-a", "deep")
                policy = Overflow(model="ok", when_starting=False, queue_depth_above=2)
                backend = Backend(
                    key=key,
                    served_name="deep",
                    adapters=frozenset(),
                    engine="vllm",
                    port=engine.port,
                    overflow=policy,
                )
                ready = {
                    "metadata": {"name": "deep-0"},
                    "status": {
                        "phase": "Running",
                        "podIP": engine.host,
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }
                gw.gateway.table.put_backend(backend, [ready])
                gw.gateway.balancer.engine_waiting[(key, "deep-0")] = 3.0
                status, text, headers = await gw.chat("deep")
                assert status == 200 and headers["x-openmodel-overflow"] == "ok"
                assert json.loads(text)["model"] == "deep"
                assert (
                    metric(
                        gw.gateway,
                        "openmodel_gateway_overflow_requests_total",
                        namespace="team-a",
                        model_deployment="deep",
                        model="deep",
                        external_model="ok",
                        reason="queue_depth",
                    )
                    == 1
                )
                gw.gateway.balancer.engine_waiting[(key, "deep-0")] = 2.0
                status, text, headers = await gw.chat("deep")
                assert status == 200 and "x-openmodel-overflow" not in headers
                assert len(gw.upstream.seen) == 1
        finally:
            await engine.stop()

    run(scenario)


def test_the_key_is_read_once_kept_a_minute_and_read_again_after_a_refusal() -> None:
    async def scenario() -> None:
        reads: list[tuple[str, str]] = []
        now = [0.0]

        def read(namespace: str, name: str) -> dict[str, str]:
            reads.append((namespace, name))
            return read_key(namespace, name)

        keys = ExternalKeys(read, clock=lambda: now[0])
        external = parse_external_model(xm_body("a"))
        got = await asyncio.gather(*(keys.key(external) for _ in range(5)))
        assert got == [KEY] * 5 and len(reads) == 1  # concurrent requests share one read
        now[0] = 59.0
        await keys.key(external)
        assert len(reads) == 1
        keys.forget(external)  # the upstream refused it: maybe rotated
        await keys.key(external)
        assert len(reads) == 2
        now[0] = 59.0 + 61.0
        await keys.key(external)
        assert len(reads) == 3

    run(scenario)


def test_an_unreadable_key_fails_closed_naming_the_secret_never_a_value() -> None:
    async def scenario() -> None:
        def forbidden(namespace: str, name: str) -> dict[str, str]:
            raise PermissionError("forbidden")

        def wrong_key(namespace: str, name: str) -> dict[str, str]:
            return {"other": base64.b64encode(KEY.encode()).decode()}

        external = parse_external_model(xm_body("a"))
        for reader in (forbidden, wrong_key):
            with pytest.raises(KeyUnavailable) as raised:
                await ExternalKeys(reader).key(external)
            message = str(raised.value)
            assert "platform/a" in message and "xm-key" in message and KEY not in message

    run(scenario)
