"""Status is rebuilt from observations; drift detection follows apply semantics."""

from __future__ import annotations

from typing import Any

from openmodel.drift import holds, object_holds
from openmodel.status import Observation, Problem, build_status, needs_write


def deployment(spec_replicas: int, ready: int, updated: int, gen: int = 2, seen: int = 2) -> Any:
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": spec_replicas},
        "status": {
            "observedGeneration": seen,
            "replicas": spec_replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = {
        "generation": 5,
        "name": "m",
        "label_selector": "openmodel.dev/model-deployment=m",
        "endpoint": "http://m.ns.svc.cluster.local:8000/v1",
        "desired_replicas": 2,
        "deployment": deployment(2, 2, 2),
    }
    base.update(kw)
    return Observation(**base)


def conditions(update: Any) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in update.status["conditions"]}


def test_ready_when_rolled_out() -> None:
    update = build_status(obs(), None, "T1")
    c = conditions(update)
    assert c["Ready"]["status"] == "True"
    assert c["Progressing"]["status"] == "False"
    assert c["Degraded"]["status"] == "False"
    assert update.status["observedGeneration"] == 5
    assert update.status["readyReplicas"] == 2
    assert all(x["observedGeneration"] == 5 for x in c.values())


def test_not_ready_while_pods_start_or_controller_lags() -> None:
    assert (
        conditions(build_status(obs(deployment=deployment(2, 1, 2)), None, "T"))["Ready"]["status"]
        == "False"
    )
    lagging = deployment(2, 2, 2, gen=3, seen=2)
    c = conditions(build_status(obs(deployment=lagging), None, "T"))
    assert c["Ready"]["status"] == "False"
    assert c["Progressing"]["status"] == "True"


def test_unschedulable_quotes_scheduler() -> None:
    pod = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/10 nodes are available: 4 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    }
    c = conditions(build_status(obs(deployment=deployment(1, 0, 1), pods=[pod]), None, "T"))
    assert c["Degraded"]["status"] == "True"
    assert c["Degraded"]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in c["Degraded"]["message"]


def test_spec_problem_keeps_running_children_ready() -> None:
    problem = Problem("UnknownAccelerator", "spec.gpu.type: unknown accelerator 'x'")
    c = conditions(build_status(obs(problem=problem), None, "T"))
    assert c["Degraded"]["reason"] == "UnknownAccelerator"
    assert c["Ready"]["status"] == "True"  # the last good version still serves
    assert c["Progressing"]["reason"] == "SpecRejected"


def test_transition_time_kept_when_status_unchanged_and_no_rewrite() -> None:
    first = build_status(obs(), None, "T1")
    assert {t.condition for t in first.transitions} == {"Ready", "Progressing", "Degraded"}
    second = build_status(obs(), first.status, "T2")
    assert all(c["lastTransitionTime"] == "T1" for c in second.status["conditions"])
    assert second.transitions == []
    assert not needs_write(second.status, first.status)


def test_foreign_conditions_do_not_force_writes() -> None:
    first = build_status(obs(), None, "T1").status
    observed = dict(first)
    observed["conditions"] = [*first["conditions"], {"type": "ScalingActive", "status": "True"}]
    observed["autoscaler"] = {"queueDepth": 3}
    assert not needs_write(first, observed)


def test_changed_generation_needs_write() -> None:
    first = build_status(obs(), None, "T1").status
    assert needs_write(build_status(obs(generation=6), first, "T2").status, first)


def test_drift_semantics() -> None:
    desired = {"spec": {"args": ["--a", "1"], "env": [{"name": "A", "value": "1"}]}}
    assert holds(
        desired,
        {"spec": {"args": ["--a", "1"], "env": [{"name": "A", "value": "1"}], "defaulted": True}},
    )
    # A removed flag, a hand-edited value and an extra list element are all drift.
    assert not holds(
        desired, {"spec": {"args": ["--a", "1", "--b"], "env": [{"name": "A", "value": "1"}]}}
    )
    assert not holds(
        desired, {"spec": {"args": ["--a", "2"], "env": [{"name": "A", "value": "1"}]}}
    )
    assert not object_holds({"apiVersion": "v1", "kind": "Service", "spec": {}}, None)
    assert object_holds(
        {"apiVersion": "v1", "kind": "Service", "spec": {"x": 1}}, {"spec": {"x": 1, "y": 2}}
    )


def test_own_writes_recognise_only_their_exact_echo() -> None:
    from openmodel.reconcile import OwnWrites

    writes = OwnWrites()
    writes.record(
        "Deployment", {"metadata": {"namespace": "ns", "name": "m", "resourceVersion": "42"}}
    )
    assert writes.is_echo("Deployment", "ns", "m", "42")
    assert not writes.is_echo("Deployment", "ns", "m", "43")  # someone else's edit
    assert not writes.is_echo("Service", "ns", "m", "42")
    assert not writes.is_echo("Deployment", "ns", "m", None)
    writes.forget("Deployment", "ns", "m")
    assert not writes.is_echo("Deployment", "ns", "m", "42")
