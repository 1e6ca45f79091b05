"""Namespace patterns follow kopf's rules, so every part of the operator agrees."""

from __future__ import annotations

import pytest

from openmodel.namespaces import matches, patterns_from_env


@pytest.mark.parametrize(
    ("raw", "namespace", "served"),
    [
        ("", "anything", True),
        ("team-a,team-b", "team-b", True),
        ("team-a,team-b", "team-c", False),
        ("team-*", "team-c", True),
        ("!e2e-rbac-*", "e2e-rbac-1", False),
        ("!e2e-rbac-*", "default", True),
        ("team-*,!team-secret", "team-secret", False),
        ("team-*,!team-secret", "team-a", True),
        ("team-*,!team-secret", "other", False),
        # kopf's documented example: rightmost match wins, first glob decisive.
        ("myapp-*,!*-pr-*,*-pr-123", "myapp-live", True),
        ("myapp-*,!*-pr-*,*-pr-123", "myapp-pr-456", False),
        ("myapp-*,!*-pr-*,*-pr-123", "myapp-pr-123", True),
        ("myapp-*,!*-pr-*,*-pr-123", "otherapp-pr-123", False),
    ],
)
def test_patterns(raw: str, namespace: str, served: bool) -> None:
    assert matches(namespace, patterns_from_env({"OPENMODEL_NAMESPACES": raw})) is served


def test_plain_lists_are_separate_patterns_and_negations_one() -> None:
    assert patterns_from_env({"OPENMODEL_NAMESPACES": " a, b "}) == ["a", "b"]
    assert patterns_from_env({"OPENMODEL_NAMESPACES": "a,!b"}) == ["a,!b"]
