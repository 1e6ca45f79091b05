"""What the loops read off an engine Deployment's pods: which serve, which are coming.

The autoscaler scrapes the ready ones and counts the others as capacity on the way; the
adapter loop loads adapters into the ready ones. Of a replica that spans nodes (a
LeaderWorkerSet group) only the leader serves: `serving` leaves the workers out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openmodel.api import ROLE_LABEL, WORKER_ROLE


@dataclass(frozen=True)
class PodSets:
    ready: dict[str, str]  # pod name -> pod IP
    starting: frozenset[str]


def classify_pods(pods: Sequence[Mapping[str, Any]]) -> PodSets:
    """Ready pods with an IP are scraped; other live pods are capacity on the way.
    Pods being deleted are neither: they are leaving, whatever they report."""
    ready: dict[str, str] = {}
    starting: set[str] = set()
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        is_ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if is_ready and status.get("podIP"):
            ready[meta["name"]] = status["podIP"]
        else:
            starting.add(meta["name"])
    return PodSets(ready=ready, starting=frozenset(starting))


def serving(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods that answer requests and export the engine's metrics: a Deployment's
    pods and a group's leaders, never its workers (api.SERVING_POD_SELECTOR)."""
    return [
        p
        for p in pods
        if ((p.get("metadata") or {}).get("labels") or {}).get(ROLE_LABEL) != WORKER_ROLE
    ]
