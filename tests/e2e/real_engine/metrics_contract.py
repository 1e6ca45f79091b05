"""The simulator's /metrics against a real engine's: same families, types and label
names for every metric the operator reads, and nothing in the simulator's that the real
engine does not export in the same shape (the simulator stands in for the engine in
the tests at scale, so it must not drift from the real format)."""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from openmodel.engine_metrics.exposition import MetricFailure, read_queue
from openmodel.engines import ENGINES
from openmodel.simulator.server import start_simulator

METRIC_NAMES = {name: engine.metric_names for name, engine in ENGINES.items()}


@dataclass(frozen=True)
class Family:
    type: str
    labels: frozenset[str]


def scrape(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def families(text: str) -> dict[str, Family]:
    """Family name -> (type, label names over all its samples), by Prometheus' parser."""
    out: dict[str, Family] = {}
    for fam in text_string_to_metric_families(text):
        labels = frozenset(k for s in fam.samples for k in s.labels if k != "le")
        out[fam.name] = Family(fam.type, labels)
    return out


def simulator_metrics(engine: str, task: str = "generate") -> str:
    async def run() -> str:
        handle = await start_simulator(engine, "127.0.0.1", 0, model="tiny", task=task)
        try:
            return await asyncio.to_thread(scrape, f"{handle.url}/metrics")
        finally:
            await handle.stop()

    return asyncio.run(run())


def compare_families(real_text: str, engine: str, task: str = "generate") -> list[str]:
    """Differences between the real engine's and the simulator's families for what the
    operator reads ([] when they agree); both bodies must also parse with the
    operator's own reader. `task`: the model's (a pooling model's engine, simulated as
    one)."""
    names = METRIC_NAMES[engine]
    wanted = [n for n in (names.queue, names.running) if n is not None]
    sim_text = simulator_metrics(engine, task)
    real, sim = families(real_text), families(sim_text)
    problems = []
    for name in wanted:
        r, s = real.get(name), sim.get(name)
        if r is None:
            problems.append(f"{name}: absent from the real engine's /metrics")
            continue
        if s is None:
            problems.append(f"{name}: absent from the simulator's /metrics")
            continue
        if r.type != s.type:
            problems.append(f"{name}: type {r.type} (real) vs {s.type} (simulator)")
        if r.labels != s.labels:
            problems.append(
                f"{name}: labels {sorted(r.labels)} (real) vs {sorted(s.labels)} (simulator)"
            )
    # Nothing the simulator exports may be invented or reshaped: every family it has,
    # the real engine has, with the same type and label names.
    for name in sorted(set(sim) - set(wanted)):
        r, s = real.get(name), sim[name]
        if r is None:
            problems.append(f"{name}: exported by the simulator, not by the real engine")
        elif (r.type, r.labels) != (s.type, s.labels):
            problems.append(
                f"{name}: {r.type} {sorted(r.labels)} (real) vs "
                f"{s.type} {sorted(s.labels)} (simulator)"
            )
    for label, text in (("real", real_text), ("simulator", sim_text)):
        result = read_queue(text, names)
        if isinstance(result, MetricFailure):
            problems.append(f"the operator cannot read the {label} engine's queue: {result}")
    return problems
