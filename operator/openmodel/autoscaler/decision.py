"""The replica decision: a pure function of what was observed, the policy and time.

    decision = decide(
        observation=Observation.from_results(scraped, starting=not_ready_pod_names),
        current_replicas=deployment.spec.replicas,
        policy=ScalingPolicy.from_spec(spec.autoscaling, tolerance=config.autoscaler.tolerance),
        history=previous.history,        # ScalingHistory() the first time
        now=time.monotonic(),            # any clock, as long as it is the same one each time
    )
    # write decision.desired_replicas (only if != current), keep decision.history,
    # report decision.reason / decision.message / decision.queue_depth in status/events.

No clock reads, no I/O, no mutation: everything the function needs comes in, everything
it decides goes out. The caller keeps one ``ScalingHistory`` per ModelDeployment (in
memory is fine); after an operator restart or leader change, seed it with
``ScalingHistory.assume(current_replicas, at=now)`` so that a scale-down still waits one
full scale-down window.

The rules, in the order they apply:

1. ``current_replicas`` outside ``[min, max]`` is brought inside first ("bounded
   current"); that happens whatever the metrics say.
2. Any Ready pod whose metrics could not be used (timeout, HTTP error, NaN, missing
   gauge...) -> hold at the bounded current, reason ``MetricsUnavailable`` -- unless the
   pods that did answer already show enough queue for a scale-up: a silent pod can only
   add to the queue, so scaling up on the known part is safe; scaling down never is. A lost scrape
   target must never look like an empty queue (KEDA's failure mode), and a partial sum
   cannot be trusted either way.
3. No Ready pod with metrics at all (everything still loading) -> hold, ``NoReadyPods``.
4. ``needed = ceil(total waiting / targetQueueDepth)``, bounded by min/max. The total
   is summed over Ready pods, each pod counted at most ``maxReplicas * targetQueueDepth``:
   one pod reporting an absurd queue (1e12) is believed -- an overloaded engine and a
   broken gauge look the same from here, and scaling up on a queue is the safe side --
   but its excess, which could not raise the decision above max anyway, is not summed,
   so the reported depth stays readable and the sum finite; the message names the pod.
   The step caps (rule 7) still limit how fast it goes up. Pods still starting report
   nothing and need nothing of their own, so they count as capacity on the way: the
   demand is compared with ``current_replicas``, which includes them (and pods the
   ReplicaSet has not created yet). That is what stops the cascade seen with per-pod
   averages, where the same queue seen by fewer reporting pods multiplies into more
   replicas every cycle.
   With ``pod_capacity`` (what one saturated pod serves at once, learned by the
   caller), ``needed`` is at least ``ceil((waiting + running) / (capacity + target))``:
   the replicas that keep every request in flight within target. Under steady load the
   queue drains to 0 once there is enough capacity; without this floor that 0 would read
   as "no demand" and the count would oscillate.
5. Tolerance (HPA's): if ``|total / (target * bounded current) - 1| <= tolerance`` the
   recommendation is the bounded current. Measured against current replicas rather
   than counted pods so that rollout surge pods and pods not created yet do not move it.
6. Stabilization (HPA's): the recommendation is recorded; scale-up goes to at most the
   *minimum* recommendation within the scale-up window, scale-down to at least the
   *maximum* within the scale-down window. Holds (rules 2 and 3) are recorded as a
   recommendation of the current size: a hold is "no evidence for a change", so after
   a metrics outage a scale-down again needs a full window of good data.
7. Step caps, per decision: up by at most ``max(max_up_pods, ceil(current * max_up_percent
   / 100))`` (default max(4, 100 %), as the HPA), down by at most ``max(max_down_pods,
   floor(current * max_down_percent / 100))`` (default max(1, 50 %)). The caps are per
   call, so the loop period sets the rate (with the platform's default ``pollSeconds`` of
   5 s: up to a doubling every 5 s, three times HPA's pace). Scale-down is halving rather than
   HPA's 100 %: a replica takes minutes to load weights again, so a wrong scale-down
   costs far more than the few extra GPU-minutes of a glide; the window already proved
   the demand is low, the cap only limits the damage if every pod reported 0 at once
   (e.g. all engines restarted).
8. The result is bounded by min/max again (a policy change can leave old history
   outside the new bounds).

``min_replicas`` must be >= 1: with zero pods there is no queue to read, so this
autoscaler could never scale back up from zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Protocol

from openmodel.engine_metrics.exposition import MetricResult, QueueReading, sum_or_inf

__all__ = [
    "AutoscalingFields",
    "Decision",
    "DecisionReason",
    "Observation",
    "Recommendation",
    "ScalingHistory",
    "ScalingPolicy",
    "decide",
]

# How many failing pods a message names before it says "and N more".
_NAMED_FAILURES: Final = 5


class AutoscalingFields(Protocol):
    """What ``ScalingPolicy.from_spec`` reads (``openmodel.api.AutoscalingSpec`` has it)."""

    @property
    def min_replicas(self) -> int: ...
    @property
    def max_replicas(self) -> int: ...
    @property
    def target_queue_depth(self) -> float: ...
    @property
    def scale_up_stabilization_seconds(self) -> int: ...
    @property
    def scale_down_stabilization_seconds(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """The autoscaling spec of one ModelDeployment, plus the knobs the API does not expose."""

    min_replicas: int
    max_replicas: int
    target_queue_depth: float
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    tolerance: float = 0.1
    max_up_pods: int = 4
    max_up_percent: float = 100.0
    max_down_pods: int = 1
    max_down_percent: float = 50.0

    def __post_init__(self) -> None:
        problems = []
        if self.min_replicas < 1:
            problems.append("min_replicas must be >= 1 (no scale from zero)")
        if self.max_replicas < self.min_replicas:
            problems.append("max_replicas must be >= min_replicas")
        if not (math.isfinite(self.target_queue_depth) and self.target_queue_depth > 0):
            problems.append("target_queue_depth must be a positive number")
        for name in ("scale_up_window_s", "scale_down_window_s", "tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a finite number >= 0")
        if self.max_up_pods < 1 or self.max_down_pods < 1:
            problems.append("max_up_pods and max_down_pods must be >= 1")
        if not (self.max_up_percent >= 0 and 0 <= self.max_down_percent <= 100):
            problems.append("max_up_percent must be >= 0, max_down_percent in [0, 100]")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_spec(cls, spec: AutoscalingFields, tolerance: float = 0.1) -> ScalingPolicy:
        """From ``spec.autoscaling`` and the platform's ``autoscaler.tolerance``."""
        return cls(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            target_queue_depth=spec.target_queue_depth,
            scale_up_window_s=spec.scale_up_stabilization_seconds,
            scale_down_window_s=spec.scale_down_stabilization_seconds,
            tolerance=tolerance,
        )

    def bound(self, replicas: int) -> int:
        return min(max(replicas, self.min_replicas), self.max_replicas)

    def up_step(self, current: int) -> int:
        return max(self.max_up_pods, math.ceil(current * self.max_up_percent / 100))

    def down_step(self, current: int) -> int:
        return max(self.max_down_pods, math.floor(current * self.max_down_percent / 100))

    @property
    def horizon_s(self) -> float:
        """How long a recommendation can still matter."""
        return max(self.scale_up_window_s, self.scale_down_window_s)


@dataclass(frozen=True, slots=True)
class Observation:
    """The pods of one ModelDeployment at one instant, classified by the caller.

    waiting:  Ready pods with a usable queue value -> waiting requests.
    failed:   Ready pods whose metrics could not be used -> why (for the message).
    starting: pods that exist but are not Ready (loading weights, Pending, restarting).
    Pods being deleted (deletionTimestamp set) belong in none of them.
    """

    waiting: Mapping[str, float] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    starting: frozenset[str] = frozenset()
    # Requests being served, for the Ready pods that report it (optional).
    running: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Private read-only copies: the caller's dicts may change after the call.
        object.__setattr__(self, "waiting", MappingProxyType(dict(self.waiting)))
        object.__setattr__(self, "failed", MappingProxyType(dict(self.failed)))
        object.__setattr__(self, "running", MappingProxyType(dict(self.running)))
        object.__setattr__(self, "starting", frozenset(self.starting))
        overlap = (
            (self.waiting.keys() & self.failed.keys())
            | (self.waiting.keys() & self.starting)
            | (self.failed.keys() & self.starting)
        )
        if overlap:
            raise ValueError(f"pods in more than one class: {sorted(overlap)}")
        bad = {pod: v for pod, v in self.waiting.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"waiting counts must be finite and >= 0: {bad}")

    @classmethod
    def from_results(
        cls, ready: Mapping[str, MetricResult], starting: Iterable[str] = ()
    ) -> Observation:
        """Build from ``Scraper.scrape`` results for the Ready pods."""
        waiting: dict[str, float] = {}
        failed: dict[str, str] = {}
        running: dict[str, float] = {}
        for pod, result in ready.items():
            if isinstance(result, QueueReading):
                waiting[pod] = result.waiting
                if result.running is not None and math.isfinite(result.running):
                    running[pod] = max(0.0, result.running)
            else:
                failed[pod] = str(result)
        return cls(waiting=waiting, failed=failed, starting=frozenset(starting), running=running)

    def saturated_capacity(self) -> float | None:
        """Requests one pod serves at once, seen on the pods that have a queue.

        A pod with waiting requests is serving all it can, so its running count is its
        concurrency capacity. None when no pod is saturated now.
        """
        full = [self.running[p] for p, w in self.waiting.items() if w > 0 and p in self.running]
        full = [r for r in full if r > 0]
        if not full:
            return None
        mean = sum_or_inf(full) / len(full)
        return mean if math.isfinite(mean) else None


@dataclass(frozen=True, slots=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True, slots=True)
class ScalingHistory:
    """Recent recommendations, oldest first. Immutable: each decision returns a new one."""

    entries: tuple[Recommendation, ...] = ()

    @classmethod
    def assume(cls, replicas: int, at: float) -> ScalingHistory:
        """A history that acts as if ``replicas`` had just been recommended (use after a
        restart, so the first decisions cannot scale down at once)."""
        return cls((Recommendation(at, replicas),))

    def within(self, window_s: float, now: float) -> list[int]:
        return [r.replicas for r in self.entries if now - r.at < window_s]

    def record(self, replicas: int, now: float, horizon_s: float) -> ScalingHistory:
        # An entry from the future means the clock went back (an injected clock: the loop
        # uses time.monotonic). Restamped to now, it holds for one window from here,
        # not for the length of the jump on top.
        kept = tuple(
            r if r.at <= now else Recommendation(now, r.replicas)
            for r in self.entries
            if now - r.at < horizon_s
        )
        return ScalingHistory((*kept, Recommendation(now, replicas)))


class DecisionReason(StrEnum):
    """CamelCase, usable as an event or condition reason."""

    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    STEADY = "Steady"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    NO_READY_PODS = "NoReadyPods"
    SCALE_TO_ZERO = "ScaleToZero"
    SCALE_FROM_ZERO = "ScaleFromZero"
    SCALED_TO_ZERO = "ScaledToZero"


@dataclass(frozen=True, slots=True)
class Decision:
    """desired_replicas: what to write. history: keep it for the next call.
    recommendation: what the metrics alone asked for (before windows and step caps).
    queue_depth: the total waiting requests seen, None when holding for lack of data."""

    desired_replicas: int
    history: ScalingHistory
    reason: DecisionReason
    message: str
    recommendation: int
    queue_depth: float | None


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# Far above any max_replicas; keeps ceil() away from inf on absurd inputs.
_NEEDED_CEILING: Final = 10**9


def _needed(total: float, target: float) -> int:
    ratio = total / target
    if not ratio < _NEEDED_CEILING:
        return _NEEDED_CEILING
    # Rounding first keeps 1.1 / 0.1 = 11.000000000000002 from becoming 12.
    return math.ceil(round(ratio, 9))


def _bounds_note(current: int, bounded: int, policy: ScalingPolicy) -> list[str]:
    if current > bounded:
        return [f"current {current} above max {policy.max_replicas}"]
    if current < bounded:
        return [f"current {current} below min {policy.min_replicas}"]
    return []


def _hold(
    reason: DecisionReason,
    why: str,
    current: int,
    policy: ScalingPolicy,
    history: ScalingHistory,
    now: float,
) -> Decision:
    bounded = policy.bound(current)
    parts = [*_bounds_note(current, bounded, policy), f"holding at {bounded}: {why}"]
    return Decision(
        desired_replicas=bounded,
        history=history.record(bounded, now, policy.horizon_s),
        reason=reason,
        message="; ".join(parts),
        recommendation=bounded,
        queue_depth=None,
    )


def _failure_summary(observation: Observation) -> str:
    failed = sorted(observation.failed.items())
    ready = len(failed) + len(observation.waiting)
    named = "; ".join(f"{pod}: {why}" for pod, why in failed[:_NAMED_FAILURES])
    more = f"; and {len(failed) - _NAMED_FAILURES} more" if len(failed) > _NAMED_FAILURES else ""
    return f"metrics unusable on {len(failed)} of {_plural(ready, 'ready pod')} ({named}{more})"


def decide(
    *,
    observation: Observation,
    current_replicas: int,
    policy: ScalingPolicy,
    history: ScalingHistory,
    now: float,
    pod_capacity: float | None = None,
) -> Decision:
    """Desired replicas for one ModelDeployment; see the module docstring for the rules.

    `pod_capacity` (requests one pod serves at once, learned from saturated pods by the
    caller, see `Observation.saturated_capacity`) adds a floor that keeps steady load from
    flapping: with it, the replicas needed to hold every request in flight (running plus
    waiting) at `capacity + target` per pod are never scaled away. Without it a queue
    that drains to 0 under steady load reads as "no demand", the next scale-down
    re-creates the queue, and the count oscillates.
    """
    if observation.failed:
        hold = _hold(
            DecisionReason.METRICS_UNAVAILABLE,
            _failure_summary(observation),
            current_replicas,
            policy,
            history,
            now,
        )
        if not observation.waiting:
            return hold
        # A silent pod can only add to the queue, never remove from it: the queue the
        # other pods report is a lower bound. Scaling up on it is safe (an overloaded
        # engine is exactly the one slow to answer /metrics); scaling down is not.
        known = decide(
            observation=Observation(
                waiting=observation.waiting,
                running=observation.running,
                starting=observation.starting,
            ),
            current_replicas=current_replicas,
            policy=policy,
            history=history,
            now=now,
            pod_capacity=pod_capacity,
        )
        if known.desired_replicas <= hold.desired_replicas:
            return hold
        return Decision(
            desired_replicas=known.desired_replicas,
            history=known.history,
            reason=DecisionReason.SCALE_UP,
            message=f"{_failure_summary(observation)}; scaling up on the queue the others "
            f"report (never down while metrics are missing): {known.message}",
            recommendation=known.recommendation,
            queue_depth=None,
        )
    if not observation.waiting:
        starting = len(observation.starting)
        return _hold(
            DecisionReason.NO_READY_PODS,
            f"no ready pod to read the queue from ({starting} starting)",
            current_replicas,
            policy,
            history,
            now,
        )

    bounded = policy.bound(current_replicas)
    target = policy.target_queue_depth
    # One pod's queue counts up to what alone needs max_replicas (rule 4): more cannot
    # change the decision, and the sum stays a number (1e12 or 2 x 1e308 waiting).
    per_pod_cap = policy.max_replicas * target
    outliers = sorted((pod, v) for pod, v in observation.waiting.items() if v > per_pod_cap)
    total = sum_or_inf(min(v, per_pod_cap) for v in observation.waiting.values())
    needed = _needed(total, target)
    pods = _plural(len(observation.waiting), "ready pod")
    if observation.starting:
        pods += f" + {len(observation.starting)} starting"
    notes = _bounds_note(current_replicas, bounded, policy)
    if outliers:
        named = ", ".join(f"{pod} reports {v:g}" for pod, v in outliers[:_NAMED_FAILURES])
        more = (
            f" and {len(outliers) - _NAMED_FAILURES} more"
            if len(outliers) > _NAMED_FAILURES
            else ""
        )
        notes.append(
            f"{named}{more} waiting, counted as {per_pod_cap:g} each "
            f"(alone enough for max {policy.max_replicas})"
        )
    notes.append(f"queue {total:g} over {pods}, target {target:g} → {needed}")
    if pod_capacity is not None and pod_capacity > 0:
        in_flight = sum_or_inf([total, *observation.running.values()])
        by_load = _needed(in_flight, pod_capacity + target)
        if by_load > needed:
            needed = by_load
            notes.append(
                f"{in_flight:g} in flight at {pod_capacity:g} per pod + target → {by_load}"
            )

    ratio = total / (target * bounded)
    # The epsilon makes the documented boundary inclusive despite float rounding
    # (110 / 100 - 1 is 0.10000000000000009).
    if abs(ratio - 1) <= policy.tolerance + 1e-9:
        recommendation = bounded
        if needed != bounded:
            notes.append(f"within tolerance (ratio {ratio:.2f}), keeping {bounded}")
    else:
        recommendation = policy.bound(needed)
        if needed > recommendation:
            notes.append(f"capped at max {policy.max_replicas}")
        elif needed < recommendation:
            notes.append(f"raised to min {policy.min_replicas}")

    # HPA's stabilization: the lowest recent recommendation limits a scale-up, the
    # highest recent one limits a scale-down; in between, stay where we are.
    up_limit = min([recommendation, *history.within(policy.scale_up_window_s, now)])
    down_limit = max([recommendation, *history.within(policy.scale_down_window_s, now)])
    stabilized = min(max(bounded, up_limit), down_limit)
    if stabilized != recommendation:
        window = "scale-up" if recommendation > bounded else "scale-down"
        seconds = policy.scale_up_window_s if window == "scale-up" else policy.scale_down_window_s
        notes.append(f"held at {stabilized} by the {seconds:g}s {window} window")

    desired = stabilized
    if desired > bounded + policy.up_step(bounded):
        desired = bounded + policy.up_step(bounded)
        notes.append(f"step limited to +{policy.up_step(bounded)}")
    elif desired < bounded - policy.down_step(bounded):
        desired = bounded - policy.down_step(bounded)
        notes.append(f"step limited to -{policy.down_step(bounded)}")
    desired = policy.bound(desired)

    if desired > current_replicas:
        reason = DecisionReason.SCALE_UP
    elif desired < current_replicas:
        reason = DecisionReason.SCALE_DOWN
    else:
        reason = DecisionReason.STEADY
    notes.append(f"desired {desired} (was {current_replicas})")
    return Decision(
        desired_replicas=desired,
        history=history.record(recommendation, now, policy.horizon_s),
        reason=reason,
        message=", ".join(notes),
        recommendation=recommendation,
        queue_depth=total,
    )
