"""Limits and usage: the config, the sliding windows and the limiter's arithmetic on an
injected clock, the reservation estimate, the replica count, the stream usage chunk, and
the gateway in front of a simulated engine (429s, usage counters, stripped chunks)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from openmodel.config import ConfigError, GatewayConfig, parse_config
from openmodel.config.gateway_limits import (
    GatewayLimitsConfig,
    Limits,
    TenantLimits,
    parse_gateway_limits,
)
from openmodel.gateway.auth.access_control import AccessControl
from openmodel.gateway.caller import ANONYMOUS, CALLER_KEY, Caller, CallerKind
from openmodel.gateway.limits.limiter import (
    REASON_CONCURRENT,
    REASON_REQUESTS,
    REASON_TOKENS,
    REASON_TOO_LARGE,
    Admission,
    Limiter,
    Refusal,
)
from openmodel.gateway.limits.replicas import ReplicaCount, ready_replicas
from openmodel.gateway.limits.reservation import reserve_tokens
from openmodel.gateway.limits.window import SlidingWindow
from openmodel.gateway.proxy import Gateway
from openmodel.gateway.routes import Backend, RouteTable
from openmodel.gateway.usage import StreamUsageReader, Usage, UsagePlan
from openmodel.simulator.server import start_simulator

# --- config ---


def test_limits_parse_with_defaults_overrides_and_null_for_unlimited() -> None:
    config = parse_gateway_limits(
        {
            "perIdentity": {"requestsPerMinute": 60, "tokensPerMinute": 1000},
            "perNamespace": {"concurrentRequests": 8},
            "namespaces": {
                "team-a": {
                    "perIdentity": {"tokensPerMinute": 5000},
                    "perNamespace": {"concurrentRequests": None},
                }
            },
            "windowSeconds": 10,
            "defaultMaxTokens": 256,
            "replicas": 3,
        }
    )
    assert config.defaults == TenantLimits(Limits(60, 1000, None), Limits(None, None, 8))
    # Key by key over the defaults: team-a keeps the default requests per minute.
    assert config.for_namespace("team-a") == TenantLimits(Limits(60, 5000, None), Limits())
    assert config.for_namespace("team-b") == config.defaults
    assert (config.window_seconds, config.default_max_tokens, config.replicas) == (10, 256, 3)
    assert config.enabled
    assert parse_gateway_limits({"replicas": "auto"}).replicas is None
    assert not parse_gateway_limits(None).enabled
    whole = parse_config({"gateway": {"limits": {"perIdentity": {"tokensPerMinute": 9}}}})
    assert whole.gateway.limits.defaults.per_identity.tokens_per_minute == 9
    assert GatewayConfig().limits == GatewayLimitsConfig()


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"perIdentity": {"tokensPerMinute": 0}}, "gateway.limits.perIdentity.tokensPerMinute"),
        ({"perNamespace": {"tokensPerMinute": "x"}}, "gateway.limits.perNamespace.tokensPerMinute"),
        ({"perIdentity": {"tokensPerHour": 1}}, "gateway.limits.perIdentity has unknown key"),
        ({"perTeam": {}}, "gateway.limits has unknown key(s) perTeam"),
        ({"namespaces": {"a": {"perIdentity": {"concurrentRequests": True}}}},
         "gateway.limits.namespaces.a.perIdentity.concurrentRequests"),
        ({"namespaces": ["a"]}, "gateway.limits.namespaces must map"),
        ({"windowSeconds": 0}, "gateway.limits.windowSeconds"),
        ({"defaultMaxTokens": -1}, "gateway.limits.defaultMaxTokens"),
        ({"replicas": "two"}, "gateway.limits.replicas"),
        ([], "gateway.limits must be a mapping"),
    ],
)  # fmt: skip
def test_bad_limits_name_the_key(raw: Any, named: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"gateway": {"limits": raw}})
    assert named in str(error.value)


# --- the sliding window ---


def test_the_window_holds_over_every_window_and_gives_back_what_was_not_used() -> None:
    w = SlidingWindow(60)
    first = w.charge(0, 70)
    assert w.wait_for(10, 30, 100) == 0
    w.charge(10, 30)
    # 1 more fits once the first charge leaves the window (at 60).
    assert w.wait_for(20, 1, 100) == pytest.approx(40)
    assert w.wait_for(20, 101, 100) == math.inf
    w.settle(first, 20, now=20)  # used 20 of the 70 reserved
    assert w.used(20) == 50
    assert w.wait_for(20, 50, 100) == 0
    assert w.used(60) == 30  # the first charge left at 60
    assert w.used(70) == 0 and w.empty(70)


def test_more_than_reserved_is_charged_when_learnt_and_a_late_refund_is_ignored() -> None:
    w = SlidingWindow(60)
    early = w.charge(0, 10)
    w.settle(early, 25, now=30)  # 15 more, charged at 30
    assert w.used(30) == 25
    assert w.used(61) == 15  # the original left; the excess stays until 90
    assert w.used(90) == 0
    gone = w.charge(100, 50)
    assert w.used(161) == 0
    w.settle(gone, 0, now=161)  # already out of the window: nothing to give back
    assert w.used(161) == 0


# --- the limiter ---


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def sa(namespace: str, name: str) -> Caller:
    return Caller(CallerKind.SERVICE_ACCOUNT, namespace, name)


UNLIMITED = Limits()


def limiter(
    per_identity: Limits = UNLIMITED,
    per_namespace: Limits = UNLIMITED,
    replicas: int = 1,
    **config: Any,
) -> tuple[Limiter, Clock]:
    clock = Clock()
    cfg = GatewayLimitsConfig(defaults=TenantLimits(per_identity, per_namespace), **config)
    return Limiter(cfg, replicas=lambda: replicas, clock=clock), clock


def admitted(result: Admission | Refusal) -> Admission:
    assert isinstance(result, Admission), result
    return result


def refused(result: Admission | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def test_tokens_per_minute_reserve_settle_and_retry_after() -> None:
    lim, clock = limiter(Limits(tokens_per_minute=1000))
    a = admitted(lim.admit(sa("team-a", "x"), 600))
    refusal = refused(lim.admit(sa("team-a", "x"), 600))
    assert (refusal.reason, refusal.kind, refusal.scope) == (REASON_TOKENS, "tokens", "identity")
    assert refusal.retry_after_s == 60  # only when the 600 leave the window
    # Another identity of the same namespace: its own budget.
    admitted(lim.admit(sa("team-a", "y"), 600)).finish(600)
    clock.now += 5
    a.finish(100)  # the engine used 100: 500 come back at once
    admitted(lim.admit(sa("team-a", "x"), 600)).finish(600)
    clock.now += 10
    refusal = refused(lim.admit(sa("team-a", "x"), 400))
    # 100 (t=0) + 600 (t=5) in the window; 400 fits when the first 100 leave at t=60.
    assert refusal.retry_after_s == 45
    clock.now += 45
    admitted(lim.admit(sa("team-a", "x"), 400))


def test_a_request_larger_than_the_whole_budget_is_refused_without_retry_after() -> None:
    lim, _ = limiter(Limits(tokens_per_minute=1000))
    refusal = refused(lim.admit(ANONYMOUS, 1001))
    assert refusal.reason == REASON_TOO_LARGE and refusal.retry_after_s is None
    assert "max_tokens" in refusal.message


def test_requests_per_minute_and_a_fractional_retry_after_rounds_up() -> None:
    lim, clock = limiter(Limits(requests_per_minute=2))
    for _ in range(2):
        admitted(lim.admit(ANONYMOUS, 0)).finish(0)
        clock.now += 0.4
    refusal = refused(lim.admit(ANONYMOUS, 0))
    assert (refusal.reason, refusal.kind) == (REASON_REQUESTS, "requests")
    assert refusal.retry_after_s == 60  # 59.2 s, rounded up
    clock.now += 59.3  # past the first request's 60 s
    admitted(lim.admit(ANONYMOUS, 0))


def test_concurrent_requests_are_freed_when_the_answer_ends() -> None:
    lim, _ = limiter(Limits(concurrent_requests=2))
    first = admitted(lim.admit(ANONYMOUS, 10))
    admitted(lim.admit(ANONYMOUS, 10))
    refusal = refused(lim.admit(ANONYMOUS, 10))
    assert (refusal.reason, refusal.kind, refusal.retry_after_s) == (
        REASON_CONCURRENT,
        "requests",
        1,
    )
    first.finish(5)
    first.finish(5)  # a second finish frees nothing more
    admitted(lim.admit(ANONYMOUS, 10))
    refused(lim.admit(ANONYMOUS, 10))


def test_the_namespace_budget_is_shared_by_its_identities_and_the_longest_wait_is_named() -> None:
    lim, clock = limiter(
        Limits(tokens_per_minute=1000), Limits(tokens_per_minute=1500, requests_per_minute=100)
    )
    admitted(lim.admit(sa("team-a", "x"), 1000))
    clock.now += 20
    admitted(lim.admit(sa("team-a", "y"), 500))
    clock.now += 1
    refusal = refused(lim.admit(sa("team-a", "x"), 100))
    assert refusal.scope == "identity" and refusal.retry_after_s == 39
    refusal = refused(lim.admit(sa("team-a", "z"), 100))
    assert refusal.scope == "namespace" and refusal.retry_after_s == 39
    admitted(lim.admit(sa("team-b", "z"), 1000))  # another namespace: unaffected
    # A user outside any namespace (or `anonymous`): only its identity's budget.
    admitted(lim.admit(Caller(CallerKind.USER, "", "alice"), 1000))


def test_a_namespace_override_applies_to_its_callers_only() -> None:
    clock = Clock()
    cfg = parse_gateway_limits(
        {
            "perIdentity": {"tokensPerMinute": 100},
            "namespaces": {"team-a": {"perIdentity": {"tokensPerMinute": None}}},
        }
    )
    lim = Limiter(cfg, clock=clock)
    admitted(lim.admit(sa("team-a", "x"), 10_000))
    assert refused(lim.admit(sa("team-b", "x"), 101)).reason == REASON_TOO_LARGE


def test_each_of_n_replicas_enforces_its_share() -> None:
    replicas = ReplicaCount(2)
    clock = Clock()
    cfg = GatewayLimitsConfig(
        defaults=TenantLimits(Limits(tokens_per_minute=1000, requests_per_minute=3,
                                     concurrent_requests=3)),
    )  # fmt: skip
    lim = Limiter(cfg, replicas=lambda: replicas.current, clock=clock)
    admitted(lim.admit(ANONYMOUS, 500))
    # Concurrency 3 // 2 = 1 here; tokens 500 of 1000 / 2.
    assert refused(lim.admit(ANONYMOUS, 1)).reason == REASON_CONCURRENT
    replicas.current = 1
    admitted(lim.admit(ANONYMOUS, 500))
    replicas.current = 4
    # A share below one request is one request (rpm 3 over 4 replicas).
    assert lim.share(1000) == 250
    assert refused(lim.admit(ANONYMOUS, 1)).reason == REASON_CONCURRENT


def test_windows_follow_the_configured_length_and_idle_keys_are_dropped() -> None:
    lim, clock = limiter(Limits(tokens_per_minute=600), window_seconds=10)
    # 600 per minute over a 10 s window: 100 per window.
    assert refused(lim.admit(ANONYMOUS, 101)).reason == REASON_TOO_LARGE
    for i in range(50):
        admitted(lim.admit(sa("ns", f"caller-{i}"), 100)).finish(100)
    assert lim.tracked() == 51  # with `anonymous`, refused but seen
    clock.now += 10.5
    admitted(lim.admit(ANONYMOUS, 100))
    assert lim.tracked() == 1


def test_no_limits_set_admits_everything_and_keeps_no_state() -> None:
    lim, _ = limiter()
    for _ in range(100):
        admitted(lim.admit(sa("ns", "x"), 10**9)).finish(10**9)
    assert lim.tracked() == 0


# --- reservation ---


def test_the_reservation_is_max_tokens_times_choices_plus_a_quarter_of_the_prompt_bytes() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "x" * 100}], "max_tokens": 50}
    prompt = math.ceil(len(json.dumps(chat["messages"], separators=(",", ":"))) / 4)
    assert reserve_tokens("/v1/chat/completions", chat, 1024) == prompt + 50
    newer = {**chat, "max_completion_tokens": 20, "n": 3}
    assert reserve_tokens("/v1/chat/completions", newer, 1024) == prompt + 60
    assert reserve_tokens("/v1/completions", {"prompt": "abcd"}, 1024) == 2 + 1024  # '"abcd"'
    listed = {"prompt": ["ab", "cd"], "max_tokens": 10}
    assert reserve_tokens("/v1/completions", listed, 1024) == 3 + 20
    assert reserve_tokens("/v1/embeddings", {"input": "é" * 6, "max_tokens": 9}, 1024) == 4
    assert reserve_tokens("/v1/completions", {"max_tokens": "lots"}, 7) == 7


# --- replicas ---


def gateway_pod(ready: bool = True, leaving: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "gw"}
    if leaving:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    status = "True" if ready else "False"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": status}]}}


def test_replicas_are_the_ready_gateway_pods_and_at_least_one() -> None:
    pods = [gateway_pod(), gateway_pod(), gateway_pod(ready=False), gateway_pod(leaving=True)]
    assert ready_replicas(pods) == 2
    assert ready_replicas([]) == 1


def test_the_count_follows_the_listing_and_keeps_the_last_on_failure() -> None:
    answers: list[Any] = [[gateway_pod()] * 3, RuntimeError("api down"), [gateway_pod()]]
    count = ReplicaCount()
    before_each_list: list[int] = []

    def list_pods() -> list[dict[str, Any]]:
        before_each_list.append(count.current)
        answer = answers.pop(0) if answers else [gateway_pod()]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    async def scenario() -> None:
        task = asyncio.create_task(count.follow(list_pods, poll_seconds=0))
        while len(before_each_list) < 4:
            await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert before_each_list[:4] == [1, 3, 3, 1]


# --- the stream usage chunk ---


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


CONTENT = [sse({"id": "c", "choices": [{"index": 0, "text": f" t{i}"}]}) for i in range(3)]
USAGE_CHUNK = sse({"id": "c", "choices": [], "usage": {"prompt_tokens": 7,
                   "total_tokens": 10, "completion_tokens": 3}})  # fmt: skip
DONE = b"data: [DONE]\n\n"


def test_the_gateway_asks_for_usage_only_on_streams_the_client_did_not() -> None:
    body = {"model": "m", "prompt": "p", "stream": True, "stream_options": {"other": 1}}
    plan = UsagePlan.of("/v1/completions", body)
    assert plan.injects
    sent = json.loads(plan.forwarded_body(b"ignored", body))
    assert sent["stream_options"] == {"other": 1, "include_usage": True}
    assert sent["prompt"] == "p"
    asked = {**body, "stream_options": {"include_usage": True}}
    assert not UsagePlan.of("/v1/completions", asked).injects
    raw = json.dumps(asked).encode()
    assert UsagePlan.of("/v1/completions", asked).forwarded_body(raw, asked) is raw
    plain = {"model": "m", "prompt": "p"}
    assert UsagePlan.of("/v1/completions", plain).forwarded_body(b"x", plain) == b"x"
    assert not UsagePlan.of("/v1/embeddings", {"stream": True}).streamed


@pytest.mark.parametrize("strip", [True, False])
@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_the_usage_chunk_is_read_and_dropped_only_when_the_client_did_not_ask(
    strip: bool, piece: int
) -> None:
    stream = b"".join(CONTENT) + USAGE_CHUNK + DONE
    reader = StreamUsageReader(strip=strip)
    out = b"".join(reader.feed(stream[i : i + piece]) for i in range(0, len(stream), piece))
    out += reader.end()
    assert reader.usage == Usage(7, 3)
    assert reader.events == 3
    expected = b"".join(CONTENT) + (b"" if strip else USAGE_CHUNK) + DONE
    assert out == expected


def test_the_usage_request_is_added_without_re_encoding_the_body() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "é"}], "stream": True}
    raw = json.dumps(body, ensure_ascii=True).encode() + b" \n"
    sent = UsagePlan.of("/v1/chat/completions", body).forwarded_body(raw, body)
    assert json.loads(sent) == {**body, "stream_options": {"include_usage": True}}
    assert sent.startswith(raw.rstrip()[:-1])  # the client's bytes, as they came


@pytest.mark.parametrize(
    "events",
    [
        [b"data: a\n\n", b": ping\n\n", b"data: b\ndata: c\n\n", b"\n\n", b"data: [DONE]\n\n"],
        [b"event: x\ndata: a\n\n", b"data:\n\n", b"data:  [DONE] \n\n", b"data: tail"],
    ],
)
def test_any_cut_of_a_stream_is_forwarded_and_counted_as_one_event_at_a_time(
    events: list[bytes],
) -> None:
    stream = b"".join(events)
    one_by_one = StreamUsageReader(strip=True)
    expected = b"".join(one_by_one.feed(e) for e in events) + one_by_one.end()
    assert expected == stream
    for cut in range(1, len(stream)):
        for piece in (cut, len(stream) - cut):
            reader = StreamUsageReader(strip=True)
            out = b"".join(reader.feed(stream[i : i + piece]) for i in range(0, len(stream), piece))
            assert out + reader.end() == stream
            assert reader.events == one_by_one.events, (piece, reader.events)


def test_crlf_events_and_a_cut_stream_pass_through() -> None:
    reader = StreamUsageReader(strip=True)
    crlf = CONTENT[0].replace(b"\n\n", b"\r\n\r\n")
    assert reader.feed(crlf + b'data: {"partial') == crlf
    assert reader.end() == b'data: {"partial'  # the engine cut it: forwarded as it came
    assert reader.usage is None and reader.events == 2


# --- the gateway, in front of a simulated engine ---


@dataclass
class Running:
    gateway: Gateway
    url: str
    session: aiohttp.ClientSession

    async def post(self, path: str, body: Any, caller: str = "") -> tuple[int, Any, Any]:
        headers = {"X-Test-Caller": caller} if caller else {}
        async with self.session.post(self.url + path, json=body, headers=headers) as r:
            text = await r.text()
            if r.content_type == "text/event-stream":
                return r.status, text, r.headers
            return r.status, (json.loads(text) if text else None), r.headers

    async def metric(self, name: str, **labels: str) -> float:
        # What /metrics (on the metrics port, not started here) would serve.
        text = generate_latest(self.gateway.metrics.registry).decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(
                f'{{{k}="{v}"' in line or f',{k}="{v}"' in line for k, v in labels.items()
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total


@web.middleware
async def caller_from_header(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Stands in for authentication: `X-Test-Caller: namespace/name` is that ServiceAccount."""
    named = request.headers.get("X-Test-Caller")
    if named:
        namespace, name = named.split("/")
        request[CALLER_KEY] = sa(namespace, name)
    return await handler(request)


@asynccontextmanager
async def gateway_with_engine(
    limits: dict[str, Any] | None = None, service_time: float = 0.0
) -> AsyncIterator[Running]:
    sim = await start_simulator("vllm", "127.0.0.1", 0, slots=16, service_time=service_time,
                                model="m")  # fmt: skip
    table = RouteTable()
    table.put_backend(
        Backend(key=("models", "m"), served_name="m", adapters=frozenset(), engine="vllm",
                port=sim.port),
        [{"metadata": {"name": "m-0"}, "status": {"phase": "Running", "podIP": "127.0.0.1",
          "conditions": [{"type": "Ready", "status": "True"}]}}],
    )  # fmt: skip
    config = parse_config({"gateway": {"limits": limits}} if limits else {}).gateway
    gateway = Gateway(table, config, AccessControl.off(CollectorRegistry()))
    gateway.ready = True
    app = gateway.application()
    app.middlewares.append(caller_from_header)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(gateway, f"http://127.0.0.1:{sock.getsockname()[1]}", session)
    finally:
        await runner.cleanup()
        await sim.stop()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_over_its_tokens_per_minute_a_caller_gets_429_and_others_do_not() -> None:
    limits = {"perIdentity": {"tokensPerMinute": 200}, "perNamespace": {"tokensPerMinute": 300}}

    async def scenario() -> None:
        async with gateway_with_engine(limits) as gw:
            body = {"model": "m", "messages": [{"role": "user", "content": "a b c"}],
                    "max_tokens": 90}  # fmt: skip
            status, answer, _ = await gw.post("/v1/chat/completions", body, "team-a/x")
            assert status == 200, answer
            # The engine used 3 + 90: the reservation (~100) was settled to 93.
            status, answer, _ = await gw.post("/v1/chat/completions", body, "team-a/x")
            assert status == 200, answer
            status, answer, headers = await gw.post("/v1/chat/completions", body, "team-a/x")
            assert status == 429
            assert answer["error"]["code"] == "rate_limit_exceeded"
            assert answer["error"]["type"] == "tokens"
            assert 55 <= int(headers["Retry-After"]) <= 60
            # Another identity of team-a: its own budget, until team-a's 300 run out.
            status, answer, _ = await gw.post("/v1/chat/completions", body, "team-a/y")
            assert status == 200, answer
            status, answer, _ = await gw.post("/v1/chat/completions", body, "team-a/y")
            assert status == 429 and "namespace 'team-a'" in answer["error"]["message"]
            # Another namespace: unaffected.
            status, answer, _ = await gw.post("/v1/chat/completions", body, "team-b/x")
            assert status == 200, answer
            labels = {"identity": "system:serviceaccount:team-a:x", "caller_namespace": "team-a"}
            assert (
                await gw.metric(
                    "openmodel_gateway_rate_limited_requests_total",
                    reason="tokens_per_minute",
                    scope="identity",
                    **labels,
                )
                == 1
            )
            assert await gw.metric("openmodel_gateway_usage_requests_total", **labels) == 2
            assert (
                await gw.metric(
                    "openmodel_gateway_usage_completion_tokens_total",
                    model="m",
                    model_deployment="m",
                    **labels,
                )
                == 180
            )
            assert await gw.metric("openmodel_gateway_usage_prompt_tokens_total", **labels) == 6

    run(scenario)


def test_usage_counts_every_kind_of_answer_and_the_stream_looks_as_asked() -> None:
    async def scenario() -> None:
        async with gateway_with_engine() as gw:
            chat = {"model": "m", "messages": [{"role": "user", "content": "one two"}],
                    "max_tokens": 3}  # fmt: skip
            status, answer, _ = await gw.post("/v1/chat/completions", chat)
            assert status == 200 and answer["usage"]["completion_tokens"] == 3
            streamed = {"model": "m", "prompt": "one two three", "max_tokens": 4, "stream": True}
            status, text, _ = await gw.post("/v1/completions", streamed)
            assert status == 200 and text.endswith("data: [DONE]\n\n")
            assert '"usage"' not in text  # the chunk the gateway asked for was taken out
            assert text.count("data: ") == 5  # four tokens and [DONE]
            asked = {**streamed, "stream_options": {"include_usage": True}}
            status, text, _ = await gw.post("/v1/completions", asked)
            events = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
            assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 4
            # A generative model serves no embeddings: refused before the engine, not
            # counted (embeddings' usage: test_gateway_tasks.py).
            status, _, _ = await gw.post("/v1/embeddings", {"model": "m", "input": "a b"})
            assert status == 400
            anonymous = {"identity": "anonymous", "caller_namespace": "", "namespace": "models"}
            assert await gw.metric("openmodel_gateway_usage_requests_total", **anonymous) == 3
            assert await gw.metric("openmodel_gateway_usage_prompt_tokens_total",
                                   **anonymous) == 2 + 3 + 3  # fmt: skip
            assert await gw.metric("openmodel_gateway_usage_completion_tokens_total",
                                   **anonymous) == 3 + 4 + 4  # fmt: skip

    run(scenario)


def test_a_stream_the_client_leaves_settles_what_was_streamed() -> None:
    limits = {"perIdentity": {"tokensPerMinute": 1000, "concurrentRequests": 1}}

    async def scenario() -> None:
        async with gateway_with_engine(limits, service_time=3.0) as gw:
            body = {"model": "m", "prompt": "abcdefgh", "max_tokens": 500, "stream": True}
            async with gw.session.post(gw.url + "/v1/completions", json=body) as r:
                assert r.status == 200
                await r.content.readline()  # the first event, then leave
            labels = {"identity": "anonymous"}
            metric = "openmodel_gateway_usage_estimated_tokens_total"
            while await gw.metric(metric, **labels) == 0:
                await asyncio.sleep(0.01)
            # The prompt estimate (3) plus the events streamed: below the 503 reserved.
            estimated = await gw.metric(metric, **labels)
            assert 4 <= estimated <= 97
            assert await gw.metric("openmodel_gateway_usage_completion_tokens_total") == 0
            # The concurrency slot is free and the unused reservation came back.
            status, answer, _ = await gw.post(
                "/v1/completions", {**body, "stream": False, "max_tokens": 900}
            )
            assert status == 200, answer

    run(scenario)
