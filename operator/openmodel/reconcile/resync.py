"""Periodic resync and cache audit.

The resync reconciles every cached ModelDeployment again now and then: events drive
almost everything, and this repairs what a failed pass left behind (an API hiccup during
an event handler is logged, not retried by kopf). It walks the cache, so a converged
cluster costs it no request at all.

The audit compares the cache with one LIST per watched kind, rarely (platform config
`operator.cacheAuditSeconds`, default hourly): kopf re-lists a watch that fell too far
behind without telling which objects vanished meanwhile, so a deletion can be missed.
A difference is logged as a warning and the affected ModelDeployments reconciled.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from kubernetes.client.exceptions import ApiException

from openmodel.api import API_VERSION, KIND, OWNER_LABEL, PLURAL
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


def resync_once(reconciler: Reconciler) -> int:
    """Reconcile every cached ModelDeployment once; returns how many passes failed."""
    failures = 0
    served = patterns_from_env()
    for body in reconciler.cache.model_deployments():
        meta = body["metadata"]
        if not matches(meta["namespace"], served):
            continue
        try:
            reconciler.reconcile_by_name(meta["namespace"], meta["name"])
        except ApiException as e:
            failures += 1
            log.warning(
                "resync of %s/%s failed: %s %s", meta["namespace"], meta["name"], e.status, e.reason
            )
    return failures


async def resync_forever(reconciler: Reconciler) -> None:
    interval = float(os.environ.get("OPENMODEL_RESYNC_SECONDS", DEFAULT_INTERVAL_SECONDS))
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(resync_once, reconciler)
        except Exception:
            # e.g. the API server unreachable (urllib3 errors): log and keep the loop.
            log.exception("resync failed; retrying in %.0f s", interval)


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


async def audit_forever(reconciler: Reconciler, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            if await asyncio.to_thread(audit_once, reconciler):
                await asyncio.to_thread(resync_once, reconciler)
        except Exception:
            log.exception("cache audit failed; retrying in %.0f s", interval)
