"""Scale to zero and back: the rules around ``decide`` for ``minReplicas: 0``. Pure.

``decide`` never goes below one replica (with no pod there is no queue to read). For a
ModelDeployment that allows zero, the loop asks this module first:

    wake = from_zero(current_replicas, demand)          # at 0 replicas
    if wake is not None: write wake.desired_replicas (1 when requests are held, else 0)

and, once ``decide`` has run with the minimum raised to 1:

    decision = to_zero(decision, current_replicas, observation, demand, idle_for, after_s)

The rules:

* At 0 replicas, a request held by a gateway (or one in flight, i.e. a gateway still
  forwarding to a pod that is leaving) brings 1 replica at once: the gateway holds the
  request until that pod is Ready. Without demand the model stays at 0.
* From 1 replica to 0 only when everything says the model is idle: every Ready pod
  answered its metrics with nothing waiting and nothing running, every gateway answered
  with nothing held and nothing in flight, and the last request (seen by a gateway or
  by the engines' gauges) is at least ``scaleToZeroAfterSeconds`` old. Missing data is
  never idleness: a failed scrape or a gateway that did not answer keeps the replica.
* Above 1 replica ``decide`` glides down first; zero is only ever reached from 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from openmodel.autoscaler.decision import Decision, DecisionReason, Observation, ScalingHistory


@dataclass(frozen=True, slots=True)
class Demand:
    """What the gateways report for one ModelDeployment, summed over gateways.

    complete: every gateway asked answered (False: some did not, so idleness is unknown).
    idle_seconds: since the last request any gateway saw (the smallest over gateways;
    a gateway that saw none counts from its start); None when no gateway knows it.
    """

    held: int = 0
    in_flight: int = 0
    idle_seconds: float | None = None
    complete: bool = True

    @property
    def active(self) -> bool:
        return self.held > 0 or self.in_flight > 0


def from_zero(current_replicas: int, demand: Demand, history: ScalingHistory, now: float,
              horizon_s: float) -> Decision | None:  # fmt: skip
    """The decision at 0 replicas; None when the Deployment has replicas."""
    if current_replicas != 0:
        return None
    if demand.active:
        what = f"{demand.held} held"
        if demand.in_flight:
            what += f", {demand.in_flight} in flight"
        return Decision(
            desired_replicas=1,
            history=ScalingHistory.assume(1, at=now),
            reason=DecisionReason.SCALE_FROM_ZERO,
            message=f"0 -> 1: requests waiting at the gateway ({what})",
            recommendation=1,
            queue_depth=float(demand.held),
        )
    return Decision(
        desired_replicas=0,
        history=history.record(0, now, horizon_s),
        reason=DecisionReason.SCALED_TO_ZERO,
        message="scaled to zero: no request held at the gateway",
        recommendation=0,
        queue_depth=0.0,
    )


def engines_idle(observation: Observation) -> bool:
    """Every Ready pod answered, with nothing waiting and nothing running."""
    if observation.failed or not observation.waiting:
        return False
    if any(v > 0 for v in observation.waiting.values()):
        return False
    # A pod that did not report its running count cannot be called idle.
    if set(observation.running) != set(observation.waiting):
        return False
    return all(v == 0 for v in observation.running.values())


def to_zero(
    decision: Decision,
    current_replicas: int,
    observation: Observation,
    demand: Demand,
    idle_for_s: float,
    after_s: float,
) -> Decision:
    """Turn a steady 1-replica decision into 0 when the model has been idle long enough."""
    if current_replicas != 1 or decision.desired_replicas != 1 or observation.starting:
        return decision
    if not (engines_idle(observation) and demand.complete and not demand.active):
        return decision
    if not (math.isfinite(idle_for_s) and idle_for_s >= after_s):
        # No countdown in the message: the status is written whenever its message
        # changes, and "zero in 595s", "590s"... was one write per poll while idle.
        return replace(
            decision, message=f"{decision.message}; idle, zero after {after_s:g}s without requests"
        )
    return replace(
        decision,
        desired_replicas=0,
        reason=DecisionReason.SCALE_TO_ZERO,
        message=f"1 -> 0: no request for {idle_for_s:.0f}s (scaleToZeroAfterSeconds {after_s:g})",
        recommendation=0,
    )
