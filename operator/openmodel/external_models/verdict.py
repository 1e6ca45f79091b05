"""The operator's verdict on an ExternalModel, and the status that says it. Pure.

`Ready` True, or False with the first reason that applies: `InvalidSpec` (what the
API server's schema could not catch), `NameTaken` (an older ModelDeployment or
ExternalModel serves the same name: the gateway routes the name to the oldest, as for
ModelDeployments), `KeyNotGranted` (a SubjectAccessReview says the gateway's
ServiceAccount may not `get` the key Secret), `EgressNotAllowed` (spec.egress.cidrs names
a range that is not public, which only an ExternalModel in the gateway's own namespace,
the platform's, may). The gateway checks for itself and does not
route by this status; it tells the team what to fix. No message names more of the key
than its Secret's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openmodel.api import SecretKeyRef, SpecError, served_name, status_conditions
from openmodel.external_model import KIND, ExternalModel, inside_ranges, parse_external_model

READY = "Ready"
INVALID_SPEC = "InvalidSpec"
NAME_TAKEN = "NameTaken"
KEY_NOT_GRANTED = "KeyNotGranted"
EGRESS_NOT_ALLOWED = "EgressNotAllowed"
MODEL_DEPLOYMENT = "ModelDeployment"


@dataclass(frozen=True, order=True)
class Claim:
    """An object serving a name; ordered oldest first (creation time, then namespace/name)."""

    created: str
    namespace: str
    name: str
    kind: str

    @property
    def text(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def _claim(kind: str, body: Mapping[str, Any]) -> Claim:
    meta = body.get("metadata") or {}
    return Claim(
        str(meta.get("creationTimestamp") or ""),
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
        kind,
    )


def model_deployment_served_name(body: Mapping[str, Any]) -> str | None:
    """The name a ModelDeployment serves, read from its spec as the gateway reads it;
    None when the spec names no model."""
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        return None
    model, stated = spec.get("model"), spec.get("servedModelName")
    if not isinstance(model, str) or not model:
        return None
    return served_name(model, stated if isinstance(stated, str) and stated else None)


def model_deployment_names(body: Mapping[str, Any]) -> set[str]:
    """Its served name and its adapters' names (the gateway routes each)."""
    names: set[str] = set()
    served = model_deployment_served_name(body)
    if served is not None:
        names.add(served)
    spec = body.get("spec")
    adapters = spec.get("adapters") if isinstance(spec, Mapping) else None
    for adapter in adapters if isinstance(adapters, list) else []:
        if isinstance(adapter, Mapping) and isinstance(adapter.get("name"), str):
            names.add(adapter["name"])
    return names


def name_claims(
    model_deployments: Iterable[Mapping[str, Any]],
    external_models: Iterable[tuple[Mapping[str, Any], ExternalModel]],
) -> dict[str, list[Claim]]:
    """Every served name -> the objects serving it, oldest first. `external_models`:
    (object, its parse) of each ExternalModel that parses."""
    claims: dict[str, list[Claim]] = {}
    for body in model_deployments:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for name in model_deployment_names(body):
            claims.setdefault(name, []).append(_claim(MODEL_DEPLOYMENT, body))
    for body, model in external_models:
        claims.setdefault(model.served_name, []).append(_claim(KIND, body))
    for holders in claims.values():
        holders.sort()
    return claims


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str
    message: str


def judge(
    model: ExternalModel,
    claims: Mapping[str, Sequence[Claim]],
    gateway_may_read: Callable[[ExternalModel, SecretKeyRef], bool],
    gateway_account: tuple[str, str],
) -> Verdict:
    """The verdict on a parsed ExternalModel. `gateway_may_read` is asked only when the
    name is the model's (a SubjectAccessReview: the one request a verdict makes)."""
    holders = claims.get(model.served_name) or []
    first = holders[0] if holders else None
    if first is not None and (first.kind, first.namespace, first.name) != (
        KIND,
        model.namespace,
        model.name,
    ):
        return Verdict(
            False,
            NAME_TAKEN,
            f"{first.text} already serves the name {model.served_name!r} and is older: the "
            "gateway routes the name there (rename spec.servedModelName, or that object)",
        )
    sa_namespace, sa_name = gateway_account
    inside = inside_ranges(model)
    if inside and model.namespace != sa_namespace:
        return Verdict(
            False,
            EGRESS_NOT_ALLOWED,
            f"spec.egress.cidrs names {', '.join(inside)}, not public addresses: the "
            "gateway's egress opens only public ranges for an ExternalModel outside its own "
            f"namespace {sa_namespace} (the platform declares internal upstreams there)",
        )
    secret = model.api_key_secret
    if secret is None:
        return Verdict(True, READY, f"served as {model.served_name!r}; no key is sent upstream")
    if not gateway_may_read(model, secret):
        return Verdict(
            False,
            KEY_NOT_GRANTED,
            f"the gateway's ServiceAccount {sa_namespace}/{sa_name} may not get Secret "
            f"{secret.name!r} in namespace {model.namespace} (spec.apiKeySecretRef): apply a "
            "Role granting get on that Secret and a RoleBinding to the gateway "
            "(docs/api.md, ExternalModel)",
        )
    return Verdict(True, READY, f"served as {model.served_name!r}")


def invalid(error: SpecError) -> Verdict:
    return Verdict(False, INVALID_SPEC, f"{error.field}: {error.message}")


def parse(body: Mapping[str, Any]) -> ExternalModel | SpecError:
    try:
        return parse_external_model(body)
    except SpecError as e:
        return e


def desired_status(
    verdict: Verdict, generation: int, observed_status: Any, now: str
) -> dict[str, Any]:
    """status: observedGeneration, reason and the Ready condition (lastTransitionTime
    kept while its status holds)."""
    before = status_conditions(observed_status).get(READY)
    status = "True" if verdict.ready else "False"
    kept = before.get("lastTransitionTime") if before is not None else None
    since = (
        kept
        if before is not None and before.get("status") == status and isinstance(kept, str) and kept
        else now
    )
    return {
        "observedGeneration": generation,
        "reason": verdict.reason,
        "conditions": [
            {
                "type": READY,
                "status": status,
                "reason": verdict.reason,
                "message": verdict.message,
                "observedGeneration": generation,
                "lastTransitionTime": since,
            }
        ],
    }


def status_changed(desired: Mapping[str, Any], observed: Any) -> bool:
    if not isinstance(observed, Mapping):
        return True
    if any(observed.get(k) != desired[k] for k in ("observedGeneration", "reason")):
        return True
    mine = desired["conditions"][0]
    have = status_conditions(observed).get(READY)
    return have is None or any(
        have.get(k) != mine[k]
        for k in ("status", "reason", "message", "observedGeneration", "lastTransitionTime")
    )


def transition(verdict: Verdict, observed_status: Any) -> bool:
    """Whether the verdict differs from the Ready condition the object holds (an Event)."""
    before = status_conditions(observed_status).get(READY)
    status = "True" if verdict.ready else "False"
    return (
        before is None or before.get("status") != status or before.get("reason") != verdict.reason
    )
