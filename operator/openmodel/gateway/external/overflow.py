"""Whether a ModelDeployment's request overflows to its external model, and why. Pure.

    reason = overflow_reason(policy, ready_replicas=0, queued=3)   # "starting"

`starting`: no replica is ready and spec.gateway.overflow.whenStarting (a model at zero,
or still loading); `queue_depth`: the queue (requests the gateway holds plus what the
engines report waiting) per ready replica is above spec.gateway.overflow.queueDepthAbove.
None: the request goes to the model's own replicas (or is held) as without overflow.
"""

from __future__ import annotations

from typing import Final

from openmodel.api import Overflow

STARTING: Final = "starting"
QUEUE_DEPTH: Final = "queue_depth"


def overflow_reason(policy: Overflow | None, ready_replicas: int, queued: float) -> str | None:
    if policy is None:
        return None
    if ready_replicas <= 0:
        return STARTING if policy.when_starting else None
    limit = policy.queue_depth_above
    if limit is not None and queued / ready_replicas > limit:
        return QUEUE_DEPTH
    return None
