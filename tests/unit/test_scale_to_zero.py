"""Scale to zero and back (autoscaler/zero.py) and the gateways' demand (autoscaler/demand.py)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from openmodel.autoscaler import DecisionReason, Observation, ScalingHistory, ScalingPolicy, decide
from openmodel.autoscaler.demand import gateway_demand_urls, read_demand
from openmodel.autoscaler.zero import Demand, engines_idle, from_zero, to_zero
from openmodel.config import GATEWAY_METRICS_PORT, GATEWAY_PORT

T = TypeVar("T")
POLICY = ScalingPolicy(min_replicas=1, max_replicas=4, target_queue_depth=4)
IDLE = Observation(waiting={"p0": 0.0}, running={"p0": 0.0})


def steady_at_one(observation: Observation = IDLE) -> Any:
    return decide(
        observation=observation,
        current_replicas=1,
        policy=POLICY,
        history=ScalingHistory.assume(1, at=0),
        now=1000,
    )


def test_held_requests_wake_a_model_at_zero_and_nothing_else_does() -> None:
    woken = from_zero(0, Demand(held=3), ScalingHistory(), now=5, horizon_s=600)
    assert woken is not None and woken.desired_replicas == 1
    assert woken.reason == DecisionReason.SCALE_FROM_ZERO and "3 held" in woken.message
    asleep = from_zero(0, Demand(), ScalingHistory(), now=5, horizon_s=600)
    assert asleep is not None and asleep.desired_replicas == 0
    assert asleep.reason == DecisionReason.SCALED_TO_ZERO
    assert from_zero(2, Demand(held=3), ScalingHistory(), now=5, horizon_s=600) is None


def test_one_idle_replica_goes_to_zero_only_after_the_whole_period() -> None:
    decision = steady_at_one()
    early = to_zero(decision, 1, IDLE, Demand(idle_seconds=10), idle_for_s=599, after_s=600)
    assert early.desired_replicas == 1 and "zero after 600s without requests" in early.message
    late = to_zero(decision, 1, IDLE, Demand(idle_seconds=700), idle_for_s=600, after_s=600)
    assert late.desired_replicas == 0 and late.reason == DecisionReason.SCALE_TO_ZERO


@pytest.mark.parametrize(
    ("observation", "demand"),
    [
        (Observation(waiting={"p0": 0.0}, running={"p0": 1.0}), Demand()),  # still serving
        (Observation(waiting={"p0": 0.0}), Demand()),  # running unknown
        (Observation(failed={"p0": "timeout"}), Demand()),  # no metrics
        (Observation(starting=frozenset({"p0"})), Demand()),  # nothing ready to read
        (IDLE, Demand(held=1)),
        (IDLE, Demand(in_flight=1)),
        (IDLE, Demand(complete=False)),  # a gateway did not answer
    ],
)
def test_missing_data_or_any_work_keeps_the_replica(
    observation: Observation, demand: Demand
) -> None:
    decision = steady_at_one(IDLE)
    kept = to_zero(decision, 1, observation, demand, idle_for_s=10_000, after_s=600)
    assert kept.desired_replicas == 1


def test_zero_is_reached_from_one_only() -> None:
    decision = decide(
        observation=Observation(waiting={"p0": 0.0, "p1": 0.0}, running={"p0": 0.0, "p1": 0.0}),
        current_replicas=2,
        policy=POLICY,
        history=ScalingHistory(),
        now=1000,
    )
    assert decision.desired_replicas == 1
    assert to_zero(decision, 2, IDLE, Demand(), 10_000, 600).desired_replicas == 1
    assert not engines_idle(Observation())


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro_fn(), timeout=20))


async def serve(answers: dict[str, Any]) -> tuple[web.AppRunner, int]:
    async def handler(request: web.Request) -> web.StreamResponse:
        answer = answers[request.path]
        if isinstance(answer, int):
            return web.Response(status=answer)
        return web.Response(text=answer if isinstance(answer, str) else json.dumps(answer))

    app = web.Application()
    app.router.add_get("/{name}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


def test_demand_is_summed_over_gateways_and_a_silent_one_makes_it_incomplete() -> None:
    async def scenario() -> None:
        entry = {"namespace": "a", "name": "m", "held": 2, "inFlight": 1, "idleSeconds": 30}
        other = {"namespace": "a", "name": "m", "held": 1, "inFlight": 0, "idleSeconds": 4}
        runner, port = await serve(
            {"/one": {"models": [entry]}, "/two": {"models": [other]}, "/bad": "{]", "/err": 500}
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                good = await read_demand(session, [f"{base}/one", f"{base}/two"], 2.0)
                assert good.complete
                assert good.for_model(("a", "m")) == Demand(3, 1, 4.0, True)
                assert good.for_model(("a", "other")) == Demand(complete=True)
                partial = await read_demand(
                    session, [f"{base}/one", f"{base}/bad", f"{base}/err"], 2.0
                )
                assert not partial.complete and len(partial.failures) == 2
                assert partial.for_model(("a", "m")).held == 2
                assert not partial.for_model(("a", "m")).complete
        finally:
            await runner.cleanup()

    run(scenario)


def gateway_pod(ip: str, phase: str = "Running", leaving: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"gateway-{ip}"}
    if leaving:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, "podIP": ip}}


def test_the_autoscaler_reads_demand_on_the_gateways_metrics_port() -> None:
    assert GATEWAY_METRICS_PORT != GATEWAY_PORT  # /demand is off the API port
    pods = [
        gateway_pod("10.0.0.1"),
        gateway_pod("fd00::2"),
        gateway_pod("10.0.0.3", phase="Pending"),
        gateway_pod("10.0.0.4", leaving=True),
        {"metadata": {"name": "no-ip-yet"}, "status": {"phase": "Running"}},
    ]
    assert gateway_demand_urls(pods) == [
        f"http://10.0.0.1:{GATEWAY_METRICS_PORT}/demand",
        f"http://[fd00::2]:{GATEWAY_METRICS_PORT}/demand",
    ]
