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

import asyncio
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from openmodel.config import GatewayConfig

log = logging.getLogger(__name__)

# The response header naming the worker that answered (0 .. count-1): tells which
# process of the pod served a request, for whoever debugs a pod; no other information.
WORKER_HEADER: Final = "X-OpenModel-Gateway-Worker"
# The supervisor asks every worker's /readyz every 2 s (supervisor.CHECK_SECONDS); a
# worker not asked for this long has a supervisor that is stuck, and stops (below).
SUPERVISOR_SILENCE_SECONDS: Final = 60.0


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


@dataclass
class SupervisorContact:
    """When the supervisor last asked this worker something.

    A supervisor that hangs (alive, its loop blocked) would leave the pod without
    /demand and its workers unwatched while the kubelet, probing the workers on the API
    port, sees a live pod. So a worker not asked for `silence_s` stops: once every
    worker has, nothing answers on the API port, the liveness probe fails and the
    kubelet restarts the container."""

    last: float | None = None  # monotonic; None: not asked yet

    def asked(self, now: float | None = None) -> None:
        self.last = time.monotonic() if now is None else now

    def silent(self, now: float, silence_s: float) -> bool:
        """Asked once, and not since `silence_s`."""
        return self.last is not None and now - self.last > silence_s

    async def stop_when_silent(self, stop: asyncio.Event, silence_s: float) -> None:
        while not self.silent(time.monotonic(), silence_s):
            await asyncio.sleep(silence_s / 6)
        log.error("gateway: no word from the supervisor for %gs; stopping", silence_s)
        stop.set()
