"""Where the resolution of one model's config.json stands: pending, resolved or failed.

Pure values: the reconcile reads them (never waits for them) and the resolver loop
writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from openmodel.sizing.checkpoint import Checkpoint

# Condition reasons for a config.json that could not be read.
UNAUTHORIZED = "ModelConfigUnauthorized"
NOT_FOUND = "ModelConfigNotFound"
TIMEOUT = "ModelConfigTimeout"
UNAVAILABLE = "ModelConfigUnavailable"
UNSUPPORTED = "ModelConfigUnsupported"
SIZING_PENDING = "SizingPending"


@dataclass(frozen=True)
class ModelRef:
    """A repo pinned to a revision (a branch, tag or commit; `main` unless spec.args
    has --revision)."""

    repo: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"{self.repo}@{self.revision}"


@dataclass(frozen=True)
class Pending:
    ref: ModelRef


@dataclass(frozen=True)
class Resolved:
    ref: ModelRef
    sha: str  # the commit the files were read at
    checkpoint: Checkpoint


@dataclass(frozen=True)
class Failed:
    ref: ModelRef
    reason: str  # ModelConfigUnauthorized, ModelConfigNotFound, ModelConfigTimeout, ...
    message: str
    attempts: int = 1


ModelConfigState = Pending | Resolved | Failed
