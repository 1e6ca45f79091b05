"""One pod's monitoring view from its workers' own: /demand merged, /metrics labelled.

    merger = DemandMerger()
    doc = merger.merge([worker0_demand, worker1_demand], now=time.monotonic())
    text = merge_metrics({0: worker0_text, 1: worker1_text}, own=supervisor_registry)

/demand, per ModelDeployment (the union of the workers' keys, sorted):
- `held`, `inFlight`: sums (each request is held or forwarded by one worker only);
- `idleSeconds`: since the latest last request of any worker, i.e. the minimum of their
  idle times. The merger also remembers each model's latest last request (on the
  supervisor's clock), so that a worker that died and came back (a new process, idle
  since its start) does not take the pod's recent requests with it. The autoscaler
  merges several pods' documents by the same rules (autoscaler/demand.py).

/metrics: every worker's samples with a `worker` label ("0" .. "N-1"), the families
grouped (the text format wants a family's samples together), then the supervisor's own.
A label rather than sums in the supervisor: a restarted worker's counters start again
from 0 in its own series, which Prometheus's rate() reads as a reset; a sum over workers
would go down instead, and every query would have to know it. `sum by` (without worker)
gives the pod's total. Gauges (held, in flight) are per worker too, so their sum is the
pod's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

ObjectKey = tuple[str, str]
WORKER_LABEL: Final = "worker"


class MergeError(ValueError):
    """A worker's document is not what a worker serves."""


@dataclass(frozen=True)
class _Entry:
    held: int
    in_flight: int
    idle_seconds: float


def _entries(doc: Any) -> Iterable[tuple[ObjectKey, _Entry]]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("models"), list):
        raise MergeError("not a demand document (no `models` list)")
    for entry in doc["models"]:
        try:
            key = (str(entry["namespace"]), str(entry["name"]))
            yield (
                key,
                _Entry(int(entry["held"]), int(entry["inFlight"]), float(entry["idleSeconds"])),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MergeError(f"a `models` entry is malformed: {e!r}") from None


@dataclass
class DemandMerger:
    # Per model, the latest last request any worker reported (supervisor's monotonic clock).
    _last_request: dict[ObjectKey, float] = field(default_factory=dict)

    def merge(self, docs: Sequence[Any], now: float) -> dict[str, Any]:
        """The pod's /demand from its workers' (each read at about `now`)."""
        held: dict[ObjectKey, int] = {}
        flying: dict[ObjectKey, int] = {}
        for doc in docs:
            for key, entry in _entries(doc):
                held[key] = held.get(key, 0) + entry.held
                flying[key] = flying.get(key, 0) + entry.in_flight
                last = now - entry.idle_seconds
                if last > self._last_request.get(key, -float("inf")):
                    self._last_request[key] = last
        # A model no worker reports any more (its ModelDeployment is gone) is forgotten.
        for gone in self._last_request.keys() - held.keys():
            del self._last_request[gone]
        models = [
            {
                "namespace": key[0],
                "name": key[1],
                "held": held[key],
                "inFlight": flying[key],
                "idleSeconds": round(max(0.0, now - self._last_request[key]), 3),
            }
            for key in sorted(held)
        ]
        return {"models": models}


def _labelled(worker: int, text: str) -> Iterable[Metric]:
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        raise MergeError(f"worker {worker}: not Prometheus text: {e}") from None
    for family in families:
        labelled = Metric(family.name, family.documentation, family.type, family.unit)
        labelled.samples = [
            s._replace(labels={**s.labels, WORKER_LABEL: str(worker)}) for s in family.samples
        ]
        yield labelled


class _Families:
    """A collector that returns families already gathered."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_metrics(texts: Mapping[int, str], own: CollectorRegistry | None = None) -> bytes:
    """The workers' /metrics (by worker index) as one exposition, `own`'s after them."""
    grouped: dict[tuple[str, str], Metric] = {}
    for worker in sorted(texts):
        for family in _labelled(worker, texts[worker]):
            found = grouped.get((family.name, family.type))
            if found is None:
                grouped[(family.name, family.type)] = family
            else:
                found.samples.extend(family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(grouped.values())))
    body = generate_latest(registry)
    return body + generate_latest(own) if own is not None else body
