"""CPU seconds by process and for the whole machine around each timed step, and the
wait for a calm machine before one starts."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from perf.proc import cpu_seconds, machine_cpu
from perf.runs import note

OWN_IDLE_CORES = 0.3  # this benchmark's cluster and operator, idle enough to start a step
NOISY_CORES = 0.5  # other processes' load during a timed step that makes it unreliable
MACHINE = "machine, every process"
STEAL = "steal (the hypervisor ran others)"
OTHERS = "others on this machine"
THIS_SCRIPT = "bench (this script)"


def machine_probe(rounds: int = 3) -> float:
    """Seconds for a fixed piece of pure-Python work (best of `rounds`), taken before the
    control plane starts: runs at different hours can only be compared by their ratios
    unless the machine was as fast, and this says whether it was (the same code took 52 s
    at 1,000 one morning and 160 s one afternoon, the plain floor 37 s and 84 s)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        sum(i * i for i in range(5_000_000))
        best = min(best, time.perf_counter() - started)
    return best


def cpu_snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    snap = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t = os.times()
    snap[THIS_SCRIPT] = t.user + t.system
    machine = machine_cpu()
    snap[MACHINE], snap[STEAL] = machine.busy, machine.steal
    return snap


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    ours = sum(v for k, v in delta.items() if k not in (MACHINE, STEAL) and v == v)
    delta[OTHERS] = delta[MACHINE] - ours
    return delta


def wait_calm(pids: Mapping[str, int], cores: float, deadline: float, sample: float = 5.0) -> float:
    """Wait (at most `deadline` s) until, over a `sample` s window, processes outside this
    benchmark (and the hypervisor's steal) use less than `cores`, and the benchmark's own
    control plane and operator less than OWN_IDLE_CORES (still busy with the previous
    step, or starting up): either skews the next time measured. Returns the cores the
    others used in the last sample."""
    started = time.monotonic()
    while True:
        before = cpu_snapshot(pids)
        time.sleep(sample)
        delta = cpu_delta(before, cpu_snapshot(pids))
        others = max(0.0, (delta[OTHERS] + delta[STEAL]) / sample)
        own = sum(delta.get(name, 0.0) for name in pids) / sample
        if (others < cores and own < OWN_IDLE_CORES) or time.monotonic() - started > deadline:
            return others
        note(f"  others (and steal) use {others:.1f} cores, this cluster {own:.1f}; waiting")
