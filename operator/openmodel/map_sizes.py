"""Export the sizes of the operator's in-memory maps as openmodel_internal_entries.

Every map here is keyed per ModelDeployment (or per its children, adapters, series):
a soak (`python -m perf.soak`) reads these gauges to show that they follow the number of
ModelDeployments and shrink after deletes, instead of growing with time.
"""

from __future__ import annotations

from openmodel import telemetry
from openmodel.adapters.loop import AdapterLoop
from openmodel.autoscaler.loop import AutoscalerLoop
from openmodel.controller.queue import PassQueue
from openmodel.kube.cache import ObjectCache
from openmodel.reconcile.reconciler import Reconciler


def entries(holder: object) -> int:
    """Entries a small state object holds: the summed lengths of its dict and set
    attributes (private ones included: the queue, OwnWrites and the stores keep theirs
    private; `len` of a dict is atomic under the GIL, so no guard is needed to read it)."""
    return sum(len(v) for v in vars(holder).values() if isinstance(v, dict | set))


def track_operator_maps(
    reconciler: Reconciler,
    autoscaler: AutoscalerLoop,
    adapters: AdapterLoop,
    cache: ObjectCache | None = None,
    queue: PassQueue | None = None,
) -> None:
    """Call once at start-up, after they are built."""
    track = telemetry.track_size
    if cache is not None:
        # Objects by key, plus one entry per owner that has pods.
        track("cache", lambda: entries(cache))
    if queue is not None:
        # Keys waiting, in a pass, added during one, waiting for a retry, backing off.
        track("queue", lambda: entries(queue))
    track("reconciler.own_writes", lambda: entries(reconciler.own_writes))
    track("reconciler.inference_extension", lambda: entries(reconciler.inference_extension))
    store = reconciler.model_configs
    if store is not None:
        track("model_configs", lambda: entries(store))
    track("autoscaler.histories", lambda: len(autoscaler.histories))
    track("autoscaler.capacities", lambda: len(autoscaler.capacities))
    track("autoscaler.last_active", lambda: len(autoscaler.last_active))
    track("adapters.announced", lambda: len(adapters.announced))
    track("adapters.failures", lambda: entries(adapters.failures))
