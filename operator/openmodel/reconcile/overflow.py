"""The `Overflow` condition of a ModelDeployment whose spec.gateway.overflow names an
external model: whether the gateway may send its requests out of the cluster. Pure.

The gateway overflows a request only while this condition is True for the current
generation (docs/api.md, "Overflow"), so the operator's verdict opens the door and
its absence keeps it shut. A namespace labelled `openmodel.dev/data: private` refuses
overflow outright, and the ModelDeployment is Degraded until the setting or the label
goes; a name no ExternalModel serves is reported, not Degraded: the model itself
still serves.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from openmodel.api import DATA_LABEL, DATA_PRIVATE, Overflow

OVERFLOW = "Overflow"
ALLOWED = "Allowed"
NOT_ALLOWED_IN_PRIVATE_NAMESPACE = "NotAllowedInPrivateNamespace"
EXTERNAL_MODEL_NOT_FOUND = "ExternalModelNotFound"
# The Degraded reason that goes with NotAllowedInPrivateNamespace.
OVERFLOW_NOT_ALLOWED = "OverflowNotAllowed"


@dataclass(frozen=True)
class OverflowVerdict:
    allowed: bool
    reason: str
    message: str

    @property
    def degrades(self) -> bool:
        """The spec asks for something the namespace refuses (Degraded OverflowNotAllowed)."""
        return self.reason == NOT_ALLOWED_IN_PRIVATE_NAMESPACE


def overflow_verdict(
    overflow: Overflow | None, private: bool, external_names: Collection[str]
) -> OverflowVerdict | None:
    """The verdict on spec.gateway.overflow; None when it is unset (no condition).
    `external_names`: the served names of the ExternalModels the operator sees."""
    if overflow is None:
        return None
    target = overflow.model
    if private:
        return OverflowVerdict(
            False,
            NOT_ALLOWED_IN_PRIVATE_NAMESPACE,
            f"spec.gateway.overflow would send requests to the external model {target!r}, "
            f"outside the cluster, and this namespace is labelled {DATA_LABEL}={DATA_PRIVATE}: "
            "the gateway never overflows here (remove spec.gateway.overflow, or the label if "
            "the data may leave)",
        )
    if target not in external_names:
        return OverflowVerdict(
            False,
            EXTERNAL_MODEL_NOT_FOUND,
            f"no ExternalModel serves the name {target!r} (spec.gateway.overflow.model): "
            "requests wait for this model as without overflow until one does",
        )
    when = []
    if overflow.when_starting:
        when.append("while no replica is ready")
    if overflow.queue_depth_above is not None:
        when.append(f"while its queue is deeper than {overflow.queue_depth_above}")
    return OverflowVerdict(
        True,
        ALLOWED,
        f"requests may go to the external model {target!r} " + (" or ".join(when) or "never"),
    )
