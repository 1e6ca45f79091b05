"""The pure replica decision (openmodel.autoscaler.decision)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openmodel.autoscaler.decision import (
    DecisionReason,
    Observation,
    Recommendation,
    ScalingHistory,
    ScalingPolicy,
    decide,
)
from openmodel.engine_metrics.exposition import FailureKind, MetricFailure, QueueReading

POLICY = ScalingPolicy(min_replicas=1, max_replicas=100, target_queue_depth=4)


def ready(*queues: float) -> Observation:
    return Observation(waiting={f"pod-{i}": q for i, q in enumerate(queues)})


def run(observation, current, policy=POLICY, history=None, now=0.0):
    return decide(
        observation=observation,
        current_replicas=current,
        policy=policy,
        history=ScalingHistory() if history is None else history,
        now=now,
    )


class Loop:
    """Calls decide() every `period` seconds the way the operator does, applying each
    desired replica count and keeping the history."""

    def __init__(self, policy: ScalingPolicy, current: int, period: float = 15.0) -> None:
        self.policy = policy
        self.current = current
        self.period = period
        self.now = 0.0
        self.history = ScalingHistory()
        self.decisions = []

    def step(self, observation: Observation):
        decision = run(observation, self.current, self.policy, self.history, self.now)
        self.history = decision.history
        self.current = decision.desired_replicas
        self.decisions.append(decision)
        self.now += self.period
        return decision


# --- the basic rule ---------------------------------------------------------------------


def test_example_from_the_brief():
    policy = ScalingPolicy(min_replicas=1, max_replicas=6, target_queue_depth=4)
    decision = run(ready(20, 10, 7), current=3, policy=policy)
    assert decision.desired_replicas == 6
    assert decision.reason is DecisionReason.SCALE_UP
    assert decision.recommendation == 6
    assert decision.queue_depth == 37
    assert "queue 37 over 3 ready pods, target 4 → 10" in decision.message
    assert "capped at max 6" in decision.message
    assert decision.message.endswith("desired 6 (was 3)")


@pytest.mark.parametrize(
    ("total", "target", "needed"),
    [(0, 4, 1), (1, 4, 1), (4, 4, 1), (4.5, 4, 2), (8, 4, 2), (11, 0.1, 110), (1.1, 0.1, 11)],
)
def test_needed_is_ceil_of_total_over_target(total, target, needed):
    policy = ScalingPolicy(
        min_replicas=1, max_replicas=1000, target_queue_depth=target, tolerance=0,
        max_up_pods=1000, scale_down_window_s=0,
    )  # fmt: skip
    assert run(ready(total), current=50, policy=policy).recommendation == needed


def test_raised_to_min():
    policy = replace(POLICY, min_replicas=3, scale_down_window_s=0)
    decision = run(ready(0), current=4, policy=policy)
    assert decision.desired_replicas == 3
    assert "raised to min 3" in decision.message


# --- tolerance ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "desired"),
    [(36, 10), (40, 10), (44, 10), (44.1, 12), (45, 12), (35.9, 9)],
)
def test_tolerance_keeps_current_near_target(total, desired):
    # current 10, target 4: capacity 40; 10 % either way is kept.
    policy = replace(POLICY, scale_down_window_s=0)
    decision = run(ready(total), current=10, policy=policy)
    assert decision.desired_replicas == desired


def test_tolerance_boundary_is_inclusive():
    policy = ScalingPolicy(min_replicas=1, max_replicas=100, target_queue_depth=10)
    decision = run(ready(110), current=10, policy=policy)
    assert decision.desired_replicas == 10
    assert decision.reason is DecisionReason.STEADY
    assert "within tolerance" in decision.message


def test_outside_tolerance_scales_down_when_no_window():
    policy = replace(POLICY, scale_down_window_s=0)
    decision = run(ready(35), current=10, policy=policy)
    assert decision.desired_replicas == 9
    assert decision.reason is DecisionReason.SCALE_DOWN


def test_zero_tolerance_follows_the_queue():
    policy = replace(POLICY, tolerance=0)
    assert run(ready(41), current=10, policy=policy).desired_replicas == 11


# --- bounds ---------------------------------------------------------------------------


def test_current_above_max_is_brought_down_whatever_the_queue():
    policy = ScalingPolicy(min_replicas=1, max_replicas=6, target_queue_depth=4)
    decision = run(ready(1000), current=10, policy=policy)
    assert decision.desired_replicas == 6
    assert "current 10 above max 6" in decision.message


def test_current_below_min_is_brought_up_whatever_the_queue():
    policy = ScalingPolicy(min_replicas=2, max_replicas=6, target_queue_depth=4)
    assert run(ready(0), current=0, policy=policy).desired_replicas == 2


@pytest.mark.parametrize(
    "observation",
    [Observation(), Observation(failed={"pod-0": "Timeout: no answer"})],
)
def test_bounds_apply_even_without_metrics(observation):
    policy = ScalingPolicy(min_replicas=2, max_replicas=6, target_queue_depth=4)
    above = run(observation, current=9, policy=policy)
    below = run(observation, current=1, policy=policy)
    assert (above.desired_replicas, below.desired_replicas) == (6, 2)
    assert "current 9 above max 6" in above.message
    assert "current 1 below min 2" in below.message


# --- missing data: hold ----------------------------------------------------------------


@pytest.mark.parametrize("queue", [0, 1])
def test_any_failing_ready_pod_holds(queue):
    # The pods that answer show no reason to grow; the silent one forbids shrinking.
    observation = Observation(
        waiting={"pod-a": queue, "pod-b": queue},
        failed={"pod-c": "HTTPError: HTTP 500 from http://10.0.0.3:8000/metrics"},
    )
    decision = run(observation, current=5)
    assert decision.desired_replicas == 5
    assert decision.reason is DecisionReason.METRICS_UNAVAILABLE
    assert decision.queue_depth is None
    assert "metrics unusable on 1 of 3 ready pods" in decision.message
    assert "pod-c: HTTPError: HTTP 500" in decision.message


def test_hold_message_lists_a_few_failures_then_counts():
    failed = {f"pod-{i:02}": "Timeout: no answer" for i in range(8)}
    decision = run(Observation(failed=failed), current=8)
    assert "pod-00: Timeout" in decision.message
    assert "pod-04: Timeout" in decision.message
    assert "pod-05" not in decision.message
    assert "and 3 more" in decision.message


def test_no_ready_pods_holds():
    decision = run(Observation(starting=frozenset({"pod-0", "pod-1"})), current=2)
    assert decision.desired_replicas == 2
    assert decision.reason is DecisionReason.NO_READY_PODS
    assert "2 starting" in decision.message


def test_from_results_classifies_scrape_results():
    observation = Observation.from_results(
        {
            "a": QueueReading(waiting=3, running=2),
            "b": MetricFailure(FailureKind.NOT_FINITE, "vllm:num_requests_waiting is [nan]"),
        },
        starting=["c"],
    )
    assert dict(observation.waiting) == {"a": 3}
    assert dict(observation.failed) == {"b": "MetricNotFinite: vllm:num_requests_waiting is [nan]"}
    assert observation.starting == {"c"}


# --- pods starting ----------------------------------------------------------------------


def test_starting_pods_count_as_capacity_on_the_way():
    # 2 ready pods hold a queue of 40; 8 more are loading: 10 = ceil(40 / 4) are already
    # on the way. An average over reporting pods (20 each) would ask for 10 * 20 / 4 = 50.
    observation = Observation(
        waiting={"a": 20, "b": 20}, starting=frozenset(f"new-{i}" for i in range(8))
    )
    decision = run(observation, current=10)
    assert decision.desired_replicas == 10
    assert decision.reason is DecisionReason.STEADY
    assert "2 ready pods + 8 starting" in decision.message


def test_burst_while_pods_load_does_not_cascade():
    loop = Loop(POLICY, current=2)
    loop.step(ready(20, 20))  # needs 10, may add 4
    assert loop.current == 6
    # The new pods take minutes to load; the same queue sits on the two old ones.
    for _ in range(20):
        loop.step(Observation(waiting={"a": 20, "b": 20}, starting=frozenset({"c", "d"})))
    assert loop.current == 10  # what the queue needs, not more
    assert [d.desired_replicas for d in loop.decisions] == [6] + [10] * 20


# --- stabilization windows -----------------------------------------------------------------


def test_scale_down_waits_for_the_whole_window():
    loop = Loop(POLICY, current=8)
    loop.step(ready(32))  # t=0: recommends 8
    while loop.now < 300:
        decision = loop.step(ready(0))
        assert loop.current == 8, (loop.now, decision.message)
    assert "held at 8 by the 300s scale-down window" in decision.message
    decision = loop.step(ready(0))  # t=300: the 8 has left the window
    assert (decision.desired_replicas, decision.reason) == (4, DecisionReason.SCALE_DOWN)
    assert "step limited to -4" in decision.message
    loop.step(ready(0))
    loop.step(ready(0))
    assert loop.current == 1


def test_scale_down_goes_to_the_highest_recent_recommendation():
    loop = Loop(POLICY, current=10)
    loop.step(ready(40))  # t=0: 10
    loop.now = 100
    loop.step(ready(28))  # t=100: 7
    loop.now = 200
    loop.step(ready(0))  # t=200: 1, held at 10
    loop.now = 300
    assert loop.step(ready(0)).desired_replicas == 7  # max of {7, 1, 1}


def test_scale_up_window_takes_the_lowest_recent_recommendation():
    policy = replace(POLICY, scale_up_window_s=60)
    loop = Loop(policy, current=2)
    loop.step(ready(8))  # t=0: 2
    for _ in range(3):  # t=15, 30, 45
        decision = loop.step(ready(32))
        assert loop.current == 2
    assert "held at 2 by the 60s scale-up window" in decision.message
    assert loop.step(ready(32)).desired_replicas == 6  # t=60: min{8, 8, 8, 8}, +4 cap


def test_scale_up_is_immediate_by_default():
    history = ScalingHistory.assume(2, at=0)
    assert run(ready(32), current=2, history=history, now=1).desired_replicas == 6


def test_holds_are_recorded_so_scale_down_waits_after_an_outage():
    loop = Loop(POLICY, current=8)
    for _ in range(40):  # 10 minutes with no usable metrics
        loop.step(Observation(failed={"a": "Timeout: no answer"}))
    last_hold = loop.now - loop.period
    while loop.now < last_hold + 300:
        loop.step(ready(0))
        assert loop.current == 8
    assert loop.step(ready(0)).desired_replicas == 4


def test_assumed_history_protects_a_restart():
    history = ScalingHistory.assume(6, at=1000)
    assert run(ready(0), current=6, history=history, now=1015).desired_replicas == 6
    assert run(ready(0), current=6, history=history, now=1300).desired_replicas == 3


def test_history_is_pruned_to_the_longest_window():
    loop = Loop(POLICY, current=4)
    for i in range(1000):
        loop.step(ready(16 + i % 3))
    # 300 s window, one entry every 15 s.
    assert len(loop.history.entries) == 20
    assert all(loop.now - 15 - r.at < 300 for r in loop.history.entries)


def test_decide_does_not_mutate_its_inputs():
    history = ScalingHistory((Recommendation(0.0, 3),))
    waiting = {"a": 4.0}
    observation = Observation(waiting=waiting)
    waiting["b"] = 1000.0  # the observation keeps its own copy
    decision = run(observation, current=3, history=history, now=10)
    assert history.entries == (Recommendation(0.0, 3),)
    assert decision.history.entries == (Recommendation(0.0, 3), Recommendation(10, 1))
    assert decision.queue_depth == 4


# --- step caps ------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "up_to"), [(1, 5), (2, 6), (4, 8), (5, 10), (30, 60)])
def test_scale_up_step_is_max_of_4_pods_and_100_percent(current, up_to):
    policy = replace(POLICY, max_replicas=1000)
    decision = run(ready(100_000), current=current, policy=policy)
    assert decision.desired_replicas == up_to


@pytest.mark.parametrize(("current", "down_to"), [(2, 1), (3, 2), (4, 2), (9, 5), (40, 20)])
def test_scale_down_step_is_max_of_1_pod_and_half(current, down_to):
    policy = replace(POLICY, scale_down_window_s=0)
    assert run(ready(0), current=current, policy=policy).desired_replicas == down_to


def test_step_caps_are_configurable():
    policy = replace(
        POLICY, max_up_pods=1, max_up_percent=0, max_down_pods=2, max_down_percent=0,
        scale_down_window_s=0,
    )  # fmt: skip
    assert run(ready(1000), current=10, policy=policy).desired_replicas == 11
    assert run(ready(0), current=10, policy=policy).desired_replicas == 8


# --- steady load --------------------------------------------------------------------------


def test_constant_queue_converges_and_stays():
    loop = Loop(POLICY, current=3)
    for _ in range(100):
        loop.step(ready(10, 10))
    assert [d.desired_replicas for d in loop.decisions[:2]] == [5, 5]
    assert all(d.reason is DecisionReason.STEADY for d in loop.decisions[1:])


def test_noisy_queue_around_a_boundary_does_not_flap():
    # Needs 5 or 6 replicas depending on the sample: one step up, never back.
    loop = Loop(POLICY, current=5)
    for i in range(200):
        loop.step(ready((19, 21, 23, 17)[i % 4]))
    changes = [d for d in loop.decisions if d.reason is not DecisionReason.STEADY]
    assert [(d.reason, d.desired_replicas) for d in changes] == [(DecisionReason.SCALE_UP, 6)]


# --- validation ---------------------------------------------------------------------------


def test_policy_from_the_api_spec():
    from openmodel.api import AutoscalingSpec

    spec = AutoscalingSpec(
        min_replicas=2, max_replicas=8, target_queue_depth=3.0,
        scale_up_stabilization_seconds=30, scale_down_stabilization_seconds=600,
    )  # fmt: skip
    policy = ScalingPolicy.from_spec(spec, tolerance=0.2)
    assert (policy.min_replicas, policy.max_replicas, policy.target_queue_depth) == (2, 8, 3.0)
    windows = (policy.scale_up_window_s, policy.scale_down_window_s)
    assert (windows, policy.tolerance) == ((30, 600), 0.2)
    assert (policy.max_up_pods, policy.max_down_percent) == (4, 50)


@pytest.mark.parametrize(
    "changes",
    [
        {"min_replicas": 0},
        {"max_replicas": 0},
        {"target_queue_depth": 0},
        {"target_queue_depth": math.nan},
        {"target_queue_depth": math.inf},
        {"scale_up_window_s": -1},
        {"scale_down_window_s": math.nan},
        {"tolerance": -0.1},
        {"max_up_pods": 0},
        {"max_down_pods": 0},
        {"max_down_percent": 101},
        {"max_up_percent": -1},
    ],
)
def test_policy_rejects_nonsense(changes):
    with pytest.raises(ValueError):
        replace(POLICY, **changes)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"waiting": {"a": 1}, "failed": {"a": "x"}},
        {"waiting": {"a": 1}, "starting": frozenset({"a"})},
        {"failed": {"a": "x"}, "starting": frozenset({"a"})},
        {"waiting": {"a": math.nan}},
        {"waiting": {"a": -1}},
        {"waiting": {"a": math.inf}},
    ],
)
def test_observation_rejects_contradictions(kwargs):
    with pytest.raises(ValueError):
        Observation(**kwargs)


# --- properties ---------------------------------------------------------------------------

queue_values = st.floats(min_value=0, max_value=10_000, allow_nan=False)


@st.composite
def policies(draw: st.DrawFn) -> ScalingPolicy:
    low = draw(st.integers(1, 20))
    return ScalingPolicy(
        min_replicas=low,
        max_replicas=draw(st.integers(low, 60)),
        target_queue_depth=draw(st.sampled_from([0.5, 1, 2, 4, 7.5, 16])),
        scale_up_window_s=draw(st.sampled_from([0, 30, 60])),
        scale_down_window_s=draw(st.sampled_from([0, 60, 300])),
        tolerance=draw(st.sampled_from([0, 0.1, 0.25])),
        max_up_pods=draw(st.integers(1, 8)),
        max_up_percent=draw(st.sampled_from([0, 50, 100, 200])),
        max_down_pods=draw(st.integers(1, 4)),
        max_down_percent=draw(st.sampled_from([0, 25, 50, 100])),
    )


@st.composite
def histories(draw: st.DrawFn) -> ScalingHistory:
    ages = draw(st.lists(st.floats(min_value=0, max_value=400), max_size=25))
    return ScalingHistory(
        tuple(Recommendation(1000 - age, draw(st.integers(1, 80))) for age in sorted(ages)[::-1])
    )


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    waiting = draw(st.lists(queue_values, max_size=12))
    starting = draw(st.integers(0, 6))
    return Observation(
        waiting={f"r{i}": q for i, q in enumerate(waiting)},
        starting=frozenset(f"s{i}" for i in range(starting)),
    )


@settings(deadline=None, max_examples=300)
@given(policies(), observations(), st.integers(0, 100), histories())
def test_decision_invariants(policy, observation, current, history):
    decision = run(observation, current, policy, history, now=1000)
    bounded = policy.bound(current)
    desired = decision.desired_replicas
    assert policy.min_replicas <= desired <= policy.max_replicas
    # Never more than one step from the bounded current.
    assert bounded - policy.down_step(bounded) <= desired <= bounded + policy.up_step(bounded)
    # Moves toward the recommendation, never past it.
    rec = decision.recommendation
    assert min(bounded, rec) <= desired <= max(bounded, rec)
    # A scale-down needs every recommendation in the window to be below the current size;
    # a scale-up needs every recommendation in the up window above it.
    if desired < bounded:
        assert all(r < bounded for r in history.within(policy.scale_down_window_s, 1000))
    if desired > bounded:
        assert all(r > bounded for r in history.within(policy.scale_up_window_s, 1000))
    # The new history ends with this recommendation and drops what no window can see.
    assert decision.history.entries[-1] == Recommendation(1000, rec)
    assert all(1000 - r.at < policy.horizon_s for r in decision.history.entries[:-1])


@settings(deadline=None)
@given(policies(), observations(), st.integers(0, 100), histories(), st.integers(0, 50))
def test_starting_pods_never_change_the_decision(policy, observation, current, history, extra):
    if not observation.waiting:
        return
    more = replace(observation, starting=observation.starting | {f"x{i}" for i in range(extra)})
    a = run(observation, current, policy, history, now=1000)
    b = run(more, current, policy, history, now=1000)
    assert (a.desired_replicas, a.recommendation) == (b.desired_replicas, b.recommendation)


@settings(deadline=None)
@given(policies(), observations(), st.integers(0, 100), histories(), queue_values)
def test_more_queue_never_means_fewer_replicas(policy, observation, current, history, more):
    if not observation.waiting:
        return
    pod = next(iter(observation.waiting))
    grown = {**observation.waiting, pod: observation.waiting[pod] + more}
    bigger = replace(observation, waiting=grown)
    a = run(observation, current, policy, history, now=1000)
    b = run(bigger, current, policy, history, now=1000)
    # Holds for the tolerance band too: it keeps `current`, which lies between what a
    # queue below the band and a queue above it recommend.
    assert b.recommendation >= a.recommendation
    assert b.desired_replicas >= a.desired_replicas


@settings(deadline=None)
@given(policies(), st.integers(0, 100), histories(), st.lists(st.text(max_size=5), min_size=1))
def test_any_failure_never_scales_below_the_bounded_current(policy, current, history, reasons):
    # A silent pod can only add to the queue: scaling up on the known part is allowed,
    # scaling down never is.
    for queue in (0.0, 1e6):
        observation = Observation(
            waiting={"ok": queue}, failed={f"f{i}": r for i, r in enumerate(reasons)}
        )
        decision = run(observation, current, policy, history, now=1000)
        assert decision.desired_replicas >= policy.bound(current)
        if decision.desired_replicas == policy.bound(current):
            assert decision.reason is DecisionReason.METRICS_UNAVAILABLE
        else:
            assert decision.reason is DecisionReason.SCALE_UP
            assert decision.queue_depth is None


@settings(deadline=None)
@given(
    st.lists(st.floats(min_value=17, max_value=23), min_size=50, max_size=120),
    st.integers(4, 7),
)
def test_no_flapping_while_load_stays_in_a_band(totals, start):
    # Every sample needs 5 or 6 replicas (target 4). Whatever their order, the replica
    # count stays between the start and the band, and a scale-up is never undone within
    # the scale-down window. (Down then up can happen: 300 s of low samples is evidence.)
    loop = Loop(POLICY, current=start)
    for total in totals:
        loop.step(ready(total))
    assert all(min(start, 5) <= d.desired_replicas <= max(start, 6) for d in loop.decisions)
    ups = [i * loop.period for i, d in enumerate(loop.decisions) if d.reason.value == "ScaleUp"]
    downs = [i * loop.period for i, d in enumerate(loop.decisions) if d.reason.value == "ScaleDown"]
    for up in ups:
        assert not [t for t in downs if up < t < up + POLICY.scale_down_window_s], (ups, downs)
