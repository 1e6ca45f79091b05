"""How many gateway replicas share the limits: fixed by `gateway.limits.replicas`, or
counted from the ready gateway pods (`gateway.demandSelector` in `demandNamespace`, the
pods the autoscaler reads demand from) every `POLL_SECONDS`.

A replica that cannot list keeps its last count (1 before the first list): after a scale
up it over-admits until the next list, after a scale down it under-admits until then.

With `gateway.workers` > 1 every process of a pod takes its own share: `current` counts
processes, the replicas times the workers per pod (`ReplicaCount.of(replicas, workers)`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 10.0


def ready_replicas(pods: Iterable[Mapping[str, Any]]) -> int:
    """Pods Ready and not being deleted; at least 1 (this replica answers, so it counts)."""
    ready = 0
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            ready += 1
    return max(1, ready)


@dataclass
class ReplicaCount:
    current: int = 1  # processes sharing the limits: replicas x workers
    workers: int = 1  # gateway processes per pod

    @classmethod
    def of(cls, replicas: int, workers: int) -> ReplicaCount:
        return cls(replicas * workers, workers)

    async def follow(
        self, list_pods: Callable[[], list[dict[str, Any]]], poll_seconds: float = POLL_SECONDS
    ) -> None:
        """Re-count forever (`list_pods` is a blocking call, run off the event loop)."""
        while True:
            try:
                pods = await asyncio.to_thread(list_pods)
            except Exception as e:  # an unreachable API server, a 403: keep the last count
                log.warning("gateway: cannot count the gateway replicas (keeping %d): %s",
                            self.current, e)  # fmt: skip
            else:
                counted = ready_replicas(pods) * self.workers
                if counted != self.current:
                    log.info("gateway: %d gateway processes share the limits (%d per pod)",
                             counted, self.workers)  # fmt: skip
                self.current = counted
            await asyncio.sleep(poll_seconds)
