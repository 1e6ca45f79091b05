"""What a worker process of a gateway pod is told, and the share of the pod it takes.

    role = WorkerRole(index=0, count=2, socket=Path("/tmp/gw/worker-0.sock"), started=t)
    config = role.share(platform.gateway)   # its hold queue: 1/count of the pod's

A worker takes 1/count of what a gateway replica holds: the hold queue per
ModelDeployment (`holdQueueLength / count`, rounded up, so the pod holds at least the
configured number), and its limits' share (`ReplicaCount(..., workers=count)`: limit /
(replicas x count), gateway/limits/replicas.py). Each worker has its own watches and
route table; they watch the same objects, so they route alike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from openmodel.config import GatewayConfig

# The response header naming the worker that answered (0 .. count-1): tells which
# process of the pod served a request, for whoever debugs a pod; no other information.
WORKER_HEADER: Final = "X-OpenModel-Gateway-Worker"


@dataclass(frozen=True)
class WorkerRole:
    index: int  # 0 .. count-1, kept by the worker that replaces it
    count: int
    # Where the worker serves its /demand, /metrics and /readyz to the supervisor only
    # (a Unix socket in a directory only the pod's user can enter).
    socket: Path
    # The pod's start (the supervisor's, wall clock): every worker, a restarted one too,
    # dates /v1/models' `created` and idleness-since-start from it, so they answer alike.
    started: float

    def started_monotonic(self, now_wall: float, now_monotonic: float) -> float:
        """`started` on this process's monotonic clock."""
        return now_monotonic - max(0.0, now_wall - self.started)

    def share(self, config: GatewayConfig) -> GatewayConfig:
        """`config` with this worker's share of the pod's hold queue."""
        held = math.ceil(config.hold_queue_length / self.count)
        return dataclasses.replace(config, hold_queue_length=held)
