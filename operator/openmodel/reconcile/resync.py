"""Periodic resync: every ModelDeployment is reconciled again now and then.

Events drive almost everything; this loop repairs what a failed pass left behind (an
API hiccup during an event handler is logged, not retried by kopf) without a retry
storm: one pass per object per interval.
"""

from __future__ import annotations

import asyncio
import logging
import os

from kubernetes.client.exceptions import ApiException

from openmodel.kube import calls as kube
from openmodel.namespaces import matches, patterns_from_env
from openmodel.reconcile.reconciler import Reconciler

log = logging.getLogger(__name__)
DEFAULT_INTERVAL_SECONDS = 60.0


def resync_once(reconciler: Reconciler) -> int:
    """Reconcile every ModelDeployment once; returns how many passes failed."""
    failures = 0
    served = patterns_from_env()
    for body in kube.list_all_model_deployments(reconciler.api):
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
        except ApiException as e:
            log.warning("resync could not list ModelDeployments: %s %s", e.status, e.reason)
        except Exception:
            # e.g. the API server unreachable (urllib3 errors): log and keep the loop.
            log.exception("resync failed; retrying in %.0f s", interval)
