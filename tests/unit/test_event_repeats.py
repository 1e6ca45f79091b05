"""A repeated Event is counted on the first one (kube/events.py), not posted again."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fake_api_server import namespace_not_found_error, namespace_terminating_error
from kubernetes.client.exceptions import ApiException

from openmodel.kube import calls as kube
from openmodel.kube.events import REPEAT_WINDOW_SECONDS, EventMemory, post_event

MD = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "m", "namespace": "team-a", "uid": "u-1"},
}


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def create(_api: Any, obj: Any) -> Any:
        seen.append(("POST", obj))
        return {**obj, "metadata": {**obj["metadata"], "name": f"m.{len(seen)}"}}

    def call(_api: Any, method: str, path: str, **kw: Any) -> Any:
        seen.append((method, (path, kw.get("body"))))
        return {}

    monkeypatch.setattr(kube, "create", create)
    monkeypatch.setattr(kube, "call", call)
    return seen


def test_a_repeat_within_the_window_patches_the_count(requests: list[tuple[str, Any]]) -> None:
    now = [0.0]
    memory = EventMemory(clock=lambda: now[0])
    for _ in range(3):
        post_event(None, MD, "Unschedulable", "no node has 8 free H100s", "Warning", memory)  # type: ignore[arg-type]
    assert [m for m, _ in requests] == ["POST", "PATCH", "PATCH"]
    path, body = requests[-1][1]
    assert path.endswith("/namespaces/team-a/events/m.1") and body["count"] == 3
    post_event(None, MD, "Unschedulable", "another message", "Warning", memory)  # type: ignore[arg-type]
    assert requests[-1][0] == "POST"  # a different message is a different Event
    now[0] += REPEAT_WINDOW_SECONDS + 1
    post_event(None, MD, "Unschedulable", "no node has 8 free H100s", "Warning", memory)  # type: ignore[arg-type]
    assert requests[-1][0] == "POST"  # outside the window: a new Event


def test_memory_is_bounded() -> None:
    memory = EventMemory()
    for i in range(5000):
        memory.remember(("ns", f"u{i}", "Normal", "Ready", "m"), f"e{i}")
    assert len(memory) == 4096
    assert memory.repeat_of(("ns", "u0", "Normal", "Ready", "m")) is None
    assert memory.repeat_of(("ns", "u4999", "Normal", "Ready", "m")) is not None


def test_an_event_in_a_namespace_being_deleted_is_dropped_without_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def create(_api: Any, obj: Any) -> Any:
        raise namespace_terminating_error("events", "", obj["metadata"]["namespace"])

    monkeypatch.setattr(kube, "create", create)
    with caplog.at_level(logging.DEBUG):
        post_event(None, MD, "Ready", "serving", memory=EventMemory())  # type: ignore[arg-type]
    assert caplog.records == []


def test_an_event_in_a_namespace_already_gone_is_dropped_without_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def create(_api: Any, obj: Any) -> Any:
        raise namespace_not_found_error(obj["metadata"]["namespace"])

    monkeypatch.setattr(kube, "create", create)
    with caplog.at_level(logging.DEBUG):
        post_event(None, MD, "Ready", "serving", memory=EventMemory())  # type: ignore[arg-type]
    assert caplog.records == []


def test_an_event_that_cannot_be_posted_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def create(_api: Any, obj: Any) -> Any:
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(kube, "create", create)
    post_event(None, MD, "Ready", "serving", memory=EventMemory())  # type: ignore[arg-type]
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "could not post event Ready on team-a/m: Forbidden" in caplog.text
