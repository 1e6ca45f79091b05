"""The operator's own Prometheus metrics, and the HTTP server that exposes them.

The reconcile workers and the autoscaler call the small functions at the bottom
(`record_reconcile`, `record_scaling`, `observe_queue`, `forget`); they write to one
process-wide `Telemetry` on prometheus_client's default registry, which also carries
the process and GC collectors. Tests build their own `Telemetry` on a private
`CollectorRegistry`, so nothing leaks between them.

Series per ModelDeployment are labelled `namespace`, `name`; `forget` drops them when
the ModelDeployment is deleted, so the number of series follows the number of
ModelDeployments instead of growing forever.

`openmodel_internal_entries{map=...}` shows, at each scrape, how many entries the
operator's in-memory maps hold (`track_size` names one; this module's own label sets
are always there): a soak checks that they follow the ModelDeployments, not time.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

RESULTS: Final = ("ok", "error", "rejected")
# Who asked for a pass (controller/queue.py's `Asker`).
ASKERS: Final = ("spec", "child", "sweep", "retry", "resolver")
DIRECTIONS: Final = ("up", "down", "hold")
METRICS_PORT_ENV: Final = "OPENMODEL_METRICS_PORT"
DEFAULT_METRICS_PORT: Final = 9090
# A pass is a handful of API calls: milliseconds when converged, seconds under load.
RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def label_sets(metric: MetricWrapperBase) -> int:
    """How many label combinations a labelled metric holds now."""
    return sum(1 for _ in _label_values(metric))


def _label_values(metric: MetricWrapperBase) -> Iterator[tuple[str, ...]]:
    seen: set[tuple[str, ...]] = set()
    for family in metric.collect():
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            flat = tuple(f"{k}={v}" for k, v in key)
            if flat not in seen:
                seen.add(flat)
                yield flat


class InternalSizes(Collector):
    """`openmodel_internal_entries{map}`: each named source's size, read at scrape time."""

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], int]] = {}
        self._guard = threading.Lock()

    def track(self, name: str, size: Callable[[], int]) -> None:
        with self._guard:
            self._sources[name] = size

    def sizes(self) -> dict[str, int]:
        with self._guard:
            sources = dict(self._sources)
        return {name: int(size()) for name, size in sorted(sources.items())}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "openmodel_internal_entries",
            "Entries in one of the operator's in-memory maps (per ModelDeployment, pod or "
            "series): they must follow the number of ModelDeployments, not time.",
            labels=["map"],
        )
        for name, size in self.sizes().items():
            family.add_metric([name], size)
        yield family


@dataclass(frozen=True)
class Telemetry:
    """Every metric the operator exports, registered on one registry."""

    registry: CollectorRegistry
    reconcile_total: Counter
    resync_passes: Counter
    passes_asked: Counter
    reconcile_duration: Histogram
    scaling_decisions: Counter
    queue_depth: Gauge
    desired_replicas: Gauge
    internal_sizes: InternalSizes

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Telemetry:
        reconcile_total = Counter(
            "openmodel_reconcile_total",
            "Reconcile passes by result: ok, error (API or operator failure), "
            "rejected (the spec cannot be served; see the Degraded condition).",
            ["result"],
            registry=registry,
        )
        # Every result exists from the start, so rate() and alerts see a 0, not no data.
        for result in RESULTS:
            reconcile_total.labels(result=result)
        passes_asked = Counter(
            "openmodel_reconcile_passes_total",
            "Reconcile passes by who asked for them: spec (the ModelDeployment's own event), "
            "child (an event of one of its children), sweep (the resync, the cache audit, "
            "an election), retry (the back-off after a failed pass), resolver (a config.json "
            "answer it waited for). Sums to openmodel_reconcile_total.",
            ["asked_by"],
            registry=registry,
        )
        for asker in ASKERS:
            passes_asked.labels(asked_by=asker)
        sizes = InternalSizes()
        registry.register(sizes)
        made = cls(
            registry=registry,
            reconcile_total=reconcile_total,
            passes_asked=passes_asked,
            resync_passes=Counter(
                "openmodel_resync_passes_total",
                "Reconcile passes the resync's sweep asked for (also counted in "
                "openmodel_reconcile_total); the rest were asked for by events, "
                "retries and the resolver (openmodel_reconcile_passes_total tells which).",
                registry=registry,
            ),
            reconcile_duration=Histogram(
                "openmodel_reconcile_duration_seconds",
                "Wall time of one reconcile pass.",
                buckets=RECONCILE_BUCKETS,
                registry=registry,
            ),
            scaling_decisions=Counter(
                "openmodel_scaling_decisions_total",
                "Autoscaler decisions per ModelDeployment by direction: up, down, hold.",
                ["namespace", "name", "direction"],
                registry=registry,
            ),
            queue_depth=Gauge(
                "openmodel_queue_depth",
                "Waiting requests summed over a ModelDeployment's ready pods, as last "
                "scraped; absent while no usable reading exists.",
                ["namespace", "name"],
                registry=registry,
            ),
            desired_replicas=Gauge(
                "openmodel_desired_replicas",
                "Replicas the autoscaler last decided for a ModelDeployment.",
                ["namespace", "name"],
                registry=registry,
            ),
            internal_sizes=sizes,
        )
        # Series per ModelDeployment (`forget` must drop them): label sets, not samples.
        sizes.track("telemetry.scaling_decisions", lambda: label_sets(made.scaling_decisions))
        sizes.track("telemetry.queue_depth", lambda: label_sets(made.queue_depth))
        sizes.track("telemetry.desired_replicas", lambda: label_sets(made.desired_replicas))
        return made

    def record_reconcile(self, result: str, seconds: float, *, asked_by: str) -> None:
        if result not in RESULTS:
            # A typo would silently open a new series; fail where it is written.
            raise ValueError(f"reconcile result must be one of {RESULTS}, got {result!r}")
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"reconcile duration must be >= 0 seconds, got {seconds!r}")
        if asked_by not in ASKERS:
            raise ValueError(f"a pass is asked for by one of {ASKERS}, got {asked_by!r}")
        self.reconcile_total.labels(result=result).inc()
        self.passes_asked.labels(asked_by=asked_by).inc()
        if asked_by == "sweep":
            self.resync_passes.inc()
        self.reconcile_duration.observe(seconds)

    def record_scaling(self, namespace: str, name: str, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"scaling direction must be one of {DIRECTIONS}, got {direction!r}")
        self.scaling_decisions.labels(namespace=namespace, name=name, direction=direction).inc()

    def observe_queue(self, namespace: str, name: str, depth: float | None, desired: int) -> None:
        """Set the queue gauge (removed when `depth` is None or NaN) and desired replicas.

        No reading must never look like an empty queue: a 0 would tell a dashboard or an
        alert the opposite of "we do not know".
        """
        if desired < 0:
            raise ValueError(f"desired replicas must be >= 0, got {desired}")
        if depth is None or math.isnan(depth):
            self.queue_depth.remove_by_labels({"namespace": namespace, "name": name})
        else:
            self.queue_depth.labels(namespace=namespace, name=name).set(depth)
        self.desired_replicas.labels(namespace=namespace, name=name).set(desired)

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of one ModelDeployment (call when it is deleted)."""
        labels = {"namespace": namespace, "name": name}
        self.scaling_decisions.remove_by_labels(labels)
        self.queue_depth.remove_by_labels(labels)
        self.desired_replicas.remove_by_labels(labels)


def start_metrics_server(
    port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` on http://addr:port/metrics from a daemon thread.

    Returns the server and its thread; `server.shutdown()` stops it. Port 0 picks a
    free port (`server.server_address[1]`).
    """
    return start_http_server(port, addr=addr, registry=registry)


def metrics_port(environ: Mapping[str, str] | None = None) -> int | None:
    """The port from env OPENMODEL_METRICS_PORT (default 9090); None when set to 0."""
    env = os.environ if environ is None else environ
    raw = env.get(METRICS_PORT_ENV, "").strip() or str(DEFAULT_METRICS_PORT)
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{METRICS_PORT_ENV} must be a port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{METRICS_PORT_ENV} must be between 0 and 65535, got {port}")
    return port or None


_DEFAULT = Telemetry.create(REGISTRY)


def record_reconcile(result: str, seconds: float, *, asked_by: str) -> None:
    """Count one reconcile pass ("ok", "error" or "rejected"), its duration and who
    asked for it (one of ASKERS; "sweep": the resync's, not an event)."""
    _DEFAULT.record_reconcile(result, seconds, asked_by=asked_by)


def record_scaling(namespace: str, name: str, direction: str) -> None:
    """Count one autoscaler decision ("up", "down" or "hold") for a ModelDeployment."""
    _DEFAULT.record_scaling(namespace, name, direction)


def observe_queue(namespace: str, name: str, depth: float | None, desired: int) -> None:
    """The autoscaler's latest queue depth (None: no usable reading) and desired replicas."""
    _DEFAULT.observe_queue(namespace, name, depth, desired)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted ModelDeployment's series."""
    _DEFAULT.forget(namespace, name)


def track_size(name: str, size: Callable[[], int]) -> None:
    """Export `size()` as openmodel_internal_entries{map=name} at every scrape."""
    _DEFAULT.internal_sizes.track(name, size)
