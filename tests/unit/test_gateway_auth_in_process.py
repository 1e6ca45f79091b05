"""The gateway's door, module by module, without a cluster: header parsing (hypothesis),
the bounded caches, TokenReview and SubjectAccessReview caching with an injected clock,
API keys, and the modes through the aiohttp middleware. The real API server's answers
are tests/e2e/test_gateway_auth.py's."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import socket
import ssl
import string
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from openmodel.config import AuthMode, ConfigError, GatewayAuthConfig, parse_config
from openmodel.gateway.auth.access_control import AccessControl
from openmodel.gateway.auth.access_review import AccessQuestion, AccessReviewer
from openmodel.gateway.auth.api_keys import (
    ApiKeyIndex,
    api_key_object,
    key_digest,
    new_key,
)
from openmodel.gateway.auth.credentials import (
    MAX_CREDENTIAL_CHARS,
    ApiKeyCredential,
    BearerToken,
    Malformed,
    parse_authorization,
)
from openmodel.gateway.auth.decision_cache import DecisionCache
from openmodel.gateway.auth.token_review import (
    ReviewUnavailable,
    TokenReviewer,
    TokenVerdict,
    caller_from,
)
from openmodel.gateway.caller import CALLER_KEY, Caller, CallerKind, caller_of
from openmodel.gateway.routes import Backend, Route, RouteTable
from openmodel.gateway.server import serve

from harness.certs import create_pki

REPO = Path(__file__).resolve().parents[2]


def b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def jwt(sub: str = "x", exp: float | None = None) -> str:
    claims: dict[str, Any] = {"sub": sub}
    if exp is not None:
        claims["exp"] = exp
    return f"{b64({'alg': 'RS256'})}.{b64(claims)}.{b64(sub)}sig"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the platform config ---


def test_auth_is_enforced_unless_the_config_says_otherwise() -> None:
    assert parse_config({}).gateway.auth.mode is AuthMode.ENFORCE
    assert parse_config({"gateway": {"auth": {"mode": "audit"}}}).gateway.auth.mode is (
        AuthMode.AUDIT
    )
    tls = parse_config({"gateway": {"tls": {"certFile": "/c", "keyFile": "/k"}}}).gateway.tls
    assert tls.enabled and tls.cert_file == "/c"


@pytest.mark.parametrize(
    "auth",
    [
        {"mode": "on"},
        {"tokenCacheSeconds": 0},
        {"maxConcurrentReviews": 1.5},
        {"audiences": "x"},
        {"cache": 1},
    ],
)
def test_bad_auth_settings_are_refused_naming_the_key(auth: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.auth"):
        parse_config({"gateway": {"auth": auth}})


def test_tls_needs_both_files() -> None:
    with pytest.raises(ConfigError, match="both certFile and keyFile"):
        parse_config({"gateway": {"tls": {"certFile": "/c"}}})


# --- the Authorization header ---


def test_the_two_credential_shapes_and_their_refusals() -> None:
    token = jwt(exp=2e9)
    assert parse_authorization(f"Bearer {token}") == BearerToken(token, 2e9)
    assert parse_authorization(f"bearer   {token} ") == BearerToken(token, 2e9)
    key_id, key, _ = new_key()
    parsed = parse_authorization(f"Bearer {key}")
    assert isinstance(parsed, ApiKeyCredential) and parsed.key_id == key_id
    assert parse_authorization(None) is None
    for bad in [
        "Basic dXNlcjpwdw==",
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b.c",  # three segments, not a JWT header
        "Bearer om_short_secret",
        "Bearer " + "A" * (MAX_CREDENTIAL_CHARS + 100),
        token,  # no scheme
    ]:
        assert isinstance(parse_authorization(bad), Malformed), bad


def _reason(header: str) -> str:
    parsed = parse_authorization(header)
    assert isinstance(parsed, Malformed), header
    return parsed.reason


# Every refusal's text, from one header of each kind: fixed sentences, none built from
# what the caller sent.
REFUSALS = {
    _reason(h)
    for h in (
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer " + "A" * (MAX_CREDENTIAL_CHARS + 100),
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Bearer eyJhbGciOiJSUzI1NiJ9.bm90anNvbg.c2ln",
        "Bearer om_x",
    )
}


@settings(max_examples=400)
@given(st.text(max_size=300))
def test_any_header_gives_a_verdict_and_never_echoes_it(header: str) -> None:
    parsed = parse_authorization(header)
    assert parsed is None or isinstance(parsed, BearerToken | ApiKeyCredential | Malformed)
    if isinstance(parsed, Malformed):
        assert parsed.reason in REFUSALS, parsed.reason


@settings(max_examples=200)
@given(st.text(alphabet=string.ascii_letters + string.digits + "-_.=", min_size=1, max_size=400))
def test_any_bearer_token_gives_a_verdict(token: str) -> None:
    parsed = parse_authorization(f"Bearer {token}")
    assert isinstance(parsed, BearerToken | ApiKeyCredential | Malformed)


# --- the bounded cache ---


def test_entries_expire_at_their_deadline_and_the_least_recent_goes_first() -> None:
    clock = Clock()
    cache: DecisionCache[str, int] = DecisionCache(2, clock)
    cache.put("a", 1, 10)
    cache.put("b", 2, 5)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3, 10)
    assert cache.get("b") is None and len(cache) == 2
    clock.now += 10
    assert cache.get("a") is None and cache.get("c") is None
    cache.put("d", 4, 0)
    assert cache.get("d") is None


# --- TokenReview ---


@dataclass
class FakeTokenReview:
    known: dict[str, TokenVerdict] = field(default_factory=dict)
    calls: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    gate: asyncio.Event | None = None
    fail: bool = False

    async def __call__(self, token: str, audiences: tuple[str, ...]) -> TokenVerdict:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail:
                raise ReviewUnavailable("down")
            return self.known.get(token, TokenVerdict(False))
        finally:
            self.in_flight -= 1


SA = TokenVerdict(True, "system:serviceaccount:team-b:client", ("system:serviceaccounts",))


def test_a_service_account_username_becomes_its_namespace_and_name() -> None:
    caller = caller_from(SA)
    assert (caller.kind, caller.namespace, caller.name) == (
        CallerKind.SERVICE_ACCOUNT,
        "team-b",
        "client",
    )
    assert caller.identity == SA.username
    assert caller_from(TokenVerdict(True, "alice")).kind is CallerKind.USER


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


def test_a_reviewed_token_is_trusted_for_the_bound_then_asked_again() -> None:
    async def scenario() -> None:
        clock = Clock()
        token = jwt()
        fake = FakeTokenReview({token: SA})
        config = GatewayAuthConfig(token_cache_seconds=60, denied_cache_seconds=5)
        reviewer = TokenReviewer(fake, config, clock, wall_clock=lambda: 0.0)
        cred = BearerToken(token, None)
        assert (await reviewer.caller(cred)) == caller_from(SA)
        clock.now += 59
        await reviewer.caller(cred)
        assert fake.calls == 1
        clock.now += 1  # the bound: revoked now means refused from here on
        fake.known.clear()
        assert await reviewer.caller(cred) is None
        assert fake.calls == 2
        clock.now += 4
        assert await reviewer.caller(cred) is None and fake.calls == 2  # refused, remembered
        clock.now += 1
        await reviewer.caller(cred)
        assert fake.calls == 3

    run(scenario())


def test_a_token_is_never_trusted_past_its_own_expiry() -> None:
    async def scenario() -> None:
        clock = Clock()
        token = jwt(exp=110.0)
        fake = FakeTokenReview({token: SA})
        reviewer = TokenReviewer(fake, GatewayAuthConfig(), clock, wall_clock=lambda: 100.0)
        await reviewer.caller(BearerToken(token, 110.0))
        clock.now += 10
        await reviewer.caller(BearerToken(token, 110.0))
        assert fake.calls == 2

    run(scenario())


def test_concurrent_requests_share_one_review_and_reviews_are_capped() -> None:
    async def scenario() -> None:
        fake = FakeTokenReview(gate=asyncio.Event())
        config = GatewayAuthConfig(max_concurrent_reviews=3)
        reviewer = TokenReviewer(fake, config)
        same = [reviewer.caller(BearerToken("t", None)) for _ in range(20)]
        others = [reviewer.caller(BearerToken(f"t{i}", None)) for i in range(10)]
        tasks = [asyncio.ensure_future(c) for c in [*same, *others]]
        while fake.in_flight < 3:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert fake.in_flight == 3
        fake.gate.set()  # type: ignore[union-attr]
        results = await asyncio.gather(*tasks)
        assert results == [None] * 30
        assert fake.calls == 11 and fake.most_in_flight == 3

    run(scenario())


def test_a_request_that_waits_too_long_for_a_review_slot_is_unavailable() -> None:
    async def scenario() -> None:
        fake = FakeTokenReview(gate=asyncio.Event())
        config = GatewayAuthConfig(max_concurrent_reviews=1, review_timeout_seconds=0.05)
        reviewer = TokenReviewer(fake, config)
        first = asyncio.ensure_future(reviewer.caller(BearerToken("a", None)))
        while fake.in_flight < 1:  # "a" holds the only slot
            await asyncio.sleep(0)
        with pytest.raises(ReviewUnavailable):
            await reviewer.caller(BearerToken("b", None))
        fake.gate.set()  # type: ignore[union-attr]
        await first

    run(scenario())


def test_an_unavailable_api_is_not_remembered() -> None:
    async def scenario() -> None:
        fake = FakeTokenReview(fail=True)
        reviewer = TokenReviewer(fake, GatewayAuthConfig())
        for _ in range(2):
            with pytest.raises(ReviewUnavailable):
                await reviewer.caller(BearerToken("t", None))
        assert fake.calls == 2
        assert len(reviewer.known) == 0 and len(reviewer.refused) == 0

    run(scenario())


def test_a_thousand_random_tokens_leave_the_caches_bounded() -> None:
    async def scenario() -> None:
        fake = FakeTokenReview()
        config = GatewayAuthConfig(token_cache_size=100)
        reviewer = TokenReviewer(fake, config)
        rng = random.Random(7)
        for _ in range(1000):
            token = "".join(rng.choices(string.ascii_letters, k=40))
            assert await reviewer.caller(BearerToken(token, None)) is None
        assert fake.calls == 1000
        assert len(reviewer.refused) <= 10 and len(reviewer.known) == 0

    run(scenario())


# --- API keys ---


def key_body(ns: str, name: str, key_id: str, digest: str, account: str = "client") -> Any:
    return api_key_object(ns, name, account, "uid-1", key_id, digest)


def test_an_api_key_matches_only_its_own_record_and_stops_when_deleted() -> None:
    key_id, key, digest = new_key()
    body = key_body("team-b", "k1", key_id, digest)
    assert key not in json.dumps(body)  # the stored record holds no plaintext
    assert body["spec"]["keyHash"] == digest and digest.startswith("sha256:")
    index = ApiKeyIndex()
    index.replace([body])
    cred = parse_authorization(f"Bearer {key}")
    assert isinstance(cred, ApiKeyCredential)
    caller = index.caller(cred)
    assert caller == Caller(
        CallerKind.SERVICE_ACCOUNT,
        "team-b",
        "client",
        api_key="k1",
        groups=(
            "system:serviceaccounts",
            "system:serviceaccounts:team-b",
            "system:authenticated",
        ),
    )
    assert index.caller(ApiKeyCredential(key_id, cred.secret[:-1] + "x")) is None
    index.delete("team-b", "k1")
    assert index.caller(cred) is None


def test_a_key_id_copied_into_another_namespace_gains_nothing() -> None:
    key_id, key, digest = new_key()
    _, _, other_digest = new_key()
    index = ApiKeyIndex()
    index.replace(
        [
            key_body("team-a", "real", key_id, digest, "owner"),
            key_body("team-b", "copy", key_id, other_digest, "thief"),
        ]
    )
    cred = parse_authorization(f"Bearer {key}")
    assert isinstance(cred, ApiKeyCredential)
    found = index.caller(cred)
    assert found is not None and (found.namespace, found.name) == ("team-a", "owner")
    assert key_digest(key_id, cred.secret) == digest


def test_a_rotated_key_works_until_the_old_record_is_deleted() -> None:
    old_id, old_key, old_digest = new_key()
    new_id, new_key_text, new_digest = new_key()
    index = ApiKeyIndex()
    index.replace([key_body("ns", "old", old_id, old_digest)])
    index.put(key_body("ns", "new", new_id, new_digest))
    old, new = (
        parse_authorization(f"Bearer {old_key}"),
        parse_authorization(f"Bearer {new_key_text}"),
    )
    assert isinstance(old, ApiKeyCredential) and isinstance(new, ApiKeyCredential)
    assert index.caller(old) is not None and index.caller(new) is not None
    index.delete("ns", "old")
    assert index.caller(old) is None and index.caller(new) is not None


# --- SubjectAccessReview ---


def test_access_decisions_are_remembered_for_the_bound_only() -> None:
    async def scenario() -> None:
        clock = Clock()
        allowed: set[tuple[str, str]] = {("team-a", "llama")}
        asked: list[AccessQuestion] = []

        async def review(q: AccessQuestion) -> bool:
            asked.append(q)
            return (q.namespace, q.name) in allowed

        reviewer = AccessReviewer(review, GatewayAuthConfig(access_cache_seconds=10), clock)
        caller = caller_from(SA)
        assert await reviewer.allowed(caller, "team-a", "llama")
        assert not await reviewer.allowed(caller, "team-a", "other")
        clock.now += 9.9
        allowed.clear()
        assert await reviewer.allowed(caller, "team-a", "llama")  # still remembered
        clock.now += 0.1
        assert not await reviewer.allowed(caller, "team-a", "llama")
        assert len(asked) == 3
        spec = asked[0].body()["spec"]
        assert spec["user"] == SA.username  # type: ignore[index]
        assert spec["resourceAttributes"] == {  # type: ignore[index]
            "group": "openmodel.dev",
            "resource": "modeldeployments",
            "verb": "use",
            "namespace": "team-a",
            "name": "llama",
        }

    run(scenario())


# --- the modes, through the middleware ---


def backend(ns: str, name: str) -> Backend:
    return Backend((ns, name), name, frozenset(), "vllm", 8000)


@dataclass
class Door:
    control: AccessControl
    tokens: FakeTokenReview
    allowed: set[tuple[str, str, str]]  # (identity, namespace, name)
    access_calls: list[AccessQuestion]
    keys: ApiKeyIndex


def make_door(mode: AuthMode, api_up: bool = True) -> Door:
    tokens = FakeTokenReview(fail=not api_up)
    allowed: set[tuple[str, str, str]] = set()
    calls: list[AccessQuestion] = []

    async def review(q: AccessQuestion) -> bool:
        calls.append(q)
        if not api_up:
            raise ReviewUnavailable("down")
        return (q.user, q.namespace, q.name) in allowed

    config = GatewayAuthConfig(mode=mode)
    keys = ApiKeyIndex()
    keys.replace([])
    control = AccessControl(
        mode,
        CollectorRegistry(),
        tokens=TokenReviewer(tokens, config),
        keys=keys,
        access=AccessReviewer(review, config),
    )
    return Door(control, tokens, allowed, calls, keys)


async def with_client(door: Door, check: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    routes = [Route(backend("team-a", "llama")), Route(backend("team-c", "llama"))]

    async def infer(request: web.Request) -> web.StreamResponse:
        chosen = await door.control.choose(request, "llama", routes)
        if isinstance(chosen, web.Response):
            return chosen
        return web.json_response(
            {"caller": caller_of(request).identity, "namespace": chosen.backend.key[0]}
        )

    async def health(request: web.Request) -> web.StreamResponse:
        return web.json_response({"caller": caller_of(request).identity})

    app = web.Application(middlewares=[door.control.middleware])
    app.router.add_post("/v1/chat/completions", infer)
    app.router.add_get("/healthz", health)
    async with TestClient(TestServer(app)) as client:
        await check(client)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_enforce_refuses_with_openai_errors_and_routes_to_the_usable_claimant() -> None:
    door = make_door(AuthMode.ENFORCE)
    token = jwt("b")
    door.tokens.known[token] = SA

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.post("/v1/chat/completions")
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await r.json())["error"]["code"] == "invalid_api_key"
        r = await client.post("/v1/chat/completions", headers={"Authorization": "Basic eA=="})
        assert r.status == 401
        r = await client.post("/v1/chat/completions", headers=bearer("x" * 7000))
        assert r.status == 401
        assert door.tokens.calls == 0  # refused before anything was asked
        r = await client.post("/v1/chat/completions", headers=bearer(jwt("unknown")))
        assert r.status == 401 and door.tokens.calls == 1
        r = await client.post("/v1/chat/completions", headers=bearer(token))
        body = await r.json()
        assert r.status == 403 and body["error"]["code"] == "permission_denied"
        door.allowed.add((SA.username, "team-c", "llama"))
        door.control.access.decisions.clear()  # type: ignore[union-attr]
        r = await client.post("/v1/chat/completions", headers=bearer(token))
        assert r.status == 200
        assert await r.json() == {"caller": SA.username, "namespace": "team-c"}
        r = await client.get("/healthz")  # probes stay open
        assert r.status == 200

    run(with_client(door, check))


def test_enforce_fails_closed_when_the_api_cannot_answer() -> None:
    door = make_door(AuthMode.ENFORCE, api_up=False)

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.post("/v1/chat/completions", headers=bearer(jwt()))
        assert r.status == 503 and "Retry-After" in r.headers
        assert (await r.json())["error"]["type"] == "service_unavailable"

    run(with_client(door, check))


def test_an_api_key_before_the_keys_are_listed_is_unavailable_not_unknown() -> None:
    door = make_door(AuthMode.ENFORCE)
    door.keys.synced = False
    _, key, _ = new_key()

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.post("/v1/chat/completions", headers=bearer(key))
        assert r.status == 503

    run(with_client(door, check))


def test_audit_refuses_nothing_and_counts_what_enforce_would() -> None:
    door = make_door(AuthMode.AUDIT)

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.post("/v1/chat/completions")
        assert r.status == 200
        assert await r.json() == {"caller": "anonymous", "namespace": "team-a"}

    run(with_client(door, check))
    decisions = door.control.metrics.decisions
    assert decisions.labels("audit", "authenticate", "missing")._value.get() == 1
    assert decisions.labels("audit", "authorize", "denied")._value.get() == 1


def test_off_lets_everyone_in_as_anonymous_without_asking() -> None:
    control = AccessControl.off(CollectorRegistry())
    routes = [Route(backend("team-a", "llama"))]
    request = make_mocked_request("POST", "/v1/chat/completions")
    assert run(control.choose(request, "llama", routes)) == routes[0]
    with pytest.raises(ValueError, match="needs"):
        AccessControl(AuthMode.ENFORCE, CollectorRegistry())


def test_v1_models_lists_only_what_the_caller_may_use() -> None:
    door = make_door(AuthMode.ENFORCE)
    door.allowed.add((SA.username, "team-a", "llama"))
    request = make_mocked_request("GET", "/v1/models")
    request[CALLER_KEY] = caller_from(SA)
    claims = [
        ("llama", [Route(backend("team-a", "llama"))]),
        ("mistral", [Route(backend("team-c", "mistral"))]),
    ]
    listed = run(door.control.usable(request, claims))
    assert [(name, r.backend.key) for name, r in listed] == [("llama", ("team-a", "llama"))]


# --- the hot-path benchmark, at a tiny count so it cannot rot ---


def test_the_door_benchmark_runs_to_its_report() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "perf.bench_gateway_auth", "--requests", "200", "--rounds", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode in (0, 1), output  # 1: over the target on a loaded machine
    assert "Traceback" not in output, output
    assert "CPU per request" in output and "API key" in output, output


# --- TLS, and the loud warning of mode off, through the gateway's own serve() ---


def test_the_gateway_serves_https_with_the_configured_pair(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = create_pki(tmp_path / "pki")
    routes = tmp_path / "routes.yaml"
    routes.write_text("models: []\n")
    tls = {"certFile": str(pki.apiserver.cert), "keyFile": str(pki.apiserver.key)}
    config = parse_config({"gateway": {"auth": {"mode": "off"}, "tls": tls}})
    with socket.socket() as s, socket.socket() as m:
        s.bind(("127.0.0.1", 0))
        m.bind(("127.0.0.1", 0))
        port, metrics_port = s.getsockname()[1], m.getsockname()[1]

    async def scenario() -> tuple[int, bool, int]:
        stop = asyncio.Event()
        served = asyncio.create_task(
            serve(config, "127.0.0.1", port, routes, stop, metrics_port=metrics_port)
        )
        trusted = ssl.create_default_context(cafile=str(pki.ca.cert))
        deadline = time.monotonic() + 20
        try:
            async with aiohttp.ClientSession() as session:
                while True:
                    try:
                        async with session.get(
                            f"https://127.0.0.1:{port}/healthz", ssl=trusted
                        ) as r:
                            status = r.status
                        break
                    except aiohttp.ClientConnectorError:
                        assert time.monotonic() < deadline, "the gateway never listened"
                        await asyncio.sleep(0.05)
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                        plain_answered = True
                except aiohttp.ClientError:
                    plain_answered = False
                # The metrics port stays plain HTTP (in-cluster, policy-restricted).
                async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                    metrics_status = r.status
        finally:
            stop.set()
            await served
        return status, plain_answered, metrics_status

    with caplog.at_level(logging.WARNING):
        status, plain_answered, metrics_status = run(scenario())
    assert status == 200 and not plain_answered
    assert metrics_status == 200
    assert "AUTHENTICATION IS OFF" in caplog.text


def test_every_claimant_of_a_name_is_kept_oldest_first() -> None:
    table = RouteTable()
    newer = Backend(("team-c", "llama"), "llama", frozenset(), "vllm", 8000, created="2026-02")
    older = Backend(("team-a", "llama"), "llama", frozenset(), "vllm", 8000, created="2026-01")
    table.put_backend(newer)
    table.put_backend(older)
    keys = [r.backend.key for r in table.routes("llama")]
    assert keys == [("team-a", "llama"), ("team-c", "llama")]
    assert table.route("llama") == table.routes("llama")[0]
    assert table.routes("nothing") == []
    table.delete_model_deployment("team-a", "llama")
    assert [r.backend.key for r in table.routes("llama")] == [("team-c", "llama")]
