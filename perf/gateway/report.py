"""bench_gateway's report: per path and concurrency, latency, throughput and CPU; the
gateway's added latency against the goals; the conditions of the run."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from perf.proc import cpu_model
from perf.runs import git

from .measure import Phase
from .processes import ENGINE_HOST_BASE

P50_ADDED_MAX_S: Final = 0.001
P99_ADDED_MAX_S: Final = 0.005
THROUGHPUT_MIN: Final = 0.90


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  " + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def limit_of(direct: Phase, via: Phase, cores: int) -> str:
    """What most likely capped the gateway run, from the CPU it used."""
    if via.gateway_cores >= 0.9:
        return f"gateway CPU ({via.gateway_cores:.2f} of its 1 core)"
    if via.machine_cores >= 0.9 * cores:
        return f"machine CPU ({via.machine_cores:.2f} of {cores} cores busy)"
    if max([*via.client_cores, 0.0]) >= 0.9:
        return "a client process's CPU"
    return "none (engine service time)"


def report(phases: list[Phase], cores: int) -> None:
    print("\nPer path (window of each phase; latency in ms):")
    rows = []
    for p in phases:
        rows.append(
            [str(p.concurrency), p.path, str(p.requests), str(p.errors), f"{p.rps:.1f}",
             ms(p.ttft_p50), ms(p.ttft_p99), ms(p.total_p50), ms(p.total_p99),
             f"{p.gateway_cpu_s:.2f}" if p.path == "gateway" else "-",
             f"{p.gateway_rss_mib:.0f}/{p.gateway_hwm_mib:.0f}" if p.path == "gateway" else "-"]
        )  # fmt: skip
    print_table(
        ["streams", "path", "requests", "errors", "req/s", "TTFT p50", "TTFT p99",
         "total p50", "total p99", "gw CPU s", "gw RSS/peak MiB"],
        rows,
    )  # fmt: skip
    print("\nCPU in each window (cores = CPU seconds / wall seconds):")
    rows = []
    for p in phases:
        per_req = p.gateway_cpu_s / max(1, p.completed_in_window) * 1000
        rows.append(
            [str(p.concurrency), p.path, f"{p.machine_cores:.2f}",
             f"{p.gateway_cores:.2f}", f"{per_req:.2f}" if p.path == "gateway" else "-",
             f"{p.engines_cores:.2f}",
             f"{p.clients} x (" + ", ".join(f"{c:.2f}" for c in p.client_cores) + ")",
             f"{p.others_cores:.2f}", f"{p.steal_cores:.2f}"]
        )  # fmt: skip
    print_table(
        ["streams", "path", "machine", "gateway", "gw CPU ms/req", "engines", "clients",
         "others", "steal"],
        rows,
    )  # fmt: skip
    print(
        f"\nAdded by the gateway (gateway minus direct, ms) against the goals: p50 <= "
        f"{P50_ADDED_MAX_S * 1000:g} ms, p99 <= {P99_ADDED_MAX_S * 1000:g} ms, "
        f"throughput >= {THROUGHPUT_MIN:.0%} of direct:"
    )
    rows = []
    by = {(p.concurrency, p.round, p.path): p for p in phases}
    for c, r in sorted({(p.concurrency, p.round) for p in phases}):
        d, g = by.get((c, r, "direct")), by.get((c, r, "gateway"))
        if d is None or g is None:
            continue
        a50, a99 = g.ttft_p50 - d.ttft_p50, g.ttft_p99 - d.ttft_p99
        t50, t99 = g.total_p50 - d.total_p50, g.total_p99 - d.total_p99
        ratio = g.rps / d.rps if d.rps else 0.0
        ok = a50 <= P50_ADDED_MAX_S and a99 <= P99_ADDED_MAX_S and ratio >= THROUGHPUT_MIN
        rows.append(
            [str(c), f"{ms(a50)} {verdict(a50 <= P50_ADDED_MAX_S)}",
             f"{ms(a99)} {verdict(a99 <= P99_ADDED_MAX_S)}",
             f"{ms(t50)} {verdict(t50 <= P50_ADDED_MAX_S)}",
             f"{ms(t99)} {verdict(t99 <= P99_ADDED_MAX_S)}",
             f"{ratio:.1%} {verdict(ratio >= THROUGHPUT_MIN)}",
             f"{ms(g.hist_p50)} / {ms(g.hist_p99)}", verdict(ok),
             "-" if ok else limit_of(d, g, cores)]
        )  # fmt: skip
    print_table(
        ["streams", "TTFT p50", "TTFT p99", "total p50", "total p99", "req/s ratio",
         "gw histogram p50/p99", "overall", "limit seen"],
        rows,
    )  # fmt: skip
    print("\nOther processes in each window (cores; irq+softirq of the machine apart):")
    for p in phases:
        busiest = ", ".join(f"{name} {cores:.2f}" for name, cores in p.top_others) or "none"
        print(f"  {p.path:>7} x{p.concurrency:<4} irq+softirq {p.irq_cores:.2f}; {busiest}")
    errors = [p for p in phases if p.errors]
    for p in errors:
        print(f"  {p.path} x{p.concurrency}: {p.errors} errors, e.g. {p.error_samples[:2]}")
    noisy = [p for p in phases if p.others_cores > 0.3]
    for p in noisy:
        print(
            f"  NOISY: {p.path} x{p.concurrency}: other processes (and the kernel) used "
            f"{p.others_cores:.2f} cores during the window"
        )


def git_describe() -> str:
    rev = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "operator/openmodel/gateway",
                "operator/openmodel/simulator")  # fmt: skip
    return rev + (" (gateway/simulator modified in the work tree)" if dirty else "")


def print_conditions(args: argparse.Namespace, concurrencies: list[int]) -> int:
    cores = len(os.sched_getaffinity(0))
    load = Path("/proc/loadavg").read_text().split()[:3]
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    import aiohttp  # only for its version: the clients here do not use it

    print("Gateway benchmark", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    print(f"  machine: {cores} cores usable ({os.cpu_count()} online), {cpu_model()}, {mem}")
    print(f"  load average at start: {' '.join(load)} (1, 5, 15 min)")
    print(
        f"  python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"openmodel at {git_describe()}"
    )
    print(
        f"  engines: {args.engines} simulated vLLM processes (127.0.0.{ENGINE_HOST_BASE}.."
        f"{ENGINE_HOST_BASE + args.engines - 1}), {args.slots} slots, service time "
        f"{args.service_time:g} s, {args.tokens} tokens per stream (first after "
        f"{args.service_time * 0.1 * 1000:g} ms)"
    )
    clients = ", ".join(f"{c} streams: {max(1, min(args.clients, c))}" for c in concurrencies)
    print(f"  client processes: {clients}; own HTTP/1.1 client, asyncio, keep-alive")
    print(
        f"  each phase: {args.warmup:g} s warm-up, then {args.duration:g} s measured; "
        "direct (round-robin per request over the engines) then through the gateway"
    )
    return cores
