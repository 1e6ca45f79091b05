"""The gateway's door against the real API server (TokenReview and SubjectAccessReview
are real), with the official OpenAI Python SDK as the client.

A gateway of this module's own runs in enforce mode with short cache bounds (tokens 4 s,
access decisions 3 s) so revocation is measured in seconds; the session's gateway (auth
off) is not involved. team-a holds a ModelDeployment with an adapter on simulated
engines (KWOK pods); team-b's ServiceAccount `client` is the caller.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness import Cluster, NotYet, wait_for
from harness.engine_fleet import EngineFleet
from harness.k8s import create_namespace, delete_namespace, service_account_token
from harness.slow_proxy import SlowProxy
from openmodel_fixtures import (
    GROUP,
    VERSION,
    GatewayProcess,
    OperatorProcess,
    create_md,
    grant_use,
    revoke_use,
    start_gateway,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
TOKEN_BOUND_S = 4.0
ACCESS_BOUND_S = 3.0
# What the gateway's watch and this machine's load add to a bound, at most.
SLACK_S = 2.0
# kube-apiserver caches a token it authenticated for 10 s itself (its token authenticator
# cache): a deleted ServiceAccount's token keeps passing TokenReview that long.
APISERVER_TOKEN_CACHE_S = 10.0
REVIEW_TIMEOUT_S = 1.0
TOKEN_CACHE_SIZE = 100
AUTH: dict[str, Any] = {
    "mode": "enforce",
    "tokenCacheSeconds": TOKEN_BOUND_S,
    "accessCacheSeconds": ACCESS_BOUND_S,
    "deniedCacheSeconds": 1,
    "tokenCacheSize": TOKEN_CACHE_SIZE,
    "reviewTimeoutSeconds": REVIEW_TIMEOUT_S,
}
MARKER = "SECRETMARKER7f3a9c"
NAME = "guarded"


@dataclass
class Teams:
    a: str  # the model's namespace
    b: str  # the caller's namespace
    served: str
    adapter: str
    fleet: EngineFleet


@pytest.fixture(scope="module")
def door(cluster: Cluster, crd: None, api_key_crd: None) -> Iterator[GatewayProcess]:
    gw = start_gateway(cluster.kubeconfig, cluster.workdir, name="gateway-auth", auth=AUTH)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def teams(api_client: client.ApiClient, operator: OperatorProcess) -> Iterator[Teams]:
    a = create_namespace(api_client, "e2e-auth-a")
    b = create_namespace(api_client, "e2e-auth-b")
    served, adapter = f"{NAME}-{a}", f"{NAME}-sql-{a}"
    create_md(api_client, md(a, served, adapter))
    client.CoreV1Api(api_client).create_namespaced_service_account(
        b, {"metadata": {"name": "client"}}
    )
    fleet = EngineFleet(api_client, a, NAME, served_model=served, slots=16, service_time=0.01)
    fleet.start()
    try:
        wait_for(lambda: len(fleet.urls()) == 1 or NotYet(fleet.urls()), 60, "an engine")
        yield Teams(a, b, served, adapter, fleet)
    finally:
        fleet.stop()
        delete_namespace(api_client, a)
        delete_namespace(api_client, b)


def md(namespace: str, served: str, adapter: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "servedModelName": served,
        "gpu": {"type": "nvidia-h100-80gb", "count": 1},
        "maxModelLen": 4096,
        "replicas": 1,
    }
    if adapter is not None:
        spec["adapters"] = [{"name": adapter, "source": "example-org/sql-lora"}]
        spec["lora"] = {"maxRank": 16, "maxAdapters": 2}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": spec,
    }


def sdk(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=30)


def chat_status(gw: GatewayProcess, key: str, model: str) -> int:
    """The HTTP status the SDK saw for one chat completion (200 or the error's)."""
    try:
        sdk(gw, key).chat.completions.create(
            model=model, messages=[{"role": "user", "content": MARKER}], max_tokens=4
        )
    except openai.APIStatusError as e:
        return e.status_code
    return 200


def post_chat(
    gw: GatewayProcess, body: dict[str, Any], headers: dict[str, str], timeout: float
) -> tuple[int, dict[str, Any], Any]:
    """A chat completion sent by hand (headers the SDK would not send): status, JSON
    answer, headers."""
    request = urllib.request.Request(
        f"{gw.url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def raw_post(gw: GatewayProcess, headers: dict[str, str]) -> tuple[int, dict[str, Any], Any]:
    return post_chat(gw, {"model": "x", "messages": []}, headers, timeout=30)


def metric(gw: GatewayProcess, name: str, label: str) -> float:
    with urllib.request.urlopen(f"{gw.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} with {label} in /metrics")


def become(check: Any, want: int, deadline: float, what: str) -> float:
    """Seconds until `check()` returns `want` (polled), failing after `deadline`."""
    started = time.monotonic()
    wait_for(lambda: (got := check()) == want or NotYet(got), deadline, what, interval=0.1)
    return time.monotonic() - started


def test_team_b_needs_a_token_then_a_binding_and_loses_both(
    api_client: client.ApiClient, door: GatewayProcess, teams: Teams
) -> None:
    status, body, headers = raw_post(door, {})
    assert status == 401 and body["error"]["code"] == "invalid_api_key", body
    assert headers["WWW-Authenticate"].startswith("Bearer")
    token = service_account_token(api_client, teams.b, "client", expiration_seconds=3600)
    for model in (teams.served, teams.adapter):
        try:
            sdk(door, token).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            raise AssertionError(f"{model}: answered without a RoleBinding")
        except openai.PermissionDeniedError as e:
            assert e.status_code == 403
            assert e.body["code"] == "permission_denied", e.body  # type: ignore[index]
    unlisted = {m.id for m in sdk(door, token).models.list()}
    assert not unlisted & {teams.served, teams.adapter}, unlisted

    # Granted: 200 within the bound (the refusal was cached); revoked right after the
    # grant was cached, the worst case: 403 within the bound.
    role = grant_use(api_client, teams.a, teams.b, "client")
    granted = become(lambda: chat_status(door, token, teams.served), 200, 30, "use granted")
    print(f"RoleBinding created -> 200 after {granted:.2f}s (bound {ACCESS_BOUND_S}s)")
    revoke_use(api_client, teams.a, role)
    revoked = become(lambda: chat_status(door, token, teams.served), 403, 30, "binding revoked")
    print(f"RoleBinding deleted -> 403 after {revoked:.2f}s (bound {ACCESS_BOUND_S}s)")
    assert granted <= ACCESS_BOUND_S + SLACK_S and revoked <= ACCESS_BOUND_S + SLACK_S

    role = grant_use(api_client, teams.a, teams.b, "client")
    become(lambda: chat_status(door, token, teams.served), 200, 30, "use granted again")
    answer = sdk(door, token).chat.completions.create(
        model=teams.served, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.model == teams.served
    listed = {m.id for m in sdk(door, token).models.list()}
    assert {teams.served, teams.adapter} <= listed
    # The adapter passes the door too; no simulated engine loads adapters, so the
    # request is held for a pod that has it, not refused (403) or unauthenticated (401).
    status, body, _ = raw_post_model(door, token, teams.adapter)
    assert status not in (401, 403), body

    # A token reviewed just now, then its ServiceAccount deleted: 401 within the bound.
    fresh = service_account_token(api_client, teams.b, "client", expiration_seconds=3599)
    assert chat_status(door, fresh, teams.served) == 200
    client.CoreV1Api(api_client).delete_namespaced_service_account("client", teams.b)
    gone = become(lambda: chat_status(door, fresh, teams.served), 401, 30, "account deleted")
    bound = TOKEN_BOUND_S + APISERVER_TOKEN_CACHE_S
    print(f"ServiceAccount deleted -> 401 after {gone:.2f}s (bound {TOKEN_BOUND_S}s "
          f"+ the API server's {APISERVER_TOKEN_CACHE_S}s)")  # fmt: skip
    assert gone <= bound + SLACK_S
    revoke_use(api_client, teams.a, role)
    client.CoreV1Api(api_client).create_namespaced_service_account(
        teams.b, {"metadata": {"name": "client"}}
    )


def raw_post_model(gw: GatewayProcess, token: str, model: str) -> tuple[int, dict[str, Any], Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    try:
        return post_chat(gw, body, {"Authorization": f"Bearer {token}"}, timeout=3)
    except TimeoutError:
        return 0, {"held": "no answer within 3 s: waiting for a pod with the adapter"}, None


def create_key(cluster: Cluster, namespace: str, account: str, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "openmodel.cli", "apikey", "create", "--namespace", namespace,
         "--service-account", account, "--kubeconfig", str(cluster.kubeconfig), name],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
        env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_api_key_from_the_cli_works_until_revoked_or_rotated(
    api_client: client.ApiClient, cluster: Cluster, door: GatewayProcess, teams: Teams
) -> None:
    role = grant_use(api_client, teams.a, teams.b, "keyed")
    client.CoreV1Api(api_client).create_namespaced_service_account(
        teams.b, {"metadata": {"name": "keyed"}}
    )
    try:
        key = create_key(cluster, teams.b, "keyed", "first")
        assert key.startswith("om_")
        stored = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            GROUP, VERSION, teams.b, "apikeys", "first"
        )
        secret = key.split("_", 2)[2]
        assert key not in json.dumps(stored) and secret not in json.dumps(stored)
        assert stored["spec"]["keyHash"].startswith("sha256:")
        assert stored["metadata"]["ownerReferences"][0]["kind"] == "ServiceAccount"

        become(lambda: chat_status(door, key, teams.served), 200, 30, "the key to work")
        wrong = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
        assert chat_status(door, wrong, teams.served) == 401

        second = create_key(cluster, teams.b, "keyed", "second")
        become(lambda: chat_status(door, second, teams.served), 200, 30, "the new key")
        client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
            GROUP, VERSION, teams.b, "apikeys", "first"
        )
        revoked = become(lambda: chat_status(door, key, teams.served), 401, 10, "revocation")
        print(f"APIKey deleted -> 401 after {revoked:.2f}s (the watch)")
        assert chat_status(door, second, teams.served) == 200
    finally:
        revoke_use(api_client, teams.a, role)


def random_jwt(rng: random.Random) -> str:
    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    claims = {"sub": "".join(rng.choices(string.ascii_letters, k=12))}
    return ".".join(
        [part(b'{"alg":"RS256"}'), part(json.dumps(claims).encode()), part(rng.randbytes(64))]
    )


def test_bad_credentials_get_401_without_asking_and_random_ones_stay_bounded(
    door: GatewayProcess, teams: Teams
) -> None:
    reviews_before = metric(door, "openmodel_gateway_auth_reviews_sent", 'review="token"')
    for header in [
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer two words",
        "Bearer " + "A" * 7_000,
        "Bearer om_notanid_short",
        f"Bearer {MARKER}",
    ]:
        status, body, _ = raw_post(door, {"Authorization": header})
        assert status == 401 and body["error"]["code"] == "invalid_api_key", (header[:30], body)
    # Over aiohttp's own header limit (8,190 bytes): refused by the HTTP server itself.
    huge = urllib.request.Request(
        f"{door.url}/v1/chat/completions", data=b"{}", method="POST",
        headers={"Authorization": "Bearer " + "A" * 20_000},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused_huge:
        urllib.request.urlopen(huge, timeout=30)
    assert refused_huge.value.code in (400, 431)
    assert metric(door, "openmodel_gateway_auth_reviews_sent", 'review="token"') == reviews_before

    rng = random.Random(25)
    tokens = []
    for i in range(1000):
        if i % 2:
            tokens.append(random_jwt(rng))
        else:
            tokens.append("".join(rng.choices(string.printable[:94], k=rng.randint(1, 3000))))
    well_formed = sum(1 for i in range(1000) if i % 2)

    async def send_all() -> list[int]:
        limit = asyncio.Semaphore(16)
        async with aiohttp.ClientSession() as session:

            async def one(token: str) -> int:
                async with (
                    limit,
                    session.post(
                        f"{door.url}/v1/chat/completions",
                        json={"model": teams.served, "messages": []},
                        headers={"Authorization": f"Bearer {token}"},
                    ) as r,
                ):
                    return r.status

            return await asyncio.gather(*(one(t) for t in tokens))

    statuses = asyncio.run(send_all())
    counts = {s: statuses.count(s) for s in set(statuses)}
    # 503: a request that waited over reviewTimeoutSeconds for one of the 8 review slots
    # (refused, never let through); on this machine there were none.
    assert set(statuses) <= {401, 503}, counts
    assert door.alive()
    sent = metric(door, "openmodel_gateway_auth_reviews_sent", 'review="token"') - reviews_before
    refused = metric(door, "openmodel_gateway_auth_cache_entries", 'cache="refused_tokens"')
    known = metric(door, "openmodel_gateway_auth_cache_entries", 'cache="tokens"')
    print(f"1,000 random tokens: statuses {counts}, {sent:.0f} TokenReviews "
          f"({well_formed} JWT-shaped), "
          f"refused cache {refused:.0f}, token cache {known:.0f}")  # fmt: skip
    assert sent <= well_formed
    assert refused <= TOKEN_CACHE_SIZE // 10


def test_the_gateway_fails_closed_when_the_api_server_hangs_or_is_down(
    api_client: client.ApiClient, cluster: Cluster, crd: None, api_key_crd: None, teams: Teams
) -> None:
    proxy = SlowProxy(cluster.kubeconfig, delay=0.0, throttle_share=0.0).start()
    kubeconfig = proxy.write_kubeconfig(cluster.workdir / "gateway-slow-kubeconfig")
    gw = start_gateway(kubeconfig, cluster.workdir, name="gateway-auth-slow", auth=AUTH)
    try:
        token = service_account_token(api_client, teams.b, "client", expiration_seconds=3600)
        assert chat_status(gw, token, teams.served) == 403  # the API answers: no binding
        proxy.stall()
        fresh = service_account_token(api_client, teams.b, "client", expiration_seconds=3601)
        started = time.monotonic()
        status, body, headers = raw_post(gw, {"Authorization": f"Bearer {fresh}"})
        took = time.monotonic() - started
        assert status == 503 and body["error"]["type"] == "service_unavailable", body
        assert headers["Retry-After"] == "1"
        print(f"TokenReview hung -> 503 after {took:.2f}s (timeout {REVIEW_TIMEOUT_S}s)")
        assert took < REVIEW_TIMEOUT_S + SLACK_S
        proxy.resume()
        proxy.stop()  # the API server unreachable: refused connections
        other = service_account_token(api_client, teams.b, "client", expiration_seconds=3602)
        status, body, _ = raw_post(gw, {"Authorization": f"Bearer {other}"})
        assert status == 503, body
    finally:
        gw.stop()
        proxy.stop()


def test_no_token_key_or_body_reaches_the_gateway_log(
    api_client: client.ApiClient, cluster: Cluster, door: GatewayProcess, teams: Teams
) -> None:
    marker_key = f"om_{'a' * 16}_{MARKER}{'x' * 20}"
    raw_post(door, {"Authorization": f"Bearer {marker_key}"})
    raw_post(door, {"Authorization": f"Bearer {MARKER}.{MARKER}.{MARKER}"})
    token = service_account_token(api_client, teams.b, "client", expiration_seconds=3600)
    chat_status(door, token, teams.served)
    log = door.log_path.read_text(errors="replace")
    assert MARKER not in log
    assert token not in log and token[-40:] not in log


def test_a_name_claimed_twice_goes_to_the_claimant_the_caller_may_use(
    api_client: client.ApiClient, door: GatewayProcess, teams: Teams, operator: OperatorProcess
) -> None:
    c = create_namespace(api_client, "e2e-auth-c")
    fleet = EngineFleet(api_client, c, NAME, served_model=teams.served, slots=4, service_time=0.01)
    try:
        create_md(api_client, md(c, teams.served))  # newer: team-a's keeps the name by default
        fleet.start()
        wait_for(lambda: len(fleet.urls()) == 1 or NotYet(fleet.urls()), 60, "team-c's engine")
        client.CoreV1Api(api_client).create_namespaced_service_account(
            teams.b, {"metadata": {"name": "c-user"}}
        )
        role = grant_use(api_client, c, teams.b, "c-user")
        token = service_account_token(api_client, teams.b, "c-user")

        def served_by_c() -> int:
            status = chat_status(door, token, teams.served)
            handled = sum(h.stats.succeeded for _, h in fleet.handles.values())
            return status if handled else -status

        become(served_by_c, 200, 30, "team-c's claimant to answer")
        revoke_use(api_client, c, role)
    finally:
        fleet.stop()
        delete_namespace(api_client, c)
        try:
            client.CoreV1Api(api_client).delete_namespaced_service_account("c-user", teams.b)
        except ApiException as e:
            if e.status != 404:
                raise


def test_p50_with_auth_on_and_off_side_by_side(
    api_client: client.ApiClient, door: GatewayProcess, gateway: GatewayProcess, teams: Teams
) -> None:
    """Reported, not gated: this machine's noise is about 1 ms at this level."""
    role = grant_use(api_client, teams.a, teams.b, "client")
    token = service_account_token(api_client, teams.b, "client")
    try:
        become(lambda: chat_status(door, token, teams.served), 200, 30, "use granted")

        async def p50(url: str, headers: dict[str, str], rounds: int = 300) -> float:
            body = {"model": teams.served, "prompt": "hi", "max_tokens": 2}
            seconds: list[float] = []
            async with aiohttp.ClientSession() as session:
                for _ in range(rounds):
                    started = time.perf_counter()
                    async with session.post(
                        f"{url}/v1/completions", json=body, headers=headers
                    ) as r:
                        await r.read()
                        assert r.status == 200, r.status
                    seconds.append(time.perf_counter() - started)
            return sorted(seconds)[len(seconds) // 2] * 1000

        async def both() -> tuple[float, float, float, float]:
            bearer = {"Authorization": f"Bearer {token}"}
            off1, on1 = await p50(gateway.url, {}), await p50(door.url, bearer)
            off2, on2 = await p50(gateway.url, {}), await p50(door.url, bearer)
            return off1, on1, off2, on2

        off1, on1, off2, on2 = asyncio.run(both())
        print(f"end-to-end p50, 300 sequential completions each, alternated: auth off "
              f"{off1:.2f} / {off2:.2f} ms, auth on (cached) {on1:.2f} / {on2:.2f} ms")  # fmt: skip
    finally:
        revoke_use(api_client, teams.a, role)


def test_a_caller_over_its_limit_gets_429_and_another_identity_is_unaffected(
    api_client: client.ApiClient, cluster: Cluster, teams: Teams
) -> None:
    """Limits keyed by the identity TokenReview vouched for: two ServiceAccounts of one
    namespace, each with its own budget of requests per window."""
    per_window = 3
    limits = {
        "perIdentity": {"requestsPerMinute": per_window},
        "windowSeconds": 60,
        "replicas": 1,
    }
    gw = start_gateway(
        cluster.kubeconfig, cluster.workdir, name="gateway-auth-limits", auth=AUTH, limits=limits
    )
    core = client.CoreV1Api(api_client)
    roles = []
    try:
        tokens = {}
        for account in ("heavy", "light"):
            core.create_namespaced_service_account(teams.b, {"metadata": {"name": account}})
            roles.append(grant_use(api_client, teams.a, teams.b, account))
            tokens[account] = service_account_token(api_client, teams.b, account)
        # The first 200 may take the access cache's bound; it counts against the budget.
        become(lambda: chat_status(gw, tokens["heavy"], teams.served), 200, 30, "use granted")
        statuses = [chat_status(gw, tokens["heavy"], teams.served) for _ in range(per_window)]
        assert statuses == [200] * (per_window - 1) + [429], statuses
        body = {"model": teams.served, "messages": [{"role": "user", "content": "hi"}]}
        status, answer, headers = post_chat(
            gw, body, {"Authorization": f"Bearer {tokens['heavy']}"}, timeout=30
        )
        assert status == 429 and answer["error"]["code"] == "rate_limit_exceeded", answer
        assert 0 < int(headers["Retry-After"]) <= 60, headers["Retry-After"]
        # The other identity of the same namespace still has its whole budget.
        assert [chat_status(gw, tokens["light"], teams.served) for _ in range(per_window)] == [
            200
        ] * per_window
        heavy = f'identity="system:serviceaccount:{teams.b}:heavy"'
        light = f'identity="system:serviceaccount:{teams.b}:light"'
        assert metric(gw, "openmodel_gateway_usage_requests_total", heavy) == per_window
        assert metric(gw, "openmodel_gateway_usage_requests_total", light) == per_window
        assert metric(gw, "openmodel_gateway_rate_limited_requests_total", heavy) == 2
    finally:
        gw.stop()
        for role in roles:
            revoke_use(api_client, teams.a, role)
        for account in ("heavy", "light"):
            core.delete_namespaced_service_account(account, teams.b)
