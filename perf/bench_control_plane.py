"""Measure the local test cluster: warm start time (binaries built, nothing
running -> every component healthy and all KWOK nodes Ready) and the resident
memory of each component once up.

    .venv/bin/python -m perf.bench_control_plane [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ControlPlane, start_local_cluster
from harness.process import rss_bytes

SETTLE_SECONDS = 10.0  # let controllers finish their initial sync before reading RSS


def component_rss(plane: ControlPlane) -> dict[str, int]:
    """Each component's resident memory now, in bytes."""
    return {name: rss_bytes(c.pid) for name, c in plane.components.items()}


def one_run(workdir: Path) -> tuple[dict[str, float], dict[str, int]]:
    started = time.monotonic()
    cluster = start_local_cluster(workdir)
    all_ready = time.monotonic() - started
    plane = cluster.control_plane
    assert plane is not None
    try:
        time.sleep(SETTLE_SECONDS)
        rss = component_rss(plane)
    finally:
        cluster.stop()
    timings = {f"{name} healthy": t for name, t in plane.startup_seconds.items()}
    timings[f"+ {len(cluster.pool.node_names())} nodes Ready"] = all_ready
    return timings, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.bench_control_plane", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args(argv).runs
    all_timings: list[dict[str, float]] = []
    all_rss: list[dict[str, int]] = []
    for index in range(runs):
        with tempfile.TemporaryDirectory(prefix="openmodel-bench-") as workdir:
            timings, rss = one_run(Path(workdir))
        all_timings.append(timings)
        all_rss.append(rss)
        print(f"run {index + 1}: warm start {timings[list(timings)[-1]]:.1f}s", flush=True)

    print("\nwarm start, seconds since start (median / min / max):")
    for key in all_timings[0]:
        values = [t[key] for t in all_timings]
        print(f"  {key:<28} {statistics.median(values):6.1f} {min(values):6.1f} {max(values):6.1f}")
    print(f"\nRSS once up (+{SETTLE_SECONDS:.0f}s), MiB (median / min / max):")
    total = []
    for name in all_rss[0]:
        values = [r[name] / 2**20 for r in all_rss]
        print(
            f"  {name:<28} {statistics.median(values):6.0f} {min(values):6.0f} {max(values):6.0f}"
        )
    total = [sum(r.values()) / 2**20 for r in all_rss]
    print(f"  {'total':<28} {statistics.median(total):6.0f} {min(total):6.0f} {max(total):6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
