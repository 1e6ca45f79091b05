"""Where a ModelDeployment's engine pods may connect to, decided from its spec and the
platform config: nothing but the node when the weights are local, the weights sources
(and DNS) when the engine fetches them itself, plus the platform's allowlist entries the
spec names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from openmodel.api import ModelDeploymentSpec, SpecError
from openmodel.config.privacy import EgressRule, NetworkPolicyConfig
from openmodel.engines.base import model_source

EGRESS_NOT_ALLOWED = "EgressNotAllowed"


class Egress(Enum):
    """status.egress: the column `kubectl get md -o wide` shows."""

    CLOSED = "Closed"
    OPEN = "Open"
    UNRESTRICTED = "Unrestricted"


@dataclass(frozen=True)
class EgressPlan:
    state: Egress
    # The rules the engine pods' policy allows out, in order (DNS, weights, exceptions).
    rules: tuple[EgressRule, ...]
    # Why it is open, for the EgressOpen condition (empty when closed).
    reasons: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        if self.state is Egress.UNRESTRICTED:
            return "the platform renders no NetworkPolicy (privacy.networkPolicy.enabled false)"
        if self.state is Egress.CLOSED:
            return "engine pods reach nothing beyond their node"
        return "engine pods may reach: " + "; ".join(self.reasons)


def fetches_at_start(spec: ModelDeploymentSpec, prefetched: bool = False) -> bool:
    """Whether the engine fetches anything itself: weights by repo id or from an object
    store, or an adapter that is not on a claim. A model on a claim, or fetched for it
    by the download Job (`prefetched`), is local; adapters on claims too."""
    if model_source(spec.model).pvc_claim is None and not prefetched:
        return True
    return any(not a.source.startswith("pvc://") for a in spec.adapters)


def weights_rules(config: NetworkPolicyConfig) -> tuple[EgressRule, ...]:
    """What fetching weights needs: DNS, then the weights sources."""
    return (*config.dns_egress, *config.weights_egress)


def _names_address_ranges(rules: tuple[EgressRule, ...]) -> bool:
    return any("ipBlock" in peer for rule in rules for peer in rule.get("to") or [])


def egress_plan(
    spec: ModelDeploymentSpec,
    config: NetworkPolicyConfig,
    private: bool,
    prefetched: bool = False,
) -> EgressPlan:
    """The engine pods' egress; SpecError (reason EgressNotAllowed) for an exception the
    platform's allowlist does not hold, or one that names address ranges in a namespace
    whose data must stay in the cluster."""
    if not config.enabled:
        if spec.egress_exceptions:
            raise SpecError(
                "spec.network.egress",
                "the platform renders no NetworkPolicies (privacy.networkPolicy.enabled is "
                "false), so there is nothing to open: remove spec.network",
                reason=EGRESS_NOT_ALLOWED,
            )
        return EgressPlan(Egress.UNRESTRICTED, ())
    rules: list[EgressRule] = []
    reasons: list[str] = []
    if fetches_at_start(spec, prefetched):
        rules += weights_rules(config)
        reasons.append("the weights sources (the engine fetches the model or an adapter)")
    for name in spec.egress_exceptions:
        entry = config.egress_allowlist.get(name)
        if entry is None:
            known = ", ".join(sorted(config.egress_allowlist)) or "none"
            raise SpecError(
                "spec.network.egress",
                f"{name!r} is not in the platform's egress allowlist (known: {known}); a "
                "platform team adds entries in privacy.networkPolicy.egressAllowlist",
                reason=EGRESS_NOT_ALLOWED,
            )
        if private and _names_address_ranges(entry):
            raise SpecError(
                "spec.network.egress",
                f"{name!r} opens address ranges (ipBlock), which may lie outside the "
                "cluster, and this namespace is labelled openmodel.dev/data=private",
                reason=EGRESS_NOT_ALLOWED,
            )
        rules += entry
        reasons.append(f"allowlist entry {name!r}")
    state = Egress.OPEN if rules else Egress.CLOSED
    return EgressPlan(state, tuple(rules), tuple(reasons))


def rule_dicts(rules: tuple[EgressRule, ...]) -> list[dict[str, Any]]:
    """Plain copies, so a rendered object shares nothing with the config."""
    return [_copy(rule) for rule in rules]


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value
