"""What the loops read off an engine Deployment's pods: which serve, which are coming.

The autoscaler scrapes the ready ones and counts the others as capacity on the way; the
adapter loop loads adapters into the ready ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


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
