"""`Stalled` and `Reconciling`, the conditions kstatus (Flux, cli-utils, kpt) reads, kept
consistent with Ready/Progressing/Degraded and the adapter loop's AdaptersReady.

kstatus reads, in order: observedGeneration behind generation -> InProgress;
Reconciling True -> InProgress; Stalled True -> Failed; Ready True -> Current, Ready
False -> InProgress. So each case here pins the one condition that decides, and that
the two never are True together (tests/e2e/test_kstatus.py asks the real library).
"""

from __future__ import annotations

from typing import Any

import pytest

from openmodel.problems import Problem
from openmodel.reconcile.status import Observation, build_status, needs_write


def deployment(spec_replicas: int, ready: int, updated: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": spec_replicas},
        "status": {
            "observedGeneration": 1,
            "replicas": spec_replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = {
        "generation": 3,
        "name": "m",
        "label_selector": "openmodel.dev/model-deployment=m",
        "endpoint": None,
        "desired_replicas": 1,
        "deployment": deployment(1, 1, 1),
    }
    base.update(kw)
    return Observation(**base)


def adapters(status: str, reason: str, message: str = "m") -> dict[str, Any]:
    condition = {"type": "AdaptersReady", "status": status, "reason": reason, "message": message}
    return {"conditions": [{**condition, "lastTransitionTime": "T0", "observedGeneration": 3}]}


def conditions(observation: Observation, observed: Any = None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in build_status(observation, observed, "T").status["conditions"]}


def kstatus_view(c: dict[str, dict[str, Any]]) -> tuple[str, str, str]:
    """(Stalled, Reconciling, Ready) statuses: what decides kstatus's verdict."""
    return c["Stalled"]["status"], c["Reconciling"]["status"], c["Ready"]["status"]


CRASHING_POD = {
    "metadata": {"name": "m-abc"},
    "status": {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "engine",
                "ready": False,
                "restartCount": 3,
                "lastState": {"terminated": {"exitCode": 2}},
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            }
        ],
    },
}


@pytest.mark.parametrize(
    ("case", "observation", "observed", "view", "decisive_reason"),
    [
        ("serving", obs(), None, ("False", "False", "True"), "Ready"),
        (
            "unknown accelerator, nothing deployed",
            obs(deployment=None, problem=Problem("UnknownAccelerator", "spec.gpu.type: x")),
            None,
            ("True", "False", "False"),
            "UnknownAccelerator",
        ),
        (
            "refused edit while the old pods serve",
            obs(problem=Problem("InsufficientGPUMemory", "spec.gpu: too small")),
            None,
            ("True", "False", "True"),
            "InsufficientGPUMemory",
        ),
        (
            "crash loop",
            obs(deployment=deployment(1, 0, 1), pods=[CRASHING_POD]),
            None,
            ("True", "False", "False"),
            "EngineCrashLoop",
        ),
        (
            "first start",
            obs(deployment=None),
            None,
            ("False", "True", "False"),
            "RollingOut",
        ),
        (
            "rolling out",
            obs(deployment=deployment(2, 1, 1), desired_replicas=2),
            None,
            ("False", "True", "False"),
            "RollingOut",
        ),
        (
            "sizing pending",
            obs(deployment=None, problem=Problem("SizingPending", "reading config.json")),
            None,
            ("False", "True", "False"),
            "SizingPending",
        ),
        (
            "scaled to zero",
            obs(deployment=deployment(0, 0, 0), desired_replicas=0),
            None,
            ("False", "False", "True"),
            "ScaledToZero",
        ),
        (
            "scaled to zero with adapters declared (no pod to load them on)",
            obs(deployment=deployment(0, 0, 0), desired_replicas=0),
            adapters("False", "NoReadyPods"),
            ("False", "False", "True"),
            "ScaledToZero",
        ),
        (
            "adapter refused by the engine while the model serves",
            obs(),
            adapters("False", "AdapterFailed", "adapter a: bad rank"),
            ("True", "False", "True"),
            "AdapterFailed",
        ),
        (
            "adapters still loading on a serving model",
            obs(),
            adapters("False", "AdapterMissing"),
            ("False", "True", "True"),
            "AdapterMissing",
        ),
        (
            "all adapters loaded",
            obs(),
            adapters("True", "AllLoaded"),
            ("False", "False", "True"),
            "Ready",
        ),
    ],
)
def test_kstatus_conditions(
    case: str,
    observation: Observation,
    observed: Any,
    view: tuple[str, str, str],
    decisive_reason: str,
) -> None:
    c = conditions(observation, observed)
    assert kstatus_view(c) == view, case
    stalled, reconciling, _ = view
    decisive = (
        c["Stalled"]
        if stalled == "True"
        else c["Reconciling"]
        if reconciling == "True"
        else c["Ready"]
    )
    assert decisive["reason"] == decisive_reason, case
    assert c["Stalled"]["observedGeneration"] == c["Reconciling"]["observedGeneration"] == 3


def test_stalled_repeats_degraded() -> None:
    c = conditions(obs(deployment=None, problem=Problem("UnknownAccelerator", "spec.gpu.type: x")))
    assert (c["Stalled"]["reason"], c["Stalled"]["message"]) == (
        c["Degraded"]["reason"],
        c["Degraded"]["message"],
    )


def test_adapter_failure_quotes_the_adapter_loop() -> None:
    c = conditions(obs(), adapters("False", "AdapterFailed", "adapter a loaded on 0/1: rank"))
    assert c["Stalled"]["message"] == "adapter a loaded on 0/1: rank"
    assert c["Degraded"]["status"] == "False"  # the spec itself is served


def test_scaled_to_zero_is_ready_and_keeps_its_reason() -> None:
    update = build_status(obs(deployment=deployment(0, 0, 0), desired_replicas=0), None, "T")
    ready = {c["type"]: c for c in update.status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")
    assert update.status["reason"] == "ScaledToZero"  # kubectl get md's STATUS


def test_adapter_loop_change_makes_the_reconciler_rewrite() -> None:
    first = build_status(obs(), None, "T1").status
    observed = {
        **first,
        "conditions": first["conditions"] + adapters("False", "AdapterFailed")["conditions"],
    }
    again = build_status(obs(), observed, "T2")
    assert needs_write(again.status, observed)
    stalled = {c["type"]: c for c in again.status["conditions"]}["Stalled"]
    assert (stalled["status"], stalled["lastTransitionTime"]) == ("True", "T2")
