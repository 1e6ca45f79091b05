"""The autoscaler in a closed loop: real control plane, KWOK GPU nodes, the operator
process, a simulated engine on every pod's IP and a load generator over the ready pods.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from harness import NotYet, describe_namespace, wait_for
from harness.engine_fleet import EngineFleet, LoadGenerator
from openmodel_fixtures import OperatorProcess, autoscaled_small_md, condition, create_md, get_md

pytestmark = pytest.mark.cluster

NAME = "llama8b"
# 12 clients on pods of 3 slots with a target of 1 waiting per replica. 3 replicas
# carry it (9 running, 3 waiting). A rule that reads only the queue flaps here: at 4
# replicas nothing waits (-> min), at 2 six wait (-> max); the autoscaler must not.
SLOTS = 3
TARGET = 1
CLIENTS = 12
DOWN_WINDOW = 4


def autoscaled_md(namespace: str) -> dict[str, Any]:
    return autoscaled_small_md(
        namespace,
        NAME,
        minReplicas=1,
        maxReplicas=4,
        targetQueueDepth=TARGET,
        scaleDownStabilizationSeconds=DOWN_WINDOW,
    )


def replicas(api: client.ApiClient, namespace: str) -> int:
    dep = client.AppsV1Api(api).read_namespaced_deployment(NAME, namespace)
    return int(dep.spec.replicas)


@pytest.fixture
def fleet(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> Iterator[EngineFleet]:
    create_md(api_client, autoscaled_md(namespace))
    f = EngineFleet(api_client, namespace, NAME, slots=SLOTS, service_time=0.3).start()
    yield f
    f.stop()


def test_closed_loop_scales_up_holds_steady_and_back_down(
    api_client: client.ApiClient, namespace: str, fleet: EngineFleet
) -> None:
    # Idle with one engine serving: steady at minReplicas.
    wait_for(
        lambda: len(fleet.urls()) == 1 or NotYet(fleet.urls()),
        60,
        lambda: describe_namespace(api_client, namespace),
    )
    assert replicas(api_client, namespace) == 1

    load = LoadGenerator(fleet, clients=CLIENTS, max_seconds=90).start()
    try:
        # One replica: ~9 waiting, far above the target of 1 per replica.
        peak = [0]

        def scaled_up() -> int | NotYet:
            r = replicas(api_client, namespace)
            peak[0] = max(peak[0], fleet.total_waiting())
            return r if r >= 3 else NotYet(f"replicas {r}, waiting {fleet.total_waiting()}")

        wait_for(scaled_up, 30, lambda: describe_namespace(api_client, namespace))

        # Steady load: watch the count for a while. It may settle once (4 -> 3: 12 in
        # flight at 3 + 1 per pod need 3), but must never go back up: no flapping.
        wait_for(lambda: len(fleet.urls()) >= 3 or NotYet(fleet.urls()), 30, "engines on new pods")
        seen = []
        end = time.monotonic() + 3 * DOWN_WINDOW + 4
        while time.monotonic() < end:
            seen.append(replicas(api_client, namespace))
            time.sleep(0.5)  # sampling period of an observation, not synchronisation
        ups = [b for a, b in itertools.pairwise(seen) if b > a]
        assert not ups, f"replicas went back up under steady load: {seen}"
        assert 3 <= seen[-1] <= 4, seen
        assert len(set(seen[-6:])) == 1, f"not settled: {seen}"

        # The queue drained: from ~9 on one replica to about the target per replica
        # (uneven spreading over pods can leave a slot idle, hence the margin).
        def measured() -> dict[str, Any] | NotYet:
            st = get_md(api_client, namespace, NAME)["status"]["autoscaler"]
            return st if "queueDepth" in st else NotYet(st)

        status = wait_for(measured, 10, lambda: describe_namespace(api_client, namespace))
        assert status["queueDepth"] <= 2 * TARGET * seen[-1] < peak[0] + 1, (status, peak)
        assert status["desiredReplicas"] == seen[-1]
        assert load.sent > 0
    finally:
        load.stop()

    # Load gone: back to minReplicas after the scale-down window.
    def at_min() -> bool | NotYet:
        r = replicas(api_client, namespace)
        return r == 1 or NotYet(f"replicas {r}, waiting {fleet.total_waiting()}")

    wait_for(at_min, DOWN_WINDOW + 30, lambda: describe_namespace(api_client, namespace))

    events = (
        client.CoreV1Api(api_client)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}")
        .items
    )
    reasons = {e.reason for e in events}
    assert {"ScaleUp", "ScaleDown"} <= reasons, reasons
    up = next(e for e in events if e.reason == "ScaleUp")
    assert "queue" in up.message and "->" in up.message


def test_missing_metrics_hold_instead_of_scaling_down(
    api_client: client.ApiClient, namespace: str, fleet: EngineFleet
) -> None:
    wait_for(lambda: len(fleet.urls()) == 1 or NotYet(fleet.urls()), 60, "one engine")
    load = LoadGenerator(fleet, clients=CLIENTS, max_seconds=60).start()
    try:
        wait_for(
            lambda: len(fleet.urls()) >= 3 or NotYet(fleet.urls()),
            40,
            lambda: describe_namespace(api_client, namespace),
        )
    finally:
        load.stop()
    # Every engine goes silent at once while its pod stays Ready: /metrics unreachable.
    # A lost scrape target is not an empty queue: hold, never scale down on it.
    fleet.stop()
    held_at = replicas(api_client, namespace)

    def holding() -> dict[str, Any] | NotYet:
        c = condition(get_md(api_client, namespace, NAME), "ScalingActive")
        return c if c.get("reason") == "MetricsUnavailable" else NotYet(c)

    c = wait_for(holding, 20, "ScalingActive=False/MetricsUnavailable")
    assert c["status"] == "False"
    assert "metrics unusable on" in c["message"]
    held_at = replicas(api_client, namespace)
    assert held_at >= 3
    # Longer than the scale-down window: still there.
    deadline = time.monotonic() + DOWN_WINDOW + 3
    while time.monotonic() < deadline:
        assert replicas(api_client, namespace) == held_at
        time.sleep(0.5)  # sampling, not synchronisation
