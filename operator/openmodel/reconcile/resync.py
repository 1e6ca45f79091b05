"""Periodic resync and cache audit.

The resync queues every cached ModelDeployment for a pass now and then: events drive
almost everything, and this repairs what a failed pass left behind, or a change no event
shows (a child's owner label taken off). It walks the cache and adds the keys to the
operator's queue (`controller/queue.py`) behind what events ask for, so a converged
cluster costs it no request, an edit never waits for the sweep, and a sweep during a
burst adds almost nothing (most keys are waiting already). A failed pass is retried as
any other (the queue's back-off).

The audit compares the cache with one LIST per watched kind, rarely (platform config
`operator.cacheAuditSeconds`, default hourly): kopf re-lists a watch that fell too far
behind without telling which objects vanished meanwhile, so a deletion can be missed.
A difference is logged as a warning and every ModelDeployment queued again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from openmodel.api import API_VERSION, KIND, OWNER_LABEL, PLURAL
from openmodel.controller.queue import Line, PassQueue
from openmodel.kube import calls as kube
from openmodel.kube.cache import CHILD_KINDS, resource_version
from openmodel.namespaces import matches, patterns_from_env
from openmodel.reconcile.reconciler import Reconciler

log = logging.getLogger(__name__)
DEFAULT_INTERVAL_SECONDS = 60.0

# (kind, apiVersion, cluster-wide collection, label selector) of each audited LIST.
_AUDITED = (
    (KIND, API_VERSION, f"/apis/{API_VERSION}/{PLURAL}", None),
    *(
        (kind, f"{group}/{version}" if group else version,
         f"/apis/{group}/{version}/{plural}" if group else f"/api/{version}/{plural}",
         OWNER_LABEL)
        for group, version, plural, kind in CHILD_KINDS
    ),
)  # fmt: skip


def queue_all(reconciler: Reconciler, queue: PassQueue) -> int:
    """Queue every served, cached ModelDeployment behind the event-driven work (on the
    event loop, as the queue wants); returns how many are served."""
    served = patterns_from_env()
    count = 0
    for body in reconciler.cache.model_deployments():
        meta = body["metadata"]
        if matches(meta["namespace"], served):
            queue.add((meta["namespace"], meta["name"]), Line.SWEEP)
            count += 1
    return count


def resync_seconds() -> float:
    """The resync's interval (env OPENMODEL_RESYNC_SECONDS, default 60)."""
    return float(os.environ.get("OPENMODEL_RESYNC_SECONDS", DEFAULT_INTERVAL_SECONDS))


async def resync_forever(reconciler: Reconciler, queue: PassQueue) -> None:
    interval = resync_seconds()
    while True:
        await asyncio.sleep(interval)
        queue_all(reconciler, queue)


def audit_once(reconciler: Reconciler) -> int:
    """One LIST per watched kind compared with the cache; returns the differences."""
    total = 0
    for kind, api_version, path, selector in _AUDITED:
        query = [] if selector is None else [("labelSelector", selector)]
        listed = kube.call(reconciler.api, "GET", path, query=query)
        items: list[dict[str, Any]] = listed.get("items") or []
        for item in items:  # list responses omit each item's apiVersion/kind
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
        differences = reconciler.cache.audit(kind, items, resource_version(listed))
        if differences:
            log.warning(
                "cache audit: %d %s object(s) differed from the API; fixed", differences, kind
            )
        total += differences
    return total


async def audit_forever(reconciler: Reconciler, queue: PassQueue, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            if await asyncio.to_thread(audit_once, reconciler):
                queue_all(reconciler, queue)
        except Exception:
            log.exception("cache audit failed; retrying in %.0f s", interval)
