"""The load floor: steady load does not flap once a pod's capacity is known."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from openmodel.autoscaler import Observation, ScalingHistory, ScalingPolicy, decide
from openmodel.engine_metrics.exposition import QueueReading

POLICY = ScalingPolicy(min_replicas=1, max_replicas=10, target_queue_depth=2, scale_down_window_s=0)


def steady_observation(clients: int, replicas: int, slots: int) -> Observation:
    """A closed-loop load of `clients` spread evenly over `replicas` pods of `slots`."""
    per_pod = [clients // replicas + (1 if i < clients % replicas else 0) for i in range(replicas)]
    results = {
        f"p{i}": QueueReading(waiting=float(max(0, n - slots)), running=float(min(n, slots)))
        for i, n in enumerate(per_pod)
    }
    return Observation.from_results(results)


def step(replicas: int, clients: int, slots: int, capacity: float | None) -> int:
    obs = steady_observation(clients, replicas, slots)
    return decide(
        observation=obs,
        current_replicas=replicas,
        policy=POLICY,
        history=ScalingHistory(),
        now=0.0,
        pod_capacity=capacity,
    ).desired_replicas


def test_capacity_is_read_from_saturated_pods_only() -> None:
    obs = Observation.from_results(
        {
            "a": QueueReading(waiting=3, running=4),
            "b": QueueReading(waiting=0, running=1),
        }
    )
    assert obs.saturated_capacity() == 4
    assert Observation.from_results({"a": QueueReading(0, 2)}).saturated_capacity() is None


def test_without_capacity_steady_load_flaps() -> None:
    # 12 clients, 2 slots per pod, target 2 waiting per pod: 4 pods drain the queue to
    # 4 waiting (-> 2), 2 pods leave 8 waiting (-> 4): the plain rule oscillates.
    assert step(4, 12, 2, None) == 2
    assert step(2, 12, 2, None) == 4


def test_with_capacity_steady_load_has_a_fixed_point() -> None:
    # In flight 12, capacity 2 + target 2 = 4 per pod -> 3 pods, from either side.
    assert step(4, 12, 2, 2.0) == 3
    assert step(2, 12, 2, 2.0) == 4  # scale-up still follows the queue (8 / 2)
    assert step(3, 12, 2, 2.0) == 3


def test_idle_still_scales_to_min() -> None:
    # Down by at most half per decision: 4 -> 2 -> 1.
    assert step(4, 0, 2, 2.0) == 2
    assert step(2, 0, 2, 2.0) == 1


@given(clients=st.integers(0, 200), slots=st.integers(1, 16), start=st.integers(1, 10))
def test_iterating_settles_without_oscillation(clients: int, slots: int, start: int) -> None:
    replicas = start
    seen = []
    for _ in range(30):
        replicas = step(replicas, clients, slots, float(slots))
        seen.append(replicas)
    tail = seen[-5:]
    assert len(set(tail)) == 1, seen
    # The fixed point keeps the queue within target and tolerance (or sits at max).
    final = tail[-1]
    waiting = sum(steady_observation(clients, final, slots).waiting.values())
    within = waiting <= POLICY.target_queue_depth * final * (1 + POLICY.tolerance)
    assert within or final == POLICY.max_replicas, (final, waiting)


def test_missing_metrics_never_scale_down_but_allow_scale_up() -> None:
    policy = ScalingPolicy(
        min_replicas=1, max_replicas=8, target_queue_depth=2, scale_down_window_s=0
    )
    quiet = Observation(waiting={"a": 0.0, "b": 0.0}, failed={"c": "Timeout: no answer"})
    held = decide(
        observation=quiet, current_replicas=3, policy=policy, history=ScalingHistory(), now=0.0
    )
    assert held.desired_replicas == 3
    assert held.reason == "MetricsUnavailable"
    busy = Observation(waiting={"a": 9.0, "b": 9.0}, failed={"c": "Timeout: no answer"})
    up = decide(
        observation=busy, current_replicas=3, policy=policy, history=ScalingHistory(), now=0.0
    )
    assert up.desired_replicas == 7  # 18 / 2 = 9 wanted, max 8, step cap +max(4, 100 %)
    assert up.reason == "ScaleUp"
    assert "Timeout" in up.message and up.queue_depth is None
