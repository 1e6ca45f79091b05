"""Bad input the operator itself meets: a status edited to garbage (the reconciler's status
builder, the loops' status writer, the autoscaler's summary), an annotation with a wrong
value, a platform accelerator the CRD would never let a spec name."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from openmodel import cli
from openmodel.accelerators import AcceleratorConfigError, accelerator_from_config
from openmodel.api import SpecError, status_conditions
from openmodel.api_schema import check_object
from openmodel.autoscaler.decision import Decision, DecisionReason, ScalingHistory
from openmodel.autoscaler.loop import autoscaler_status
from openmodel.config import PlatformConfig
from openmodel.engines import parse_model_deployment
from openmodel.kube.status_writer import loop_status_changed
from openmodel.reconcile.plan import SKIP_FIT_CHECK_ANNOTATION, make_plan, skip_fit_check
from openmodel.reconcile.status import Observation, build_status, needs_write

REPO = Path(__file__).resolve().parents[2]
NOW = "2026-12-02T03:00:00Z"


def observation() -> Observation:
    return Observation(
        generation=4,
        name="m",
        label_selector="openmodel.dev/model-deployment=m",
        endpoint="http://m.ns.svc.cluster.local:8000/v1",
        desired_replicas=1,
        deployment={
            "metadata": {"generation": 2},
            "spec": {"replicas": 1},
            "status": {
                "observedGeneration": 2,
                "replicas": 1,
                "readyReplicas": 1,
                "updatedReplicas": 1,
            },
        },
        gpu="1x nvidia-l4",
    )


GARBAGE_STATUSES: dict[str, Any] = {
    "status-a-string": "garbage",
    "status-a-list": [{"type": "Ready"}],
    "conditions-a-string": {"conditions": "Ready"},
    "conditions-an-object": {"conditions": {"type": "Ready", "status": "True"}},
    "conditions-a-number": {"conditions": 5},
    "conditions-of-junk": {
        "conditions": [None, 3, "Ready", ["Ready"], {"status": "True"}, {"type": 7}, {"type": ""}]
    },
    "condition-without-type": {"conditions": [{"status": "True", "reason": "Ready"}]},
    "counts-as-strings": {
        "replicas": "three",
        "readyReplicas": None,
        "observedGeneration": "x",
        "reason": 12,
        "endpoint": ["x"],
        "gpu": {"count": 2},
        "sizing": "big",
    },
    "time-not-a-string": {
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": 12345}]
    },
    "same-type-twice": {
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "x", "lastTransitionTime": "T0"},
            {"type": "Ready", "status": "True", "reason": "y", "lastTransitionTime": "T1"},
        ]
    },
}


@pytest.mark.parametrize("garbage", GARBAGE_STATUSES.values(), ids=list(GARBAGE_STATUSES))
def test_garbage_status_is_rebuilt_not_crashed_on(garbage: Any) -> None:
    clean = build_status(observation(), None, NOW).status
    update = build_status(observation(), garbage, NOW)
    rebuilt = update.status
    # The world decides every field we own; a string time may be kept only from a
    # condition whose status is unchanged ("same-type-twice" keeps T1 for Ready True).
    for cond in rebuilt["conditions"]:
        assert isinstance(cond["lastTransitionTime"], str)
        cond_clean = next(c for c in clean["conditions"] if c["type"] == cond["type"])
        assert {k: v for k, v in cond.items() if k != "lastTransitionTime"} == {
            k: v for k, v in cond_clean.items() if k != "lastTransitionTime"
        }
    assert {k: v for k, v in rebuilt.items() if k != "conditions"} == {
        k: v for k, v in clean.items() if k != "conditions"
    }
    assert rebuilt["replicas"] == 1 and rebuilt["readyReplicas"] == 1
    assert rebuilt["reason"] == "Ready"
    # The garbage is written over, and once written nothing more is.
    assert needs_write(rebuilt, garbage)
    assert not needs_write(rebuilt, rebuilt)


def test_a_non_string_transition_time_is_replaced_by_now() -> None:
    garbage = GARBAGE_STATUSES["time-not-a-string"]
    ready = next(c for c in build_status(observation(), garbage, NOW).status["conditions"])
    assert ready["type"] == "Ready" and ready["lastTransitionTime"] == NOW


def test_foreign_conditions_are_ignored_and_ours_are_found() -> None:
    found = status_conditions(
        {"conditions": [{"type": "ScalingActive", "status": "True"}, "junk", {"type": "Ready"}]}
    )
    assert sorted(found) == ["Ready", "ScalingActive"]


def md(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "llama70b-awq.yaml").read_text())
    if annotations is not None:
        body["metadata"]["annotations"] = annotations
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("value", ["yes", "True", "1", "", "on"])
def test_a_wrong_skip_fit_check_value_is_refused_naming_the_annotation(value: str) -> None:
    body = md({SKIP_FIT_CHECK_ANNOTATION: value})
    with pytest.raises(SpecError) as err:
        make_plan(
            parse_model_deployment(body), PlatformConfig(), None, body["metadata"]["annotations"]
        )
    assert err.value.reason == "InvalidAnnotation"
    assert err.value.field == f"metadata.annotations[{SKIP_FIT_CHECK_ANNOTATION}]"
    assert repr(value) in err.value.message and '"true" or "false"' in err.value.message


@pytest.mark.parametrize(("value", "skip"), [(None, False), ("true", True), ("false", False)])
def test_the_accepted_skip_fit_check_values(value: str | None, skip: bool) -> None:
    annotations = {} if value is None else {SKIP_FIT_CHECK_ANNOTATION: value}
    assert skip_fit_check(annotations) is skip
    body = md(annotations)
    plan = make_plan(parse_model_deployment(body), PlatformConfig(), None, annotations)
    assert plan.replicas == 1


def test_validate_reports_a_wrong_annotation_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("OPENMODEL_CONFIG", raising=False)
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(md({SKIP_FIT_CHECK_ANNOTATION: "yes"})))
    out = io.StringIO()
    assert cli.main(["validate", "-f", str(path)], out=out) == cli.EXIT_INVALID
    assert f"metadata.annotations[{SKIP_FIT_CHECK_ANNOTATION}]" in out.getvalue()
    assert "(InvalidAnnotation)" in out.getvalue()


@pytest.mark.parametrize("name", ["NVIDIA-H100", "h100_80gb", "-x", "x" * 64, "a b"])
def test_a_platform_accelerator_no_spec_could_name_is_refused(name: str) -> None:
    with pytest.raises(AcceleratorConfigError, match=r"spec\.gpu\.type accepts"):
        accelerator_from_config(name, {"memoryGiB": 80, "nodeLabelValues": ["X"]})


def test_a_platform_accelerator_name_the_crd_accepts_passes_both() -> None:
    acc = accelerator_from_config("amd-mi300x", {"memoryGiB": 192, "nodeLabelValues": ["X"]})
    body = md()
    body["spec"]["gpu"] = {"type": acc.name, "count": 1}
    assert check_object(body) == []


def loop_status() -> dict[str, Any]:
    return {
        "autoscaler": {"desiredReplicas": 1},
        "conditions": [
            {
                "type": "ScalingActive",
                "status": "True",
                "reason": "Steady",
                "message": "ok",
                "observedGeneration": 3,
            }
        ],
    }


@pytest.mark.parametrize("garbage", GARBAGE_STATUSES.values(), ids=list(GARBAGE_STATUSES))
def test_the_loops_status_writer_takes_garbage_as_missing(garbage: Any) -> None:
    desired = loop_status()
    assert loop_status_changed(desired, garbage)
    written = {**desired, "conditions": [{**desired["conditions"][0], "lastTransitionTime": NOW}]}
    assert not loop_status_changed(desired, written)


@pytest.mark.parametrize("previous", ["garbage", ["x"], {"lastScaleTime": 12}, None])
def test_the_autoscaler_summary_ignores_a_malformed_previous_one(previous: Any) -> None:
    decision = Decision(
        desired_replicas=2,
        history=ScalingHistory(),
        reason=DecisionReason.STEADY,
        message="steady",
        recommendation=2,
        queue_depth=0.0,
    )
    summary = autoscaler_status(decision, previous, None, 3)["autoscaler"]
    assert "lastScaleTime" not in summary
    assert summary["desiredReplicas"] == 2
    kept = autoscaler_status(decision, {"lastScaleTime": NOW}, None, 3)["autoscaler"]
    assert kept["lastScaleTime"] == NOW
