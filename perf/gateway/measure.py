"""One measured phase of bench_gateway: clients on one path (straight to the engines or
through the gateway) at one concurrency, their latencies, and the CPU every process and
the machine used in the window, with the gateway's own added-latency histogram."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from perf.proc import (
    MachineCpu,
    all_processes_cpu,
    cpu_seconds,
    machine_cpu,
    process_tree,
    tree_cpu_seconds,
    tree_memory_bytes,
)

from .client import ClientResult, ClientSpec
from .processes import BenchError, Child, Processes, http_get

ADDED_METRIC: Final = "openmodel_gateway_added_latency_seconds"
CLIENT_SPAWN_S: Final = 1.5  # time given to client processes to start before the warm-up


def added_buckets(metrics_text: str) -> dict[float, float]:
    """le -> cumulative count of the added-latency histogram, summed over label sets."""
    buckets: dict[float, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith(ADDED_METRIC + "_bucket{"):
            continue
        labels, value = line.rsplit(" ", 1)
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        bound = math.inf if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's estimate: linear within the bucket holding rank q * count."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # the highest finite bound, as Prometheus answers
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Phase:
    path: str  # "direct" or "gateway"
    concurrency: int
    window_s: float
    requests: int
    completed_in_window: int
    errors: int
    error_samples: list[str]
    ttft_p50: float
    ttft_p99: float
    total_p50: float
    total_p99: float
    clients: int
    client_cores: list[float]  # each client process's CPU / window
    engines_cores: float
    gateway_cores: float
    gateway_cpu_s: float
    gateway_rss_mib: float
    gateway_hwm_mib: float
    machine_cores: float  # busy CPU of the whole machine / window
    others_cores: float  # machine busy minus every process of the benchmark
    steal_cores: float
    irq_cores: float  # irq + softirq time of the machine (loopback traffic, mostly)
    top_others: list[tuple[str, float]]  # the busiest other processes, in cores
    hist_p50: float | None = None
    hist_p99: float | None = None
    hist_count: float = 0.0
    round: int = 0  # which direct/gateway pair of its concurrency (bench --rounds)

    @property
    def rps(self) -> float:
        return self.completed_in_window / self.window_s


@dataclass
class Sample:
    at: float  # monotonic
    ours: dict[int, float]  # pid -> CPU seconds, the benchmark's processes
    machine: MachineCpu
    buckets: dict[float, float]
    everyone: dict[int, tuple[str, float]]
    # The gateway's worker processes (counted in its entry of `ours`, not as others).
    gateway_workers: frozenset[int] = frozenset()


def top_others(s0: Sample, s1: Sample, window: float, n: int = 3) -> list[tuple[str, float]]:
    """The other processes' CPU in the window, grouped by command name, busiest first."""
    by_name: dict[str, float] = {}
    for pid, (name, cpu) in s1.everyone.items():
        if pid in s1.ours or pid in s1.gateway_workers:
            continue
        used = cpu - s0.everyone.get(pid, (name, 0.0))[1]
        if used > 0:
            by_name[name] = by_name.get(name, 0.0) + used / window
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1])
    return [(name, cores) for name, cores in ranked[:n] if cores >= 0.01]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


@dataclass
class Bench:
    args: argparse.Namespace
    procs: Processes
    engines: list[Child]
    targets: list[tuple[str, int]]
    gateway: Child
    gateway_url: str
    gateway_metrics_url: str  # /metrics is on the gateway's metrics port
    load_cpus: set[int] | None  # engines' and clients' CPUs with --pin-gateway

    def run_phase(self, path: str, concurrency: int, phase_no: int) -> Phase:
        args = self.args
        if path == "direct":
            targets = self.targets
        else:
            host, port = self.gateway_url.removeprefix("http://").rsplit(":", 1)
            targets = [(host, int(port))]
        n_clients = max(1, min(args.clients, concurrency))
        warm_at = time.time() + CLIENT_SPAWN_S
        start_at = warm_at + args.warmup
        end_at = start_at + args.duration
        clients: list[tuple[Child, Path]] = []
        first = 0
        for j, loops in enumerate(split(concurrency, n_clients)):
            out = self.procs.workdir / f"phase{phase_no}-client{j}.json"
            spec = ClientSpec(
                targets, loops, first, args.tokens, warm_at, start_at, end_at, str(out)
            )
            first += loops
            argv = [sys.executable, "-m", "perf.bench_gateway", "--client",
                    json.dumps(asdict(spec))]  # fmt: skip
            name = f"phase{phase_no}-client{j}"
            clients.append((self.procs.start(name, argv, self.load_cpus), out))
        watched = [c for c, _ in clients] + [self.gateway] + self.engines

        def sample() -> Sample:
            buckets = added_buckets(http_get(self.gateway_metrics_url + "/metrics")[1])
            cpu = {c.pid: cpu_seconds(c.pid, missing=0.0) for c in watched}
            # With gateway.workers > 1 the gateway is a supervisor and its workers.
            cpu[self.gateway.pid] = tree_cpu_seconds(self.gateway.pid, missing=0.0)
            cpu[os.getpid()] = cpu_seconds(os.getpid(), missing=0.0)
            workers = frozenset(process_tree(self.gateway.pid)[1:])
            return Sample(
                time.monotonic(), cpu, machine_cpu(), buckets, all_processes_cpu(), workers
            )

        sleep_until(start_at)
        s0 = sample()
        sleep_until(end_at)
        s1 = sample()
        t0, cpu0, hist0 = s0.at, s0.ours, s0.buckets
        t1, cpu1, hist1 = s1.at, s1.ours, s1.buckets
        busy0, steal0, irq0 = s0.machine.busy, s0.machine.steal, s0.machine.irq
        busy1, steal1, irq1 = s1.machine.busy, s1.machine.steal, s1.machine.irq
        rss, hwm = (value / 2**20 for value in tree_memory_bytes(self.gateway.pid))
        for child, _ in clients:
            try:
                child.popen.wait(30.0 + args.service_time * 10)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{child.name} did not finish:\n{child.log_tail()}") from None
            if child.popen.returncode != 0:
                raise BenchError(f"{child.name} failed:\n{child.log_tail()}")
            self.procs.stop(child)
        merged = ClientResult()
        for _, out in clients:
            part = ClientResult(**json.loads(out.read_text()))
            merged.ttft += part.ttft
            merged.total += part.total
            merged.completed_in_window += part.completed_in_window
            merged.errors += part.errors
            merged.error_samples += part.error_samples
        if not merged.total:
            raise BenchError(f"{path} x{concurrency}: no request completed: {merged.error_samples}")
        window = t1 - t0

        def cores(pid: int) -> float:
            return (cpu1.get(pid, 0.0) - cpu0.get(pid, 0.0)) / window

        ours = sum(cores(pid) for pid in cpu1)
        machine = (busy1 - busy0) / window
        delta = {b: hist1.get(b, 0.0) - hist0.get(b, 0.0) for b in hist1}
        phase = Phase(
            path=path,
            concurrency=concurrency,
            window_s=window,
            requests=len(merged.total),
            completed_in_window=merged.completed_in_window,
            errors=merged.errors,
            error_samples=merged.error_samples[:5],
            ttft_p50=percentile(merged.ttft, 0.50),
            ttft_p99=percentile(merged.ttft, 0.99),
            total_p50=percentile(merged.total, 0.50),
            total_p99=percentile(merged.total, 0.99),
            clients=n_clients,
            client_cores=[cores(c.pid) for c, _ in clients],
            engines_cores=sum(cores(e.pid) for e in self.engines),
            gateway_cores=cores(self.gateway.pid),
            gateway_cpu_s=cores(self.gateway.pid) * window,
            gateway_rss_mib=rss,
            gateway_hwm_mib=hwm,
            machine_cores=machine,
            others_cores=max(0.0, machine - ours),
            steal_cores=(steal1 - steal0) / window,
            irq_cores=(irq1 - irq0) / window,
            top_others=top_others(s0, s1, window),
            hist_count=delta.get(math.inf, 0.0),
        )
        if path == "gateway":
            phase.hist_p50 = histogram_quantile(0.50, delta)
            phase.hist_p99 = histogram_quantile(0.99, delta)
        return phase
