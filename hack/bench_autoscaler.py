"""Benchmark one autoscaler cycle (scrape + decide) over many pods, on loopback only.

A child process serves N simulated engines (openmodel.simulator), one per address
127.77.x.y, all on the same port, the way pods share a port on their own IPs. This
process, the one measured, then runs:

  1. the autoscaler: ``Scraper.scrape`` + ``Observation.from_results`` + ``decide``,
     first on fresh connections ("cold"), then with keep-alive connections ("warm");
  2. the baseline: a naive sequential ``urllib.request`` GET of every pod, parsed with the
     same ``read_queue``;
  3. the same two with ``--hanging`` more pods that accept connections and never answer
     (one cycle each, 2 s request timeout): what a few stuck pods cost each approach;
  4. micro-benchmarks: ``decide`` alone over N pods, and ``read_queue`` against the strict
     full parser on a real-sized (50 KB) vLLM body.

CPU is ``time.process_time()`` of this process (the child's serving CPU is not counted);
wall time is printed alongside. Everything is bounded by ``--max-seconds`` (SIGALRM).

    .venv/bin/python hack/bench_autoscaler.py [--pods 500] [--cycles 5] [--engine vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from types import FrameType

from openmodel.autoscaler import (
    Observation,
    QueueReading,
    ScalingHistory,
    ScalingPolicy,
    Scraper,
    ScrapeTarget,
    decide,
    read_queue,
)
from openmodel.engine_metrics.exposition import parse_exposition
from openmodel.engines import ENGINES
from openmodel.simulator import start_simulator
from openmodel.simulator.exposition import EngineStats, render_vllm

METRIC_NAMES = {name: engine.metric_names for name, engine in ENGINES.items()}

PREFIX = "127.77"


def pod_address(index: int) -> str:
    return f"{PREFIX}.{index // 250}.{index % 250 + 1}"


# --- the child: N simulators ----------------------------------------------------------


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the client gives up and closes
    writer.close()


async def serve(pods: int, hanging: int, engine: str) -> None:
    first = await start_simulator(engine, pod_address(0), 0, slots=4, service_time=1.0, model="m")
    handles = [first]
    for i in range(1, pods):
        handles.append(await start_simulator(engine, pod_address(i), first.port, 4, 1.0, "m"))
    # Bench only: give each pod a queue without generating load, so the numbers vary.
    for i, handle in enumerate(handles):
        handle.stats.waiting = i % 5
    stuck = [
        await asyncio.start_server(never_answer, pod_address(i), first.port)
        for i in range(pods, pods + hanging)
    ]
    print(f"ready {first.port}", flush=True)
    # Serve until the parent closes our stdin (or dies).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for server in stuck:
        server.close()
    for handle in handles:
        await handle.stop()


# --- the parent: measurements ---------------------------------------------------------


@contextlib.contextmanager
def measured(into: list[tuple[float, float]]) -> Iterator[None]:
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    into.append((time.process_time() - cpu, time.perf_counter() - wall))


def report(label: str, runs: list[tuple[float, float]], pods: int) -> None:
    cpu = [c for c, _ in runs]
    wall = [w for _, w in runs]
    print(
        f"  {label:<34} cpu {statistics.median(cpu) * 1000:8.1f} ms"
        f" ({statistics.median(cpu) / pods * 1e6:6.1f} µs/pod)"
        f"   wall {statistics.median(wall) * 1000:8.1f} ms   (median of {len(runs)})"
    )


async def autoscaler_cycles(
    targets: list[ScrapeTarget], engine: str, cycles: int, concurrency: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], str]:
    names = METRIC_NAMES[engine]
    policy = ScalingPolicy(min_replicas=1, max_replicas=1000, target_queue_depth=4)
    history = ScalingHistory()
    cold: list[tuple[float, float]] = []
    warm: list[tuple[float, float]] = []
    message = ""
    for cycle in range(cycles + 1):
        # A new Scraper (new connection pool) for the cold measurement, reuse after.
        if cycle == 0:
            scraper = Scraper(timeout_s=10, concurrency=concurrency, deadline_s=60)
        with measured(cold if cycle == 0 else warm):
            results = await scraper.scrape(targets, names)
            observation = Observation.from_results(results)
            decision = decide(
                observation=observation,
                current_replicas=len(targets),
                policy=policy,
                history=history,
                now=float(cycle * 15),
            )
        history = decision.history
        failed = [pod for pod, r in results.items() if not isinstance(r, QueueReading)]
        if failed:
            raise SystemExit(f"{len(failed)} pods failed, e.g. {results[failed[0]]}")
        message = decision.message
    await scraper.close()
    return cold, warm, message


def baseline_cycle(targets: list[ScrapeTarget], engine: str, timeout_s: float) -> int:
    """Sequential scrape; returns how many pods failed."""
    names = METRIC_NAMES[engine]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    failed = 0
    for target in targets:
        try:
            with opener.open(str(target.url), timeout=timeout_s) as response:
                result = read_queue(response.read().decode(), names)
        except OSError:  # URLError and socket timeouts
            failed += 1
            continue
        failed += not isinstance(result, QueueReading)
    return failed


async def hanging_cycle(targets: list[ScrapeTarget], engine: str, concurrency: int) -> str:
    async with Scraper(timeout_s=2, concurrency=concurrency, deadline_s=60) as scraper:
        results = await scraper.scrape(targets, METRIC_NAMES[engine])
    decision = decide(
        observation=Observation.from_results(results),
        current_replicas=len(targets),
        policy=ScalingPolicy(min_replicas=1, max_replicas=1000, target_queue_depth=4),
        history=ScalingHistory(),
        now=0.0,
    )
    return f"{decision.reason}: {decision.message[:90]}..."


def time_per_call(fn: Callable[[], object], repeat: int) -> float:
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def micro(pods: int) -> None:
    observation = Observation(waiting={f"pod-{i}": float(i % 5) for i in range(pods)})
    policy = ScalingPolicy(min_replicas=1, max_replicas=1000, target_queue_depth=4)
    history = ScalingHistory()
    for t in range(20):  # a full 300 s window of history
        history = decide(
            observation=observation, current_replicas=pods, policy=policy,
            history=history, now=t * 15.0,
        ).history  # fmt: skip

    def one_decision() -> object:
        return decide(
            observation=observation, current_replicas=pods, policy=policy,
            history=history, now=300.0,
        )  # fmt: skip

    per_decision = time_per_call(one_decision, 200)
    print(f"  decide() over {pods} pods: {per_decision * 1e6:.1f} µs")
    stats = EngineStats(slots=4, waiting=3)
    filler = "\n".join(
        f'vllm:filler_{f}_bucket{{engine="0",le="{b}.0",model_name="m"}} 0.0'
        for f in range(30)
        for b in range(25)
    )
    body = filler + "\n" + render_vllm(stats, "m")
    fast = time_per_call(lambda: read_queue(body, METRIC_NAMES["vllm"]), 200)
    full = time_per_call(lambda: parse_exposition(body), 20)
    print(
        f"  {len(body) // 1024} KB vLLM body: read_queue {fast * 1e6:7.1f} µs,"
        f" full strict parse {full * 1e6:8.1f} µs (x{full / fast:.0f})"
    )


def parent(args: argparse.Namespace) -> None:
    command = [sys.executable, __file__, "--serve", "--engine", args.engine]
    command += ["--pods", str(args.pods), "--hanging", str(args.hanging)]
    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        started = time.perf_counter()
        line = child.stdout.readline()
        if not line.startswith("ready "):
            raise SystemExit(f"simulators did not start: {line!r}")
        port = int(line.split()[1])
        print(
            f"{args.pods} simulated {args.engine} pods on {PREFIX}.x.y:{port}"
            f" (started in {time.perf_counter() - started:.1f} s, in a separate process)"
        )
        targets = [ScrapeTarget(f"pod-{i}", pod_address(i), port) for i in range(args.pods)]

        cold, warm, message = asyncio.run(
            autoscaler_cycles(targets, args.engine, args.cycles, args.concurrency)
        )
        baseline: list[tuple[float, float]] = []
        for _ in range(args.baseline_cycles):
            with measured(baseline):
                assert baseline_cycle(targets, args.engine, timeout_s=10) == 0

        print(f"one cycle over {args.pods} pods (this process only):")
        report(f"autoscaler, cold (concurrency {args.concurrency})", cold, args.pods)
        report("autoscaler, warm (keep-alive)", warm, args.pods)
        report("baseline: sequential urllib", baseline, args.pods)
        speedup_cpu = statistics.median(c for c, _ in baseline) / statistics.median(
            c for c, _ in warm
        )
        speedup_wall = statistics.median(w for _, w in baseline) / statistics.median(
            w for _, w in warm
        )
        print(f"  warm vs baseline: {speedup_cpu:.1f}x less CPU, {speedup_wall:.1f}x less wall")
        print(f"  last decision: {message}")
        if args.hanging:
            with_stuck = targets + [
                ScrapeTarget(f"stuck-{i}", pod_address(i), port)
                for i in range(args.pods, args.pods + args.hanging)
            ]
            ours: list[tuple[float, float]] = []
            with measured(ours):
                outcome = asyncio.run(hanging_cycle(with_stuck, args.engine, args.concurrency))
            naive: list[tuple[float, float]] = []
            with measured(naive):
                failed = baseline_cycle(with_stuck, args.engine, timeout_s=2)
            print(f"with {args.hanging} more pods that never answer (2 s request timeout):")
            report("autoscaler (cold)", ours, len(with_stuck))
            report(f"baseline ({failed} failed)", naive, len(with_stuck))
            print(f"  decision: {outcome}")
        print("micro-benchmarks:")
        micro(args.pods)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--cycles", type=int, default=5, help="warm autoscaler cycles")
    parser.add_argument("--baseline-cycles", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--hanging", type=int, default=10, help="pods that never answer")
    parser.add_argument("--engine", choices=sorted(METRIC_NAMES), default="vllm")
    parser.add_argument("--max-seconds", type=int, default=300, help="hard bound on the run")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pods < 1 or args.hanging < 0 or args.pods + args.hanging > 250 * 250:
        parser.error("--pods >= 1, --hanging >= 0, together at most 62500")
    if args.serve:
        asyncio.run(serve(args.pods, args.hanging, args.engine))
        return

    def out_of_time(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"benchmark exceeded --max-seconds={args.max_seconds}")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(args.max_seconds)
    parent(args)


if __name__ == "__main__":
    main()
