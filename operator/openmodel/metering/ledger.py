"""The metering arithmetic, pure: what each ModelDeployment's pods held (GPU-seconds, or
CPU cores and memory for CPU engines) and served (the engines' own token counters), and
what that cost, added up poll by poll (docs/cost.md).

    ledger = Ledger()
    ledger.restore(checkpoint)                        # after a restart, if there is one
    added = ledger.observe(now, {key: Holding(accelerator, pods)}, prices)
    ledger.totals[key]                                # since metering began
    ledger.checkpoint()                               # what survives a restart

Time: a pod counts from the moment it holds its node's resources (bound and not yet
finished: loading, idle and busy alike) to the last poll that saw it; the time between
that poll and its end is not counted (at most one poll per pod). The first poll that
sees a pod counts it from its start, or from the previous poll if it started before
that (after a restart: from the checkpoint's time).

Tokens: the engines' counters are cumulative per engine process. Each poll adds what a
pod's counter grew since the poll before; a counter lower than before is an engine that
restarted inside its pod, and all of its value is new. A pod seen for the first time
adds its whole count: it served that since it started. What a pod served after its last
scrape and before it vanished is lost (at most one poll).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from openmodel.config.cost import CostConfig

ModelKey = tuple[str, str]  # (namespace, name)
CHECKPOINT_VERSION: Final = 1


@dataclass(frozen=True)
class PodSample:
    """One pod holding resources at this poll, as the loop read it."""

    uid: str
    gpus: int  # GPUs the pod's limits hold (0 for a CPU engine)
    started: float  # wall-clock seconds since the epoch: when it was bound to its node
    cpu_cores: float = 0.0  # requested, counted for CPU engines only (gpus == 0)
    memory_gib: float = 0.0
    # From the engine's metrics this poll; None: not read (not ready, scrape failed).
    busy: bool | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None


@dataclass(frozen=True)
class Holding:
    """A ModelDeployment's pods at this poll, and what it runs on."""

    accelerator: str  # spec.gpu.type ("cpu" for CPU engines)
    pods: tuple[PodSample, ...]


@dataclass
class Totals:
    gpu_seconds: float = 0.0
    busy_gpu_seconds: float = 0.0
    cpu_core_seconds: float = 0.0
    memory_gib_seconds: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    cost: float = 0.0

    def add(self, other: Totals) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def is_zero(self) -> bool:
        return not any(asdict(self).values())


def _held_seconds(pod: PodSample, now: float, since: float | None) -> float:
    start = pod.started if since is None else max(since, pod.started)
    return max(0.0, now - start)


def _grown(previous: float | None, current: float | None) -> float:
    if current is None or not math.isfinite(current) or current < 0:
        return 0.0
    if previous is None or current < previous:
        return current  # first sight, or the engine restarted in its pod
    return current - previous


def cost_of(totals: Totals, accelerator: str, prices: CostConfig) -> float:
    """What `totals`' resource time costs at `prices` (0 for what has no price)."""
    gpu_price = prices.gpu_hour_price(accelerator) or 0.0
    cpu_price = prices.cpu_core_hour_price or 0.0
    memory_price = prices.memory_gib_hour_price or 0.0
    return (
        totals.gpu_seconds * gpu_price
        + totals.cpu_core_seconds * cpu_price
        + totals.memory_gib_seconds * memory_price
    ) / 3600.0


def hourly_cost(holding: Holding, prices: CostConfig) -> float:
    """What the pods of `holding` cost per hour at `prices`, as they are now."""
    per_hour = Totals(
        gpu_seconds=3600.0 * sum(p.gpus for p in holding.pods),
        cpu_core_seconds=3600.0 * sum(p.cpu_cores for p in holding.pods if p.gpus == 0),
        memory_gib_seconds=3600.0 * sum(p.memory_gib for p in holding.pods if p.gpus == 0),
    )
    return cost_of(per_hour, holding.accelerator, prices)


@dataclass
class Ledger:
    totals: dict[ModelKey, Totals] = field(default_factory=dict)
    accelerators: dict[ModelKey, str] = field(default_factory=dict)
    # pod uid -> (prompt, generation) counters as last read
    counters: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    last_poll: float | None = None

    def observe(
        self, now: float, holdings: Mapping[ModelKey, Holding], prices: CostConfig
    ) -> dict[ModelKey, Totals]:
        """Count one poll; returns what it added per ModelDeployment. ModelDeployments
        absent from `holdings` keep their totals (`forget` drops them)."""
        since = self.last_poll
        added: dict[ModelKey, Totals] = {}
        seen: dict[str, tuple[float | None, float | None]] = {}
        for key, holding in holdings.items():
            delta = Totals()
            for pod in holding.pods:
                held = _held_seconds(pod, now, since)
                if pod.gpus > 0:
                    delta.gpu_seconds += held * pod.gpus
                    if pod.busy:
                        delta.busy_gpu_seconds += held * pod.gpus
                else:
                    delta.cpu_core_seconds += held * pod.cpu_cores
                    delta.memory_gib_seconds += held * pod.memory_gib
                previous = self.counters.get(pod.uid, (None, None))
                delta.prompt_tokens += _grown(previous[0], pod.prompt_tokens)
                delta.generation_tokens += _grown(previous[1], pod.generation_tokens)
                # An unread counter keeps its last value: the next read adds the growth.
                seen[pod.uid] = (
                    previous[0] if pod.prompt_tokens is None else pod.prompt_tokens,
                    previous[1] if pod.generation_tokens is None else pod.generation_tokens,
                )
            delta.cost = cost_of(delta, holding.accelerator, prices)
            self.totals.setdefault(key, Totals()).add(delta)
            self.accelerators[key] = holding.accelerator
            added[key] = delta
        # Pods not seen are gone: their counters go with them.
        self.counters = seen
        self.last_poll = now
        return added

    def forget(self, keys: Iterable[ModelKey]) -> None:
        for key in keys:
            self.totals.pop(key, None)
            self.accelerators.pop(key, None)

    def checkpoint(self) -> dict[str, Any]:
        """What a new leader needs to go on counting (JSON-ready)."""
        return {
            "version": CHECKPOINT_VERSION,
            "at": self.last_poll,
            "totals": [
                {
                    "namespace": k[0],
                    "name": k[1],
                    "accelerator": self.accelerators.get(k, ""),
                    **asdict(t),
                }
                for k, t in sorted(self.totals.items())
            ],
            "counters": {uid: list(values) for uid, values in sorted(self.counters.items())},
        }

    @classmethod
    def restored(cls, saved: Mapping[str, Any]) -> Ledger:
        """The ledger a checkpoint describes; ValueError when it is not one of ours."""
        if saved.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"checkpoint version {saved.get('version')!r} is not {CHECKPOINT_VERSION}"
            )
        ledger = cls()
        at = saved.get("at")
        ledger.last_poll = float(at) if isinstance(at, int | float) else None
        fields = set(asdict(Totals()))
        for entry in saved.get("totals") or []:
            key = (str(entry["namespace"]), str(entry["name"]))
            ledger.totals[key] = Totals(**{k: float(entry.get(k, 0.0)) for k in fields})
            ledger.accelerators[key] = str(entry.get("accelerator", ""))
        for uid, values in (saved.get("counters") or {}).items():
            prompt, generation = values
            ledger.counters[str(uid)] = (
                None if prompt is None else float(prompt),
                None if generation is None else float(generation),
            )
        return ledger
