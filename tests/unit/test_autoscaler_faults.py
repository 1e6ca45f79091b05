"""The autoscaler under metric faults: real aiohttp servers on loopback play broken pods.

Every fault ends as a ``MetricFailure`` (never an exception), the decision holds instead
of scaling down on missing data, one pod's absurd queue stays within maxReplicas with a
message naming it, clock jumps move no window, and a cycle's scrape ends by its deadline
however many pods hang. The per-ModelDeployment path is the operator's own
(``AutoscalerLoop.scale_one``), with its Kubernetes writes recorded instead of sent.

Pods are servers on 127.0.77.<n>, all on one port the kernel picks, as pods in a cluster
share the engine's port on their own IPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes import client

from openmodel.autoscaler import loop as loop_module
from openmodel.autoscaler.decision import (
    Observation,
    ScalingHistory,
    ScalingPolicy,
    decide,
)
from openmodel.autoscaler.demand import read_demand
from openmodel.autoscaler.loop import AutoscalerLoop
from openmodel.autoscaler.zero import Demand
from openmodel.config import GatewayConfig, PlatformConfig
from openmodel.engine_metrics.exposition import (
    FailureKind,
    MetricFailure,
    MetricNames,
    QueueReading,
    read_queue,
)
from openmodel.engine_metrics.scrape import Scraper, ScrapeTarget
from openmodel.engines import ENGINES
from openmodel.simulator.exposition import EngineStats, render_vllm

VLLM_METRICS = ENGINES["vllm"].metric_names

SUBNET = "127.0.77"
MAX_BODY = 8 * 1024 * 1024


def vllm_body(waiting: float, running: float = 0) -> str:
    """What a real vLLM pod answers (the simulator's exposition, which the contract test
    keeps equal to vLLM's), with the waiting gauge set to any float."""
    body = render_vllm(EngineStats(slots=4, waiting=0, running=int(running)), "m")
    line = next(x for x in body.splitlines() if x.startswith("vllm:num_requests_waiting{"))
    labels = line.split(" ")[0]
    return body.replace(line, f"{labels} {float(waiting)!r}".replace("inf", "+Inf"))


def two_series(value: str) -> str:
    return (
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{engine="0"}} {value}\n'
        f'vllm:num_requests_waiting{{engine="1"}} {value}\n'
    )


# --- the fault server -----------------------------------------------------------------

# What a pod does when scraped. Every mode but "ok" is a fault.
BODIES: dict[str, bytes] = {
    "binary": bytes(random.Random(13).randrange(256) for _ in range(4096)) + b"\xff",
    "nul-bytes": b"\x00" * 1000,
    # A real body that the engine itself cut inside the queue gauge's line (framing
    # intact; a cut in transit is the HTTP layer's "short-body").
    "truncated": vllm_body(7).encode().split(b'waiting{engine="0",')[0] + b'waiting{engine="0",',
    "cut-mid-label": b'vllm:num_requests_waiting{engine="0",model_na',
    "nan": vllm_body(float("nan")).encode(),
    "inf": vllm_body(float("inf")).encode(),
    "negative": vllm_body(-3.0).encode(),
    "too-big-for-float": two_series("1e400").encode(),
    "sum-overflows": two_series("1e308").encode(),
    "counter-not-gauge": b"# TYPE vllm:num_requests_waiting counter\nvllm:num_requests_waiting 3\n",
    # 8 MB minus a little: under the body cap, one line of an unclosed label value.
    "one-huge-line": b'vllm:num_requests_waiting{a="' + b"x" * (MAX_BODY - 4096),
    "html": b"<html><body>502 Bad Gateway</body></html>",
}
EXPECTED: dict[str, FailureKind] = {
    "hang": FailureKind.TIMEOUT,
    "hang-after-headers": FailureKind.TIMEOUT,
    "drip": FailureKind.TIMEOUT,
    "http-500": FailureKind.HTTP_STATUS,
    "http-503": FailureKind.HTTP_STATUS,
    "reset-after-headers": FailureKind.TRANSPORT,
    "short-body": FailureKind.TRANSPORT,
    "vanished": FailureKind.UNREACHABLE,
    "binary": FailureKind.MALFORMED,
    "nul-bytes": FailureKind.MISSING,
    "truncated": FailureKind.MALFORMED,
    "cut-mid-label": FailureKind.MALFORMED,
    "nan": FailureKind.NOT_FINITE,
    "inf": FailureKind.NOT_FINITE,
    "negative": FailureKind.NEGATIVE,
    "too-big-for-float": FailureKind.NOT_FINITE,
    "sum-overflows": FailureKind.NOT_FINITE,
    "counter-not-gauge": FailureKind.MALFORMED,
    "one-huge-line": FailureKind.MALFORMED,
    "html": FailureKind.MISSING,
    "empty": FailureKind.EMPTY_BODY,
}
FAULTS = sorted(EXPECTED)
HANGING = ("hang", "hang-after-headers", "drip")


@dataclass
class Pod:
    host: str
    mode: str = "ok"
    waiting: float = 0.0
    running: float = 0.0
    site: web.TCPSite | None = None


@dataclass
class FaultPods:
    """Pods on 127.0.77.1.., each answering /metrics as its `mode` says."""

    port: int = 0
    pods: dict[str, Pod] = field(default_factory=dict)  # pod name -> pod
    by_host: dict[str, Pod] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    scrapes: int = 0

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        self.scrapes += 1
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        pod = self.by_host[sockname[0]]
        mode = pod.mode
        if mode == "ok":
            return web.Response(text=vllm_body(pod.waiting, pod.running))
        if mode == "hang":
            await self.release.wait()
        if mode.startswith("http-"):
            return web.Response(text="engine error", status=int(mode.removeprefix("http-")))
        if mode == "empty":
            return web.Response(body=b"")
        if mode in BODIES:
            return web.Response(body=BODIES[mode], content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        if mode == "short-body":
            response.content_length = 10_000  # promises more than is sent, then closes
            await response.prepare(request)
            await response.write(vllm_body(5).encode()[:100])
            assert request.transport is not None
            request.transport.close()
            return response
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"# HELP vllm:num_requests_waiting Number of requests waiting\n")
        if mode == "reset-after-headers":
            transport = request.transport
            assert transport is not None
            raw = transport.get_extra_info("socket")
            # SO_LINGER 0: close sends RST, as a pod killed mid-answer does.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return response
        if mode == "hang-after-headers":
            await self.release.wait()
        if mode == "drip":
            while not self.release.is_set():
                await response.write(b"#")
                await asyncio.sleep(0.05)
        return response

    def targets(self) -> list[ScrapeTarget]:
        return [ScrapeTarget(name, pod.host, self.port) for name, pod in self.pods.items()]

    def k8s_pods(self) -> list[dict[str, Any]]:
        """The pods as the loop lists them: Ready, with their IP."""
        return [
            {
                "metadata": {"name": name},
                "status": {
                    "phase": "Running",
                    "podIP": pod.host,
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
            for name, pod in self.pods.items()
        ]

    async def vanish(self, name: str) -> None:
        """The pod is deleted after the listing: nothing listens on its IP any more."""
        pod = self.pods[name]
        assert pod.site is not None
        await pod.site.stop()
        pod.mode = "vanished"


@contextlib.asynccontextmanager
async def fault_pods(modes: list[str]) -> AsyncIterator[FaultPods]:
    pods = FaultPods()
    app = web.Application()
    app.router.add_get("/metrics", pods.metrics)
    # Handlers still blocked when the test ends are cancelled after 0.1 s.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    try:
        for i, mode in enumerate(modes):
            pod = Pod(host=f"{SUBNET}.{i + 1}", mode=mode)
            pod.site = web.TCPSite(runner, pod.host, pods.port)
            await pod.site.start()
            if pods.port == 0:
                pods.port = pod.site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            name = f"pod-{i}"
            pods.pods[name] = pod
            pods.by_host[pod.host] = pod
        for name, pod in pods.pods.items():
            if pod.mode == "vanished":
                pod.mode = "ok"
                await pods.vanish(name)
        yield pods
    finally:
        pods.release.set()
        await runner.cleanup()


def kind(result: object) -> FailureKind:
    assert isinstance(result, MetricFailure), result
    return result.kind


# --- scrape: every fault is a failure with its kind -----------------------------------


def test_every_fault_is_a_failure_of_its_kind_and_the_scrape_ends_by_its_deadline() -> None:
    async def main() -> tuple[dict[str, Any], float]:
        async with fault_pods(["ok", *FAULTS]) as pods:
            pods.pods["pod-0"].waiting = 7
            started = time.monotonic()
            async with Scraper(timeout_s=1.0, deadline_s=3.0) as scraper:
                results = await scraper.scrape(pods.targets(), VLLM_METRICS)
            return results, time.monotonic() - started

    results, elapsed = asyncio.run(main())
    assert isinstance(results["pod-0"], QueueReading) and results["pod-0"].waiting == 7
    got = {FAULTS[i]: kind(results[f"pod-{i + 1}"]) for i in range(len(FAULTS))}
    assert got == EXPECTED
    # The hanging pods use their 1 s each, concurrently; nothing waits for the 3 s deadline.
    assert elapsed < 3.0, elapsed
    print(f"{len(FAULTS)} faults + 1 ok pod scraped in {elapsed:.2f}s (request timeout 1 s)")


def test_a_line_of_megabytes_is_refused_before_the_regular_expressions_see_it() -> None:
    # 8 MB of one unclosed label value took the line grammar 1 s of event-loop time, which
    # no deadline can interrupt; refused by length it costs a scan.
    body = BODIES["one-huge-line"].decode()
    started = time.perf_counter()
    result = read_queue(body, VLLM_METRICS)
    spent = time.perf_counter() - started
    assert kind(result) is FailureKind.MALFORMED
    assert "characters, over the 65536 read per line" in str(result)
    assert spent < 0.5, spent


def test_many_series_name_a_few_in_the_message() -> None:
    body = "".join(f'vllm:num_requests_waiting{{engine="{i}"}} NaN\n' for i in range(10_000))
    result = read_queue(body, VLLM_METRICS)
    assert kind(result) is FailureKind.NOT_FINITE
    assert len(str(result)) < 200 and "(10000 series)" in str(result)


# --- the deadline, however many pods hang ---------------------------------------------


def test_scrape_time_is_bounded_by_the_deadline_however_many_pods_hang() -> None:
    # 60 hanging pods (no answer, headers then nothing, a byte every 50 ms), 8 workers,
    # 30 s per request: without the deadline, 8 rounds of 30 s = 4 minutes.
    deadline = 1.0

    async def main() -> tuple[dict[str, Any], float]:
        modes = ["ok", *(HANGING[i % 3] for i in range(60))]
        async with fault_pods(modes) as pods:
            started = time.monotonic()
            async with Scraper(timeout_s=30, concurrency=8, deadline_s=deadline) as scraper:
                results = await scraper.scrape(pods.targets(), VLLM_METRICS)
            return results, time.monotonic() - started

    results, elapsed = asyncio.run(main())
    assert isinstance(results["pod-0"], QueueReading)
    missed = [r for r in results.values() if isinstance(r, MetricFailure)]
    assert len(missed) == 60 and all(r.kind is FailureKind.TIMEOUT for r in missed)
    assert all("cycle deadline" in r.detail for r in missed)
    print(f"60 hanging pods: scrape returned after {elapsed:.2f}s (deadline {deadline:g}s)")
    assert elapsed < deadline + 2.0, elapsed


@dataclass(frozen=True)
class FakeEngine:
    port: int
    metrics_path: str = "/metrics"
    metric_names: MetricNames = VLLM_METRICS


@dataclass
class Recorded:
    replicas: list[int] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    rec = Recorded()

    def event(api: object, body: object, reason: str, message: str) -> None:
        rec.events.append((reason, message))

    monkeypatch.setattr(loop_module, "post_event", event)
    yield rec


def make_loop(rec: Recorded, clock: Callable[[], float]) -> AutoscalerLoop:
    loop = AutoscalerLoop(api=client.ApiClient(), config=PlatformConfig(), clock=clock)
    # The Kubernetes writes, recorded instead of sent.
    loop._write_replicas = lambda key, replicas: rec.replicas.append(replicas)  # type: ignore[method-assign]
    loop._write_status = lambda key, status, observed: rec.statuses.append(status)  # type: ignore[method-assign]
    return loop


def md_body(name: str = "m") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "generation": 1}, "spec": {}}


@dataclass
class Cycles:
    """Runs the operator's per-ModelDeployment pass against fault pods, as the loop does
    each poll, keeping the Deployment's replicas and the ModelDeployment's status as the
    recorded writes set them."""

    loop: AutoscalerLoop
    pods: FaultPods
    policy: ScalingPolicy
    replicas: int
    rec: Recorded
    zero_after: float | None = None
    seen: list[int] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)

    async def run(self, scraper: Scraper, demand: Demand | None = None) -> None:
        before, statuses = len(self.rec.replicas), len(self.rec.statuses)
        await self.loop.scale_one(
            scraper,
            md_body() | {"status": self.status},
            "vllm",
            self.policy,
            {"spec": {"replicas": self.replicas}},
            self.pods.k8s_pods() if self.replicas else [],
            zero_after=self.zero_after,
            demand=demand,
        )
        if len(self.rec.replicas) > before:
            self.replicas = self.rec.replicas[-1]
        if len(self.rec.statuses) > statuses:
            self.status = self.status | self.rec.statuses[-1]
        self.seen.append(self.replicas)


@pytest.fixture
def engine_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The loop asks engine_for(spec.engine) where to scrape; here: the fault pods' port."""
    port = [0]
    monkeypatch.setattr(loop_module, "engine_for", lambda name: FakeEngine(port[0]))
    yield port


# --- the decision under faults: hold, never down --------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
def test_a_faulty_pod_holds_the_replicas_past_the_scale_down_window(
    fault: str, recorded: Recorded, engine_port: list[int]
) -> None:
    # 4 replicas, 3 pods report an empty queue (alone: scale down after the 60 s window),
    # the 4th is broken. Five polls 30 s apart span 2 windows: never below 4.
    now = [0.0]
    policy = ScalingPolicy(1, 8, 1, scale_down_window_s=60)

    async def main() -> Cycles:
        async with (
            fault_pods(["ok", "ok", "ok", fault]) as pods,
            Scraper(timeout_s=0.3, deadline_s=1.0) as scraper,
        ):
            engine_port[0] = pods.port
            cycles = Cycles(make_loop(recorded, lambda: now[0]), pods, policy, 4, recorded)
            for _ in range(5):
                await cycles.run(scraper)
                now[0] += 30
            return cycles

    cycles = asyncio.run(main())
    assert cycles.seen == [4] * 5, cycles.seen
    assert recorded.replicas == []
    condition = recorded.statuses[-1]["conditions"][0]
    assert (condition["type"], condition["status"]) == ("ScalingActive", "False")
    assert condition["reason"] == "MetricsUnavailable"
    assert f"pod-3: {EXPECTED[fault]}" in condition["message"], condition["message"]
    assert "queueDepth" not in recorded.statuses[-1]["autoscaler"]  # unknown is not 0
    json.dumps(recorded.statuses[-1], allow_nan=False)  # a status the API server takes


def test_the_same_pods_all_healthy_do_scale_down(
    recorded: Recorded, engine_port: list[int]
) -> None:
    # The control for the test above: without the fault the window passes and 4 goes down.
    now = [0.0]

    async def main() -> Cycles:
        async with fault_pods(["ok"] * 4) as pods, Scraper(timeout_s=1.0) as scraper:
            engine_port[0] = pods.port
            policy = ScalingPolicy(1, 8, 1, scale_down_window_s=60)
            cycles = Cycles(make_loop(recorded, lambda: now[0]), pods, policy, 4, recorded)
            for _ in range(5):
                await cycles.run(scraper)
                now[0] += 30
            return cycles

    cycles = asyncio.run(main())
    assert cycles.seen == [4, 4, 2, 1, 1], cycles.seen
    assert recorded.statuses[-1]["conditions"][0]["status"] == "True"


def test_a_pod_deleted_between_listing_and_scrape_holds(
    recorded: Recorded, engine_port: list[int]
) -> None:
    now = [0.0]

    async def main() -> Cycles:
        async with fault_pods(["ok"] * 3) as pods, Scraper(timeout_s=1.0) as scraper:
            engine_port[0] = pods.port
            policy = ScalingPolicy(1, 8, 1, scale_down_window_s=60)
            cycles = Cycles(make_loop(recorded, lambda: now[0]), pods, policy, 3, recorded)
            listed = pods.k8s_pods()
            await pods.vanish("pod-1")  # after the listing, before the scrape
            cycles.pods.k8s_pods = lambda: listed  # type: ignore[method-assign]
            for _ in range(4):
                await cycles.run(scraper)
                now[0] += 40
            return cycles

    cycles = asyncio.run(main())
    assert cycles.seen == [3] * 4
    message = recorded.statuses[-1]["conditions"][0]["message"]
    assert "pod-1: Unreachable" in message and "1 of 3 ready pods" in message


def test_scaling_up_on_the_pods_that_answer_while_another_hangs(
    recorded: Recorded, engine_port: list[int]
) -> None:
    # A silent pod can only add to the queue: 12 waiting on the others is enough to go up.
    async def main() -> Cycles:
        async with (
            fault_pods(["ok", "hang"]) as pods,
            Scraper(timeout_s=0.3, deadline_s=1.0) as scraper,
        ):
            engine_port[0] = pods.port
            pods.pods["pod-0"].waiting = 12
            policy = ScalingPolicy(1, 6, 2)
            cycles = Cycles(make_loop(recorded, lambda: 0.0), pods, policy, 2, recorded)
            await cycles.run(scraper)
            return cycles

    cycles = asyncio.run(main())
    assert cycles.seen == [6]
    reason, message = recorded.events[-1]
    assert reason == "ScaleUp" and "never down while metrics are missing" in message


# --- one absurd queue -----------------------------------------------------------------


def test_one_pod_reporting_1e12_waiting_goes_to_max_in_steps_and_says_why(
    recorded: Recorded, engine_port: list[int]
) -> None:
    async def main() -> Cycles:
        async with fault_pods(["ok", "ok", "ok"]) as pods, Scraper(timeout_s=1.0) as scraper:
            engine_port[0] = pods.port
            pods.pods["pod-1"].waiting = 1e12
            pods.pods["pod-2"].waiting = 1
            policy = ScalingPolicy(1, 10, 2)
            now = [0.0]
            cycles = Cycles(make_loop(recorded, lambda: now[0]), pods, policy, 1, recorded)
            for _ in range(5):
                await cycles.run(scraper)
                now[0] += 5
            return cycles

    cycles = asyncio.run(main())
    # Believed (it may be a real flood) but within max, at the step caps' pace: +4, x2.
    assert cycles.seen == [5, 10, 10, 10, 10], cycles.seen
    reason, message = recorded.events[0]
    assert reason == "ScaleUp"
    assert "pod-1 reports 1e+12 waiting, counted as 20 each (alone enough for max 10)" in message
    assert "capped at max 10" in message and "step limited to +4" in message
    depth = recorded.statuses[-1]["autoscaler"]["queueDepth"]
    assert depth == 21  # 20 counted for pod-1, 1 for pod-2
    json.dumps(recorded.statuses[-1], allow_nan=False)


def test_absurd_values_on_every_pod_never_raise() -> None:
    policy = ScalingPolicy(1, 1000, 0.001)
    observation = Observation(
        waiting={f"p{i}": 1.7e308 for i in range(8)}, running={"p0": 1.7e308, "p1": 1.7e308}
    )
    # fsum of two 1.7e308 raised OverflowError here and ended the whole cycle.
    decision = decide(
        observation=observation,
        current_replicas=3,
        policy=policy,
        history=ScalingHistory(),
        now=0,
        pod_capacity=observation.saturated_capacity(),
    )
    assert decision.desired_replicas == 3 + policy.up_step(3) <= 1000
    assert decision.queue_depth is not None and decision.queue_depth == 8 * 1000 * 0.001
    assert "and 3 more waiting" in decision.message
    assert read_queue(two_series("1.7e308"), VLLM_METRICS) == MetricFailure(
        FailureKind.NOT_FINITE, "vllm:num_requests_waiting sums to more than a float holds"
    )


# --- the clock ------------------------------------------------------------------------


def test_the_loop_times_windows_with_the_monotonic_clock() -> None:
    loop = AutoscalerLoop(api=client.ApiClient(), config=PlatformConfig())
    assert loop.clock is time.monotonic


def wild_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """time.time() jumps a day forwards and backwards on every call."""
    calls = [0]
    real = time.time

    def jumping() -> float:
        calls[0] += 1
        return real() + (86400 if calls[0] % 2 else -86400)

    monkeypatch.setattr(time, "time", jumping)


@pytest.mark.parametrize("backwards", [False, True])
def test_clock_jumps_move_no_scale_down_window(
    backwards: bool, recorded: Recorded, engine_port: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Idle on 4 replicas with a 60 s window, polls 10 s apart. The wall clock jumps a day
    # either way on every read: nothing may move. With `backwards`, the loop's own clock
    # also goes back an hour after 30 s (an injected clock; time.monotonic cannot): the
    # window then restarts from the jump instead of holding for the hour.
    wild_wall_clock(monkeypatch)
    now = [0.0]
    jump_at, jump = 30.0, -3600.0

    async def main() -> tuple[Cycles, list[float]]:
        async with fault_pods(["ok"] * 4) as pods, Scraper(timeout_s=1.0) as scraper:
            engine_port[0] = pods.port
            policy = ScalingPolicy(1, 8, 1, scale_down_window_s=60)
            cycles = Cycles(make_loop(recorded, lambda: now[0]), pods, policy, 4, recorded)
            times = []
            for _ in range(16):
                times.append(now[0])
                await cycles.run(scraper)
                now[0] += 10
                if backwards and now[0] == jump_at:
                    now[0] += jump
            return cycles, times

    cycles, times = asyncio.run(main())
    first_down = next(t for t, r in zip(times, cycles.seen, strict=True) if r < 4)
    if backwards:
        # Not before one full window after the jump, and not an hour later either.
        assert jump_at + jump + 60 <= first_down <= jump_at + jump + 70, (times, cycles.seen)
    else:
        assert first_down == 60, (times, cycles.seen)


@pytest.mark.parametrize("backwards", [False, True])
def test_clock_jumps_move_no_scale_to_zero_idle_period(
    backwards: bool, recorded: Recorded, engine_port: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One idle replica, scaleToZeroAfterSeconds 120, polls 20 s apart: zero after 120 s
    # of the loop's clock. Wall-clock jumps change nothing; the loop's clock going back
    # an hour at 60 s restarts the idle period from there (not an hour and 2 min later).
    wild_wall_clock(monkeypatch)
    now = [0.0]
    jump_at, jump = 60.0, -3600.0

    async def main() -> tuple[Cycles, list[float]]:
        async with fault_pods(["ok"]) as pods, Scraper(timeout_s=1.0) as scraper:
            engine_port[0] = pods.port
            policy = ScalingPolicy(1, 4, 1)
            cycles = Cycles(
                make_loop(recorded, lambda: now[0]), pods, policy, 1, recorded, zero_after=120
            )
            times = []
            for _ in range(14):
                times.append(now[0])
                await cycles.run(scraper, Demand())
                now[0] += 20
                if backwards and now[0] == jump_at:
                    now[0] += jump
            return cycles, times

    cycles, times = asyncio.run(main())
    to_zero = next(t for t, r in zip(times, cycles.seen, strict=True) if r == 0)
    expected = jump_at + jump + 120 if backwards else 120
    assert to_zero == expected, (times, cycles.seen)
    assert cycles.seen[-1] == 0  # and it stays there without demand


def test_a_history_from_the_future_restarts_the_window() -> None:
    # Recorded at t=1000, then the clock reads 0: the entry is restamped to 0, so it
    # holds a scale-down for one window (60 s) from now, not for 1060 s.
    policy = ScalingPolicy(1, 8, 1, scale_down_window_s=60)
    history = ScalingHistory.assume(4, at=1000)
    idle = Observation(waiting={"a": 0.0, "b": 0.0})
    held = decide(observation=idle, current_replicas=4, policy=policy, history=history, now=0)
    assert held.desired_replicas == 4
    assert max(r.at for r in held.history.entries) == 0
    later = decide(
        observation=idle, current_replicas=4, policy=policy, history=held.history, now=60
    )
    assert later.desired_replicas == 2


# --- the gateways' demand under faults ------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (web.Response(status=500, text="oops"), "HTTP 500"),
        (web.Response(body=BODIES["binary"]), "UnicodeDecodeError"),
        (web.Response(text='{"models": [{"namespace": "ns", "name": "m", "held'), "JSONDecode"),
        (
            web.Response(
                text='{"models": [{"namespace": "ns", "name": "m", "held": 1' + "0" * 400 + "}]}"
            ),
            "held/inFlight must be integers in [0, 2^53]",
        ),
        (
            web.Response(
                text='{"models": [{"namespace": "ns", "name": "m", "idleSeconds": 1'
                + "0" * 400
                + "}]}"
            ),
            "idleSeconds must be a number >= 0",
        ),
        (
            web.Response(text='{"models": [{"namespace": "ns", "name": "m", "idleSeconds": NaN}]}'),
            "idleSeconds must be a number >= 0",
        ),
        (None, "TimeoutError"),
    ],
)
def test_a_broken_gateway_makes_demand_incomplete_and_never_raises(
    answer: web.Response | None, why: str
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if answer is None:
            await release.wait()
            return web.Response(text="{}")
        return answer

    async def main() -> Any:
        app = web.Application()
        app.router.add_get("/demand", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as session:
                return await read_demand(session, [f"http://127.0.0.1:{port}/demand"], 0.5)
        finally:
            release.set()
            await runner.cleanup()

    report = asyncio.run(main())
    assert not report.complete and report.by_model == {}
    assert len(report.failures) == 1 and why in report.failures[0], report.failures
    assert report.for_model(("ns", "m")) == Demand(complete=False)


def test_no_gateway_pod_in_the_demand_namespace_is_logged_once_per_change(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gateway_pod = {"metadata": {"name": "gw"}, "status": {"phase": "Running", "podIP": "10.1.2.3"}}
    listed: list[list[dict[str, Any]]] = [[], [], [gateway_pod], [gateway_pod], []]
    asked: list[tuple[str, str | None]] = []

    def list_objects(api: Any, version: str, kind: str, namespace: str, **kw: Any) -> Any:
        asked.append((namespace, kw.get("label_selector")))
        return listed.pop(0)

    monkeypatch.setattr(loop_module.kube, "list_objects", list_objects)
    config = PlatformConfig(gateway=GatewayConfig(demand_namespace="ai-platform"))
    loop = AutoscalerLoop(api=client.ApiClient(), config=config)
    caplog.set_level("INFO", logger=loop_module.log.name)
    found = [loop._gateway_pod_urls() for _ in range(5)]
    assert found == [[], [], ["http://10.1.2.3:9090/demand"], ["http://10.1.2.3:9090/demand"], []]
    assert {namespace for namespace, _ in asked} == {"ai-platform"}
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "INFO", "WARNING"], lines
    assert "no running gateway pod in namespace ai-platform" in lines[0][1]
    assert "gateway.demandNamespace" in lines[0][1]
    assert "reading demand from gateway pods in namespace ai-platform" in lines[1][1]


def test_an_idle_countdown_writes_the_status_once_not_every_poll(
    recorded: Recorded, engine_port: list[int]
) -> None:
    # One idle replica waiting out scaleToZeroAfterSeconds 600, polled every 5 s for a
    # minute: the status said "zero in 595s", "590s", ... and was written every poll.
    now = [0.0]

    async def main() -> Cycles:
        async with fault_pods(["ok"]) as pods, Scraper(timeout_s=1.0) as scraper:
            engine_port[0] = pods.port
            cycles = Cycles(
                make_loop(recorded, lambda: now[0]),
                pods,
                ScalingPolicy(1, 4, 1),
                1,
                recorded,
                zero_after=600,
            )
            for _ in range(12):
                await cycles.run(scraper, Demand())
                now[0] += 5
            return cycles

    cycles = asyncio.run(main())
    assert cycles.seen == [1] * 12
    assert len(recorded.statuses) == 1, [s["autoscaler"]["message"] for s in recorded.statuses]
    assert "idle, zero after 600s without requests" in recorded.statuses[0]["autoscaler"]["message"]


def test_a_cycle_over_many_model_deployments_with_hanging_pods_ends_by_the_deadline(
    recorded: Recorded, engine_port: list[int]
) -> None:
    # As the loop runs a cycle: every ModelDeployment's pass at once (asyncio.gather),
    # one Scraper shared (its connection pool of 64 too). 5 ModelDeployments x 20 pods
    # that hang in the three ways, 30 s per request: the cycle still ends by the deadline.
    deadline = 1.0

    async def main() -> float:
        modes = [HANGING[i % 3] for i in range(100)]
        async with (
            fault_pods(modes) as pods,
            Scraper(timeout_s=30, deadline_s=deadline) as scraper,
        ):
            engine_port[0] = pods.port
            loop = make_loop(recorded, lambda: 0.0)
            listed = pods.k8s_pods()
            policy = ScalingPolicy(1, 30, 1)
            started = time.monotonic()
            await asyncio.gather(
                *(
                    loop.scale_one(
                        scraper,
                        md_body(f"m{i}"),
                        "vllm",
                        policy,
                        {"spec": {"replicas": 20}},
                        listed[i * 20 : (i + 1) * 20],
                    )
                    for i in range(5)
                )
            )
            return time.monotonic() - started

    elapsed = asyncio.run(main())
    print(
        f"5 ModelDeployments x 20 hanging pods: cycle took {elapsed:.2f}s (deadline {deadline:g}s)"
    )
    assert recorded.replicas == []  # nobody scaled on missing data
    reasons = {s["conditions"][0]["reason"] for s in recorded.statuses}
    assert len(recorded.statuses) == 5 and reasons == {"MetricsUnavailable"}
    assert elapsed < deadline + 2.0, elapsed
