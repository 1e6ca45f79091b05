"""Rate limits across real gateway processes (`python -m openmodel.gateway`, static routes)
in front of a simulated engine (`python -m openmodel.simulator`):

- a client over its tokens per minute gets 429 with Retry-After and OpenAI's error shape;
- under a minute-scale load of eight clients hammering (back off 50 ms after a 429), the
  tokens accepted in every sliding window stay within the budget, with one gateway and
  with two that share it (each enforces half), the load spread evenly or all on one
  gateway (which then admits only its half): the overshoot is measured and printed;
- the usage counters of the gateways add up to the engine's usage the clients received;
- a marker sent in a prompt and as a bearer token never reaches the gateways' logs (run
  at DEBUG).

Identities: these gateways run with authentication off (static routes, no API server),
so every request is `anonymous`, one identity (tests/unit/test_gateway_limits_in_process.py
shows other identities and namespaces unaffected, with a stand-in for authentication). The
limits' window is 10 s here (`gateway.limits.windowSeconds`) so a run covers 2 windows
in 20 s; the arithmetic is the same as over the default 60 s.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from harness.operator import ChildProcess, GatewayProcess, spawn, wait_until_answering
from harness.ports import free_port

WINDOW_S = 10.0
TOKENS_PER_MINUTE = 6000  # 1,000 tokens per 10 s window
BUDGET = TOKENS_PER_MINUTE * WINDOW_S / 60
LOAD_SECONDS = 20.0
CLIENTS = 8
MAX_TOKENS = 20
PROMPT = "the cat and the dog"  # 5 prompt tokens on the simulator; reserved: 12
PER_REQUEST = 5 + MAX_TOKENS
MODEL = "limited"
MARKER = "zq-marker-7f3a9c"


@dataclass(frozen=True)
class Answer:
    sent: float  # monotonic, client side
    status: int
    tokens: int


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    workdir = tmp_path_factory.mktemp("limits")
    port = free_port()
    argv = [sys.executable, "-m", "openmodel.simulator", "--port", str(port), "--slots", "256",
            "--service-time", "0.2", "--model", MODEL]  # fmt: skip
    log = workdir / "simulator.log"
    sim = ChildProcess(spawn(argv, {**os.environ}, log), log)
    wait_until_answering(sim, f"http://127.0.0.1:{port}/health", "simulator")
    yield port
    sim.stop()


def start_gateways(workdir: Path, engine_port: int, replicas: int) -> list[GatewayProcess]:
    routes = workdir / "routes.yaml"
    routes.write_text(yaml.safe_dump({"models": [{
        "name": MODEL, "namespace": "limits-e2e", "modelDeployment": MODEL, "engine": "vllm",
        "port": engine_port, "hosts": ["127.0.0.1"],
    }]}))  # fmt: skip
    config = workdir / "config.yaml"
    limits = {
        "perIdentity": {"tokensPerMinute": TOKENS_PER_MINUTE},
        "windowSeconds": WINDOW_S,
        "replicas": replicas,
    }
    # Auth off: static routes and no API server here, so every request is the one
    # `anonymous` identity (the door itself is tests/e2e/test_gateway_auth.py's).
    config.write_text(yaml.safe_dump({"gateway": {"limits": limits, "auth": {"mode": "off"}}}))
    env = {**os.environ, "OPENMODEL_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
    gateways = []
    for i in range(replicas):
        port, metrics_port = free_port(), free_port()
        log = workdir / f"gateway-{replicas}-{i}.log"
        argv = [sys.executable, "-m", "openmodel.gateway", "--host", "127.0.0.1", "--port",
                str(port), "--metrics-port", str(metrics_port), "--routes", str(routes),
                "--log-level", "DEBUG"]  # fmt: skip
        gw = GatewayProcess(
            spawn(argv, env, log), log, f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{metrics_port}",
        )  # fmt: skip
        wait_until_answering(gw, f"{gw.url}/readyz", "gateway")
        gateways.append(gw)
    return gateways


def chat_body(content: str = PROMPT) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
    }


async def hammer(urls: list[str], seconds: float) -> list[Answer]:
    """CLIENTS loops, client i on urls[i % len(urls)], each sending one request after
    another and backing off 50 ms after a 429 (so the limiter is asked often)."""
    answers: list[Answer] = []
    end = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, url: str) -> None:
        while time.monotonic() < end:
            sent = time.monotonic()
            async with session.post(f"{url}/v1/chat/completions", json=chat_body()) as r:
                body = await r.json()
            tokens = body["usage"]["total_tokens"] if r.status == 200 else 0
            answers.append(Answer(sent, r.status, tokens))
            if r.status == 429:
                await asyncio.sleep(0.05)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, urls[i % len(urls)]) for i in range(CLIENTS)))
    return answers


def busiest_window(answers: list[Answer]) -> float:
    """The most tokens accepted in any window of WINDOW_S seconds (by send time)."""
    accepted = sorted((a.sent, a.tokens) for a in answers if a.status == 200)
    best, total, start = 0.0, 0.0, 0
    for sent, tokens in accepted:
        total += tokens
        while accepted[start][0] <= sent - WINDOW_S:
            total -= accepted[start][1]
            start += 1
        best = max(best, total)
    return best


def metric_sum(gateways: list[GatewayProcess], name: str) -> float:
    async def read() -> float:
        total = 0.0
        async with aiohttp.ClientSession() as session:
            for gw in gateways:
                async with session.get(f"{gw.metrics_url}/metrics") as r:
                    text = await r.text()
                for line in text.splitlines():
                    if line.startswith(name + "{") and 'identity="anonymous"' in line:
                        total += float(line.rsplit(" ", 1)[1])
        return total

    return asyncio.run(read())


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("replicas", "spread"), [(1, "even"), (2, "even"), (2, "one")])
def test_accepted_tokens_stay_within_the_limit_with_one_and_two_gateways(
    engine: int, tmp_path: Path, replicas: int, spread: str
) -> None:
    gateways = start_gateways(tmp_path, engine, replicas)
    urls = [gw.url for gw in gateways]
    # "one": every client on the first gateway, which enforces only its share.
    budget = BUDGET if spread == "even" else BUDGET / replicas
    try:
        answers = asyncio.run(hammer(urls if spread == "even" else urls[:1], LOAD_SECONDS))
        accepted = [a for a in answers if a.status == 200]
        refused = [a for a in answers if a.status == 429]
        assert {a.status for a in answers} <= {200, 429}
        busiest = busiest_window(answers)
        total = sum(a.tokens for a in accepted)
        # The budget refills as charges leave the window: at most one budget per window
        # started, i.e. ceil(LOAD_SECONDS / WINDOW_S) budgets over the run.
        windows = -(-LOAD_SECONDS // WINDOW_S)
        print(
            f"\n{replicas} gateway(s), load on {spread}: {len(accepted)} accepted, "
            f"{len(refused)} refused; busiest {WINDOW_S:g}s window {busiest:.0f} tokens of a "
            f"{BUDGET:.0f} budget (overshoot {max(0.0, busiest - BUDGET):.0f}); {total} "
            f"tokens in {LOAD_SECONDS:g}s, {total / (windows * BUDGET):.0%} of {windows:.0f} "
            "budgets"
        )
        # The stated bound: no overshoot with max_tokens given and the prompt estimate at
        # or above the engine's count (12 reserved, 5 used here); the windows are measured
        # by the client's send time, which may precede the gateway's admission by a
        # request's transit: one request of slack per gateway.
        assert busiest <= budget + replicas * PER_REQUEST, busiest
        # And the budget is used, not starved: over two thirds of the busiest window.
        assert busiest >= budget * 2 / 3, busiest
        assert total <= windows * budget + replicas * PER_REQUEST
        # The gateways' usage counters: the engine's usage the clients received.
        prompt = metric_sum(gateways, "openmodel_gateway_usage_prompt_tokens_total")
        completion = metric_sum(gateways, "openmodel_gateway_usage_completion_tokens_total")
        assert prompt + completion == total
        limited = metric_sum(gateways, "openmodel_gateway_rate_limited_requests_total")
        assert limited == len(refused)
    finally:
        for gw in gateways:
            gw.stop()


def test_over_the_limit_429_with_retry_after_and_no_marker_in_the_logs(
    engine: int, tmp_path: Path
) -> None:
    (gw,) = start_gateways(tmp_path, engine, 1)
    try:

        async def scenario() -> list[tuple[int, dict[str, Any], str | None]]:
            headers = {"Authorization": f"Bearer {MARKER}"}
            out = []
            async with aiohttp.ClientSession(headers=headers) as session:
                body = chat_body(f"{PROMPT} {MARKER}")
                body["max_tokens"] = 400
                for _ in range(3):
                    async with session.post(f"{gw.url}/v1/chat/completions", json=body) as r:
                        out.append((r.status, await r.json(), r.headers.get("Retry-After")))
                streamed = {**body, "max_tokens": 5, "stream": True}
                async with session.post(f"{gw.url}/v1/chat/completions", json=streamed) as r:
                    out.append((r.status, {"text": await r.text()}, None))
            return out

        answers = asyncio.run(scenario())
        assert [a[0] for a in answers] == [200, 200, 429, 200], answers
        _, error, retry_after = answers[2]
        assert error["error"]["code"] == "rate_limit_exceeded"
        assert error["error"]["type"] == "tokens"
        # The first 400-token answer leaves the window WINDOW_S after it was admitted.
        assert retry_after is not None and 1 <= int(retry_after) <= WINDOW_S
        assert '"usage"' not in answers[3][1]["text"]  # asked for by the gateway, stripped
    finally:
        gw.stop()
    log = gw.log_path.read_text()
    assert "DEBUG" in log or "INFO" in log  # the log was written at all
    assert MARKER not in log, [line for line in log.splitlines() if MARKER in line]
    print(f"\ngateway log ({len(log.splitlines())} lines at DEBUG): no marker")
