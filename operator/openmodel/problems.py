"""`Problem`: why a ModelDeployment cannot be served, as the Degraded condition says it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """Why the spec cannot be served: a CamelCase reason and a message a person can act on."""

    reason: str
    message: str
