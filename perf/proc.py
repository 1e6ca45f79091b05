"""CPU and memory of processes and of the whole machine, from /proc."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, missing: float = float("nan")) -> float:
    """User + system CPU time of one process (all its threads); `missing` once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return missing
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a gateway's supervisor and its workers), from /proc."""
    tree, i = [pid], 0
    while i < len(tree):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{tree[i]}/task").iterdir():
                tree += [int(c) for c in (task / "children").read_text().split()]
        i += 1
    return tree


def tree_cpu_seconds(pid: int, missing: float = float("nan")) -> float:
    """`cpu_seconds` of `pid` and its descendants now (exited ones no longer count)."""
    if not Path(f"/proc/{pid}").exists():
        return missing
    return sum(cpu_seconds(p, missing=0.0) for p in process_tree(pid))


def tree_memory_bytes(pid: int) -> tuple[int, int]:
    """`memory_bytes` summed over `pid` and its descendants."""
    both = [memory_bytes(p) for p in process_tree(pid)]
    return sum(rss for rss, _ in both), sum(hwm for _, hwm in both)


def memory_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM): resident set size now and at its peak; (0, 0) once gone."""
    values = {"VmRSS": 0, "VmHWM": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


@dataclass(frozen=True)
class MachineCpu:
    """CPU seconds of the whole machine since boot (all cores)."""

    busy: float  # user..softirq, idle and iowait aside (guest time is within user/nice)
    steal: float  # the hypervisor ran others
    irq: float  # irq + softirq (loopback traffic, mostly)


def machine_cpu() -> MachineCpu:
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(ticks[:7]) - ticks[3] - ticks[4]
    steal = ticks[7] if len(ticks) > 7 else 0
    return MachineCpu(busy / CLK_TCK, steal / CLK_TCK, (ticks[5] + ticks[6]) / CLK_TCK)


def all_processes_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds) of every process on the machine."""
    found: dict[int, tuple[str, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        found[int(stat.parent.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return found


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def load_average() -> str:
    """The 1-minute load average, as /proc/loadavg writes it."""
    return Path("/proc/loadavg").read_text().split(" ", 1)[0]
