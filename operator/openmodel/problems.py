"""`Problem`: why a ModelDeployment cannot be served, as the Degraded condition says it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """Why the spec cannot be served: a CamelCase reason and a message a person can act on."""

    reason: str
    message: str


# A replica across nodes whose LeaderWorkerSet would take the names of another
# ModelDeployment's objects (`<name>-<i>`): the reconciler reports it, and neither it nor
# the autoscaler creates or scales that group.
GROUP_NAME_TAKEN = "GroupNameTaken"


def degraded_by(body: Mapping[str, Any] | None, reason: str) -> bool:
    """Whether a ModelDeployment's stored status says Degraded=True for `reason`."""
    status = (body or {}).get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    return any(
        isinstance(c, Mapping)
        and c.get("type") == "Degraded"
        and c.get("status") == "True"
        and c.get("reason") == reason
        for c in (conditions if isinstance(conditions, list) else [])
    )
