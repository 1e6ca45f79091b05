"""Spec parsing gives the same field-naming errors the API server gives."""

from __future__ import annotations

from typing import Any

import pytest

from openmodel.api import Overflow, SpecError
from openmodel.engines import parse_model_deployment, parse_spec

GOOD: dict[str, Any] = {"model": "org/m", "gpu": {"type": "nvidia-l4", "count": 1}}


def test_defaults() -> None:
    spec = parse_spec(GOOD)
    assert spec.engine == "vllm"
    assert spec.quantization == "none"
    assert spec.replicas == 1
    assert spec.autoscaling is None
    assert spec.balancing_policy is None  # the platform's gateway.balancing.policy


def test_a_model_deployment_chooses_its_balancing_policy() -> None:
    for policy in ("prefix", "least-load"):
        spec = parse_spec({**GOOD, "gateway": {"balancing": {"policy": policy}}})
        assert spec.balancing_policy == policy
    assert parse_spec({**GOOD, "gateway": {"balancing": {}}}).balancing_policy is None
    assert parse_spec({**GOOD, "gateway": {}}).balancing_policy is None


def test_overflow_is_off_unless_asked_for() -> None:
    assert parse_spec(GOOD).overflow is None
    assert parse_spec({**GOOD, "gateway": {"balancing": {}}}).overflow is None
    overflow = parse_spec({**GOOD, "gateway": {"overflow": {"model": "frontier"}}}).overflow
    assert overflow == Overflow(model="frontier", when_starting=True, queue_depth_above=None)
    deep = {"model": "frontier", "whenStarting": False, "queueDepthAbove": 8}
    assert parse_spec({**GOOD, "gateway": {"overflow": deep}}).overflow == Overflow(
        model="frontier", when_starting=False, queue_depth_above=8
    )


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"engine": "ollama"}, "spec.engine"),
        ({"replicas": -1}, "spec.replicas"),
        ({"gpu": {"type": "nvidia-l4", "count": 0}}, "spec.gpu.count"),
        ({"model": ""}, "spec.model"),
        ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, "spec.autoscaling.minReplicas"),
        (
            {"autoscaling": {"maxReplicas": 2, "targetQueueDepth": 0}},
            "spec.autoscaling.targetQueueDepth",
        ),
        ({"quantization": "int3"}, "spec.quantization"),
        ({"gpu": None}, "spec.gpu"),
        ({"replicas": True}, "spec.replicas"),
        ({"env": [{"value": "x"}]}, "spec.env[0].name"),
        ({"gateway": {"balancing": {"policy": "random"}}}, "spec.gateway.balancing.policy"),
        ({"gateway": {"balancing": "prefix"}}, "spec.gateway.balancing"),
        ({"gateway": []}, "spec.gateway"),
        ({"gateway": {"overflow": {}}}, "spec.gateway.overflow.model"),
        ({"gateway": {"overflow": "frontier"}}, "spec.gateway.overflow"),
        (
            {"gateway": {"overflow": {"model": "x", "queueDepthAbove": 0}}},
            "spec.gateway.overflow.queueDepthAbove",
        ),
        ({"gateway": {"overflow": {"model": "x", "whenStarting": False}}}, "spec.gateway.overflow"),
    ],
)
def test_bad_values_name_their_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({**GOOD, **patch})
    assert err.value.field == field


def test_missing_model() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"gpu": GOOD["gpu"]})
    assert err.value.field == "spec.model"


def test_wrong_api_version_and_kind_name_their_field() -> None:
    with pytest.raises(SpecError) as err:
        parse_model_deployment({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})
    assert err.value.field == "apiVersion"
    with pytest.raises(SpecError) as err:
        parse_model_deployment(
            {"apiVersion": "openmodel.dev/v1alpha1", "kind": "Pod", "metadata": {"name": "x"}}
        )
    assert err.value.field == "kind"
