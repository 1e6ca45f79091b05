"""Benchmark what the gateway adds: streamed chat completions sent straight to simulated
engines (the baseline, round-robin over them) and through the gateway, in the same run.

Everything is on loopback and started here as separate processes: N simulated vLLM
engines (``python -m openmodel.simulator``, one per address 127.0.0.21.., all on one
port, many slots and a fixed service time, so the engine's queue is never the limit), the
gateway (``python -m openmodel.gateway --routes FILE``, static routes to those engines,
default platform config) and the load generator: client processes (this script with
``--client``: perf.gateway.client) each running closed loops of streamed chat completions
over keep-alive connections, with a small HTTP/1.1 client of its own (cheaper per request
than aiohttp's, so the clients take as little CPU as possible from the 2 cores they share
with the rest).

For each concurrency (1, 64, 512 streams) it runs a warm-up, then a timed window, first
straight to the engines, then through the gateway, and reports per path: p50/p99 time to
first token (the first content delta) and total time, requests per second (completed in
the window), and the CPU every process used in the window (from /proc); for the gateway
also its RSS and its own ``openmodel_gateway_added_latency_seconds`` histogram (the
window's delta, quantiles estimated as Prometheus's histogram_quantile does). Then the
added latency (gateway minus direct) and PASS/MISS against the goals: p50 added <= 1 ms,
p99 added <= 5 ms (time to first token; total time shown too), throughput >= 90 % of direct.

    .venv/bin/python -m perf.bench_gateway [--quick] [--concurrency 1,64,512]
        [--duration 10] [--warmup 2] [--engines 4] [--clients 2] [--tokens 16]
        [--service-time 0.1] [--pin-gateway] [--keep] [--rounds 1] [--loop uvloop] [--workers 1]
        [--vllm-bench [VLLM_ENV]] [--vllm-concurrency 1,64] [--vllm-prompts 400]

``--rounds N`` alternates direct and gateway N times at each concurrency (each pair
reported on its own). ``--vllm-bench`` then runs vLLM's own ``vllm bench serve`` (from
the vLLM CPU environment, found as the e2e tests find it when no directory is given)
against one engine straight and through a second gateway routed to that engine only,
alternated ``--rounds`` times (perf/gateway/vllm_bench.py).

``--pin-gateway`` gives the gateway the last CPU to itself and runs the engines and the
clients on the others, in both paths: the gateway as on a node of its own, so that its
cost shows as latency and CPU rather than as CPU taken from the engines and clients.

Exit status: 0 whether the goals are met or not (a benchmark reports, it does not gate),
2 on an error (a process that did not start, a client that failed), 130 when interrupted.
Every process it started is stopped on the way out, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from perf.gateway.client import ClientSpec, run_client
from perf.gateway.measure import Bench, Phase
from perf.gateway.processes import (
    BenchError,
    Processes,
    engine_targets,
    start_engines,
    start_gateway,
)
from perf.gateway.report import ms, print_conditions, report
from perf.gateway.vllm_bench import print_vllm_bench, run_vllm_bench, tokenizer_dir
from perf.runs import remove_or_keep

from harness.process_nodes import vllm_env_dir


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s windows, 1 s warm-up")
    parser.add_argument("--concurrency", default="1,64,512", help="streams, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4096)
    parser.add_argument("--service-time", type=float, default=0.1)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, default=2, help="client processes (at most)")
    parser.add_argument(
        "--pin-gateway",
        action="store_true",
        help="the gateway alone on the last CPU, engines and clients on the others",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--rounds", type=int, default=1, help="direct/gateway pairs per level")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="the gateway's gateway.workers (processes sharing its port)",
    )
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the gateway's event loop")  # fmt: skip
    parser.add_argument(
        "--vllm-bench", nargs="?", const="", default=None, metavar="VLLM_ENV",
        help="also run `vllm bench serve` (VLLM_ENV: the vLLM CPU environment)",
    )  # fmt: skip
    parser.add_argument("--vllm-concurrency", default="1,64")
    parser.add_argument("--vllm-prompts", type=int, default=400)
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: one client process
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 3.0), min(args.warmup, 1.0)
    return args


def cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(gateway's CPUs, everyone else's): with --pin-gateway the gateway gets the last CPU
    to itself, as it would on a node of its own; the direct path runs on the others too."""
    cpus = os.sched_getaffinity(0)
    if not pin or len(cpus) < 2:
        return None, None
    last = max(cpus)
    return {last}, cpus - {last}


def run_vllm_benches(
    args: argparse.Namespace,
    procs: Processes,
    targets: list[tuple[str, int]],
    gateway_cpus: set[int] | None,
    loop_args: list[str],
) -> None:
    """`vllm bench serve` against engine 0, straight and through a gateway routed to it
    alone, alternated `--rounds` times per concurrency."""
    env = Path(args.vllm_bench) if args.vllm_bench else vllm_env_dir()
    tokenizer = tokenizer_dir(env, procs.workdir)
    _, one_url, _ = start_gateway(
        procs,
        targets[:1],
        gateway_cpus,
        {"workers": args.workers},
        loop_args,
        name="gateway-one-engine",
    )
    direct_url = f"http://{targets[0][0]}:{targets[0][1]}"
    results = []
    for concurrency in [int(c) for c in args.vllm_concurrency.split(",") if c.strip()]:
        for _ in range(args.rounds):
            for path, url in (("direct", direct_url), ("gateway", one_url)):
                result = run_vllm_bench(
                    env, tokenizer, url, path, concurrency, args.vllm_prompts, args.tokens,
                    procs.workdir,
                )  # fmt: skip
                results.append(result)
                print(
                    f"  vllm bench {path:>7} x{concurrency:<4} {result.rps:8.1f} req/s  "
                    f"TTFT p50 {result.ttft_p50_ms:.2f} p99 {result.ttft_p99_ms:.2f} ms",
                    flush=True,
                )
    print_vllm_bench(results)


def _raise_on_sigterm(signum: int, _: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        asyncio.run(run_client(ClientSpec(**json.loads(args.client))))
        return 0
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C / kill -INT must still stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cores = print_conditions(args, concurrencies)
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-bench-gateway-"))
    procs = Processes(workdir)
    try:
        gateway_cpus, load_cpus = cpu_split(args.pin_gateway)
        engines = start_engines(procs, args.engines, args.slots, args.service_time, load_cpus)
        targets = engine_targets(engines)
        loop_args = ["--loop", args.loop]
        gateway, url, metrics_url = start_gateway(
            procs, targets, gateway_cpus, {"workers": args.workers}, loop_args
        )
        print(f"  gateway: pid {gateway.pid} at {url} ({args.workers} worker(s)); "
              f"engines at port {targets[0][1]}")  # fmt: skip
        if gateway_cpus and load_cpus:
            print(
                f"  pinned: gateway on CPU {sorted(gateway_cpus)}, engines and clients on "
                f"{sorted(load_cpus)} (both paths)"
            )
        bench = Bench(args, procs, engines, targets, gateway, url, metrics_url, load_cpus)
        phases: list[Phase] = []
        for concurrency in concurrencies:
            for round_no in range(args.rounds):
                for path in ("direct", "gateway"):
                    phase = bench.run_phase(path, concurrency, len(phases))
                    phase.round = round_no
                    phases.append(phase)
                    print(
                        f"  {path:>7} x{concurrency:<4} {phase.rps:8.1f} req/s  "
                        f"TTFT p50 {ms(phase.ttft_p50)} p99 {ms(phase.ttft_p99)} ms  "
                        f"gateway {phase.gateway_cores:.2f} cores  errors {phase.errors}",
                        flush=True,
                    )
                    time.sleep(1.0)  # let the last streams' connections close
        report(phases, cores)
        if args.vllm_bench is not None:
            run_vllm_benches(args, procs, targets, gateway_cpus, loop_args)
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(f"\n  load average at the end: {load}")
        return 0
    except BenchError as e:
        print(f"bench_gateway: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_gateway: interrupted; stopping what it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        remove_or_keep(workdir, args.keep)


if __name__ == "__main__":
    sys.exit(main())
