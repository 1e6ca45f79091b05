"""The ModelDeployment's `Overflow` condition (reconcile/overflow.py) and what it does to
the rest of the status: Degraded only in a private namespace, kstatus Stalled then, and
the condition dropped from the applied status when spec.gateway.overflow goes."""

from __future__ import annotations

from typing import Any

import pytest

from openmodel.api import Overflow
from openmodel.reconcile.overflow import (
    ALLOWED,
    EXTERNAL_MODEL_NOT_FOUND,
    NOT_ALLOWED_IN_PRIVATE_NAMESPACE,
    OVERFLOW_NOT_ALLOWED,
    overflow_verdict,
)
from openmodel.reconcile.status import Observation, build_status, needs_write

TARGET = Overflow(model="gpt-4o-mini")


def deployment() -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 1,
            "replicas": 1,
            "readyReplicas": 1,
            "updatedReplicas": 1,
        },
    }


def conditions(overflow: Any, generation: int = 4) -> dict[str, dict[str, Any]]:
    obs = Observation(
        generation=generation,
        name="m",
        label_selector="openmodel.dev/model-deployment=m",
        endpoint=None,
        desired_replicas=1,
        deployment=deployment(),
        overflow=overflow,
    )
    return {c["type"]: c for c in build_status(obs, None, "T").status["conditions"]}


def test_unset_overflow_has_no_verdict_and_no_condition() -> None:
    assert overflow_verdict(None, private=True, external_names={"x"}) is None
    assert "Overflow" not in conditions(None)


def test_allowed_names_the_target_and_when() -> None:
    verdict = overflow_verdict(
        Overflow(model="gpt-4o-mini", when_starting=True, queue_depth_above=8),
        False,
        {"gpt-4o-mini"},
    )
    assert verdict is not None and verdict.allowed and verdict.reason == ALLOWED
    assert "'gpt-4o-mini'" in verdict.message and "deeper than 8" in verdict.message
    c = conditions(verdict)
    assert c["Overflow"]["status"] == "True" and c["Overflow"]["observedGeneration"] == 4
    assert c["Degraded"]["status"] == "False"


def test_private_namespace_refuses_and_degrades_naming_the_setting_and_the_label() -> None:
    # The target existing changes nothing: the namespace decides first.
    for names in (set(), {"gpt-4o-mini"}):
        verdict = overflow_verdict(TARGET, private=True, external_names=names)
        assert verdict is not None and not verdict.allowed
        assert verdict.reason == NOT_ALLOWED_IN_PRIVATE_NAMESPACE and verdict.degrades
        assert "spec.gateway.overflow" in verdict.message
        assert "openmodel.dev/data=private" in verdict.message
    c = conditions(verdict)
    assert (c["Overflow"]["status"], c["Overflow"]["reason"]) == (
        "False",
        NOT_ALLOWED_IN_PRIVATE_NAMESPACE,
    )
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", OVERFLOW_NOT_ALLOWED)
    assert c["Degraded"]["message"] == verdict.message
    # kstatus (Flux, cli-utils) and Argo CD read Stalled / Degraded: Failed / Degraded.
    assert (c["Stalled"]["status"], c["Stalled"]["reason"]) == ("True", OVERFLOW_NOT_ALLOWED)
    assert c["Reconciling"]["status"] == "False"
    # Still serving: the refusal does not take the model down.
    assert c["Ready"]["status"] == "True"
    assert c["Progressing"]["reason"] == "RolloutComplete"


def test_unknown_target_is_reported_not_degraded() -> None:
    verdict = overflow_verdict(TARGET, private=False, external_names={"other"})
    assert verdict is not None and not verdict.allowed and not verdict.degrades
    assert verdict.reason == EXTERNAL_MODEL_NOT_FOUND and "'gpt-4o-mini'" in verdict.message
    c = conditions(verdict)
    assert c["Overflow"]["reason"] == EXTERNAL_MODEL_NOT_FOUND
    assert c["Degraded"]["status"] == "False" and c["Stalled"]["status"] == "False"


def test_a_spec_problem_stays_the_degraded_reason() -> None:
    from openmodel.problems import Problem

    verdict = overflow_verdict(TARGET, private=True, external_names=set())
    obs = Observation(
        generation=1, name="m", label_selector="s", endpoint=None, desired_replicas=1,
        deployment=deployment(), problem=Problem("UnknownAccelerator", "spec.gpu.type: x"),
        overflow=verdict,
    )  # fmt: skip
    c = {x["type"]: x for x in build_status(obs, None, "T").status["conditions"]}
    assert c["Degraded"]["reason"] == "UnknownAccelerator"
    assert c["Overflow"]["reason"] == NOT_ALLOWED_IN_PRIVATE_NAMESPACE


@pytest.mark.parametrize("private", [False, True])
def test_removing_overflow_makes_the_status_be_written_again(private: bool) -> None:
    verdict = overflow_verdict(TARGET, private=private, external_names={"gpt-4o-mini"})
    obs = Observation(
        generation=1, name="m", label_selector="s", endpoint=None, desired_replicas=1,
        deployment=deployment(), overflow=verdict,
    )  # fmt: skip
    with_overflow = build_status(obs, None, "T").status
    assert not needs_write(with_overflow, with_overflow)
    without = build_status(
        Observation(**{**obs.__dict__, "overflow": None}), with_overflow, "T"
    ).status
    assert "Overflow" not in {c["type"] for c in without["conditions"]}
    # The applied status (server-side apply, one field manager) then drops the condition.
    assert needs_write(without, with_overflow)
    assert not needs_write(without, without)
