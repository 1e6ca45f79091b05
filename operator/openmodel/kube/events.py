"""Kubernetes Events about a ModelDeployment, written directly (no kopf context needed)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.clock import utc_now
from openmodel.kube import calls as kube

log = logging.getLogger(__name__)
COMPONENT = "openmodel"


def post_event(
    api: client.ApiClient,
    md_body: Mapping[str, Any],
    reason: str,
    message: str,
    event_type: str = "Normal",
) -> None:
    """Record an Event on the ModelDeployment; a failure to post is logged, not raised."""
    meta = md_body["metadata"]
    now = utc_now()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": md_body.get("apiVersion"),
            "kind": md_body.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": event_type,
        "source": {"component": COMPONENT},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        kube.create(api, event)
    except ApiException as e:
        # Events are best effort by design in Kubernetes; losing one must not block
        # reconciliation, but it must be visible.
        log.warning(
            "could not post event %s on %s/%s: %s",
            reason,
            meta["namespace"],
            meta["name"],
            e.reason,
        )


__all__ = ["post_event"]
