"""The composition root (operator_root.py) behind main.py's handlers: what each event
means for the queue, and a deleted ModelDeployment forgotten everywhere in one call."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from operator_parts import new_operator
from prometheus_client import REGISTRY

from openmodel import main, telemetry
from openmodel.config import PlatformConfig
from openmodel.config.model_resolver import ModelResolverConfig
from openmodel.controller.queue import Asker, Line, Taken
from openmodel.map_sizes import entries
from openmodel.model_resolver.state import Failed, ModelRef, Pending
from openmodel.model_resolver.store import ModelConfigStore
from openmodel.operator_root import Operator

KEY = ("team-forget", "m")
MD: dict[str, Any] = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"namespace": KEY[0], "name": KEY[1], "uid": "u1", "resourceVersion": "7"},
    "spec": {"model": "acme/m"},
}


def child(kind: str, version: str, event_owner: str = "m") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {
            "namespace": KEY[0],
            "name": "m",
            "resourceVersion": version,
            "labels": {"openmodel.dev/model-deployment": event_owner},
        },
    }


def handle(operator: Operator, event_type: str, body: dict[str, Any]) -> None:
    """Through main.py's handler, as kopf calls it."""
    memo = kopf.Memo(operator=operator)
    asyncio.run(main.model_deployment_event(type=event_type, body=kopf.Body(body), memo=memo))


def test_events_add_to_the_queue_and_our_own_writes_echo_is_skipped() -> None:
    operator = new_operator()
    operator.observe("ModelDeployment", MD)
    operator.reconciler.own_writes.record("Service", child("Service", "20"))
    operator.model_deployment_event("MODIFIED", MD)
    operator.child_event("Service", "MODIFIED", child("Service", "20"))  # our write's echo
    operator.child_event("Pod", "MODIFIED", child("Pod", "21", event_owner="other"))

    async def taken() -> list[Taken]:
        return [await operator.queue.take() for _ in range(len(operator.queue))]

    assert asyncio.run(taken()) == [
        (KEY, Line.SPEC, Asker.SPEC),
        ((KEY[0], "other"), Line.CHILD, Asker.CHILD),
    ]


def test_a_deleted_model_deployment_is_forgotten_everywhere_by_one_call() -> None:
    store = ModelConfigStore(ModelResolverConfig())
    operator = new_operator(model_configs=store)
    assert operator.memory.names() == [
        "cache.leaderworkersets",
        "model_configs.waiters",
        "queue",
        "reconciler.own_writes",
        "telemetry",
    ]
    # Something of KEY in every part that keeps memory per ModelDeployment.
    operator.observe("ModelDeployment", MD)
    operator.reconciler.own_writes.record("ModelDeployment", MD)
    ref = ModelRef("acme/m")
    assert isinstance(store.lookup(ref, KEY), Pending)
    telemetry.observe_queue(*KEY, 2.0, 1)
    telemetry.record_scaling(*KEY, "up")
    # A LeaderWorkerSet the reconciler wrote (the kind is not watched).
    group = {"kind": "LeaderWorkerSet", "metadata": {"namespace": KEY[0], "name": KEY[1],
             "uid": "g-1", "resourceVersion": "5"}}  # fmt: skip
    operator.cache.wrote("LeaderWorkerSet", group)
    assert operator.cache.get("LeaderWorkerSet", *KEY) is not None

    async def fail_once() -> None:
        operator.queue.add(KEY)
        operator.queue.failed((await operator.queue.take()).key)  # a retry is due later
        operator.queue.add(KEY, Line.SWEEP)  # and a pass waits

    asyncio.run(fail_once())
    assert entries(operator.queue) == 3  # waiting, its retry, its back-off

    handle(operator, "DELETED", MD)

    assert operator.cache.get("LeaderWorkerSet", *KEY) is None
    assert entries(operator.queue) == 0
    assert entries(operator.reconciler.own_writes) == 0
    assert store.record(ref, Failed(ref, "ModelConfigTimeout", "slow"), now=0) == set()
    labels = {"namespace": KEY[0], "name": KEY[1]}
    assert REGISTRY.get_sample_value("openmodel_desired_replicas", labels) is None
    assert REGISTRY.get_sample_value("openmodel_queue_depth", labels) is None
    assert operator.cache.get("ModelDeployment", *KEY) is None


def test_the_resolver_is_built_only_with_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    store = ModelConfigStore(ModelResolverConfig())
    assert new_operator(model_configs=store).resolver is None
    config = PlatformConfig(model_resolver=ModelResolverConfig(endpoint="http://hub.invalid"))
    resolver = new_operator(config, ModelConfigStore(config.model_resolver)).resolver
    assert resolver is not None
