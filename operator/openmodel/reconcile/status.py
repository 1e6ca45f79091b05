"""Status rebuilt from the world: a pure function of what was observed.

Conditions (metav1.Condition shape) owned by the reconciler:
- `Ready`: the engine pods serve the current spec (or it sits at zero replicas, as asked).
- `Progressing`: a rollout or scale is under way.
- `Degraded`: the spec cannot be served as written, or its engine keeps failing; the
  reason says why (UnknownAccelerator, Unschedulable, InsufficientGPUMemory,
  EngineCrashLoop, EngineStartFailed, ...).
- `EgressOpen`: whether the engine pods may connect beyond their node, and to what
  (`status.egress` is its one-word form). Informational: neither healthy nor not.
- `Overflow` (only when spec.gateway.overflow is set): whether the gateway may send
  requests to the named external model (`reconcile/overflow.py`); refused in a private
  namespace, which also makes the ModelDeployment Degraded (OverflowNotAllowed).
- `Stalled` and `Reconciling`: the two conditions kstatus (Flux, cli-utils, kpt) reads,
  derived from the three above and the adapter loop's `AdaptersReady` (docs/gitops.md):
  Stalled whenever Degraded (or an adapter was refused), else Reconciling while not Ready
  (or adapters still loading). A scaled-to-zero model is Ready: idle as asked, not waiting.
`status.reason` repeats the one reason a person scanning `kubectl get md` should see.
The autoscaler owns `status.autoscaler` and its own condition type, written under a
different field manager, so the two never overwrite each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openmodel.api import status_conditions
from openmodel.privacy.egress import Egress, EgressPlan
from openmodel.problems import Problem
from openmodel.reconcile.overflow import OVERFLOW, OVERFLOW_NOT_ALLOWED, OverflowVerdict
from openmodel.reconcile.pod_failures import engine_failure, unschedulable_message
from openmodel.reconcile.workload import GroupCounts
from openmodel.weights.state import DOWNLOADING_WEIGHTS

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
EGRESS_OPEN = "EgressOpen"
STALLED = "Stalled"
RECONCILING = "Reconciling"
RECONCILER_CONDITIONS = (
    READY, PROGRESSING, DEGRADED, EGRESS_OPEN, OVERFLOW, STALLED, RECONCILING
)  # fmt: skip
# Written by the adapter loop (openmodel.adapters.status), read here for kstatus's view.
ADAPTERS_READY = "AdaptersReady"
_EGRESS_REASONS = {
    Egress.OPEN: "EgressAllowed",
    Egress.CLOSED: "NodeOnly",
    Egress.UNRESTRICTED: "NoNetworkPolicy",
}
# Problem reasons that mean "not decided yet" rather than "cannot be served": sizing
# waits for config.json, the engine for its weights (weights/state.py).
PENDING = frozenset({"SizingPending", DOWNLOADING_WEIGHTS})


@dataclass(frozen=True)
class Observation:
    generation: int
    name: str
    label_selector: str
    endpoint: str | None
    desired_replicas: int | None
    deployment: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]] = ()
    problem: Problem | None = None
    gpu: str | None = None
    sizing: Mapping[str, Any] | None = None
    # None when the spec was not applied this pass: the egress in place stays reported.
    egress: EgressPlan | None = None
    cache: Mapping[str, Any] | None = None  # status.cache (weights/state.py)
    # A LeaderWorkerSet's groups, counted from its pods (reconcile/workload.py); None:
    # the workload is a Deployment, whose own status counts its replicas.
    groups: GroupCounts | None = None
    # status.task: the task the engine serves (reconcile/plan.decided_task).
    task: str | None = None
    # The verdict on spec.gateway.overflow (None: unset, no Overflow condition).
    overflow: OverflowVerdict | None = None


@dataclass(frozen=True)
class Transition:
    condition: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class StatusUpdate:
    status: dict[str, Any]
    transitions: list[Transition] = field(default_factory=list)


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _deployment_counts(deployment: Mapping[str, Any] | None) -> tuple[int, int, int, int, bool]:
    """(spec replicas, replicas, ready, updated, deployment controller caught up)."""
    if deployment is None:
        return 0, 0, 0, 0, False
    spec = deployment.get("spec") or {}
    st = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    caught_up = st.get("observedGeneration", 0) >= meta.get("generation", 0)
    return (
        int(spec.get("replicas", 1)),
        int(st.get("replicas", 0)),
        int(st.get("readyReplicas", 0)),
        int(st.get("updatedReplicas", 0)),
        caught_up,
    )


def _counts(obs: Observation) -> tuple[int, int, int, int, bool]:
    """(spec replicas, replicas, ready, updated, caught up) of the Deployment, or of the
    LeaderWorkerSet's groups (ready: leader ready and every worker running)."""
    if obs.groups is None:
        return _deployment_counts(obs.deployment)
    g = obs.groups
    return g.want, g.present, g.ready, g.updated, True


def desired_conditions(obs: Observation) -> list[dict[str, Any]]:
    g = obs.generation
    want, _, ready, updated, caught_up = _counts(obs)
    if obs.desired_replicas is not None:
        want = obs.desired_replicas
    # Sizing waits for the model's config.json: not a fault, and nothing is applied yet.
    pending = obs.problem if obs.problem is not None and obs.problem.reason in PENDING else None
    # A spec problem first, then pods that cannot be placed, then engines that fail.
    problem = None if pending is not None else obs.problem
    if problem is None:
        stuck = unschedulable_message(obs.pods)
        problem = Problem("Unschedulable", stuck) if stuck else engine_failure(obs.pods)

    rolled_out = obs.deployment is not None and caught_up and updated >= want and ready >= want
    if obs.deployment is None and pending is not None:
        ready_c = _condition(READY, False, pending.reason, pending.message, g)
    elif obs.deployment is None:
        ready_c = _condition(READY, False, "NotDeployed", "no engine Deployment exists yet", g)
    elif rolled_out and want == 0:
        # Ready: zero is what was asked for (replicas: 0, or the autoscaler at minReplicas
        # 0), so waiting tools (kubectl wait, kstatus, Argo CD) see it settled. Nothing
        # answers right now: a request through the gateway is held and wakes the model
        # when autoscaling allows zero (see docs/gateway.md).
        ready_c = _condition(READY, True, "ScaledToZero", "scaled to zero replicas", g)
    elif rolled_out:
        ready_c = _condition(READY, True, "Ready", f"{ready}/{want} replicas ready", g)
    else:
        ready_c = _condition(READY, False, "WaitingForPods", f"{ready}/{want} replicas ready", g)

    if pending is not None:
        progressing_c = _condition(PROGRESSING, True, pending.reason, pending.message, g)
    elif obs.problem is not None:
        progressing_c = _condition(
            PROGRESSING, False, "SpecRejected", "the latest spec was not applied; see Degraded", g
        )
    elif rolled_out:
        progressing_c = _condition(
            PROGRESSING, False, "RolloutComplete", f"{want} replicas up to date", g
        )
    else:
        progressing_c = _condition(
            PROGRESSING, True, "RollingOut", f"{updated}/{want} updated, {ready}/{want} ready", g
        )

    if problem is not None:
        degraded_c = _condition(DEGRADED, True, problem.reason, problem.message, g)
    elif obs.overflow is not None and obs.overflow.degrades:
        # Served all the same, without overflow: the gateway refuses it there too.
        degraded_c = _condition(DEGRADED, True, OVERFLOW_NOT_ALLOWED, obs.overflow.message, g)
    else:
        degraded_c = _condition(DEGRADED, False, "AsExpected", "the spec can be served", g)
    conditions = [ready_c, progressing_c, degraded_c]
    if obs.egress is not None:
        state = obs.egress.state
        conditions.append(
            _condition(
                EGRESS_OPEN,
                state is not Egress.CLOSED,
                _EGRESS_REASONS[state],
                obs.egress.message,
                g,
            )
        )
    if obs.overflow is not None:
        verdict = obs.overflow
        conditions.append(_condition(OVERFLOW, verdict.allowed, verdict.reason, verdict.message, g))
    return conditions


def kstatus_conditions(
    conditions: Sequence[Mapping[str, Any]], adapters: Mapping[str, Any] | None, generation: int
) -> list[dict[str, Any]]:
    """`Stalled` and `Reconciling` from Ready/Progressing/Degraded and `AdaptersReady` (as
    last written by the adapter loop, or None), never both True, so kstatus says Failed,
    InProgress or Current (through Ready True) as docs/gitops.md tells."""
    by_type = {c["type"]: c for c in conditions}
    degraded, ready = by_type[DEGRADED], by_type[READY]
    adapters = adapters or {}
    adapters_false = adapters.get("status") == "False"
    adapters_message = str(adapters.get("message") or "")
    if degraded["status"] == "True":
        stalled = (True, str(degraded["reason"]), str(degraded["message"]))
    elif adapters_false and adapters.get("reason") == "AdapterFailed":
        stalled = (True, "AdapterFailed", adapters_message)
    else:
        stalled = (False, "AsExpected", "nothing keeps the spec from being served")
    if stalled[0]:
        reconciling = (False, "Stalled", "no progress without a change: see Stalled")
    elif ready["status"] != "True":
        progressing = by_type[PROGRESSING]
        source = progressing if progressing["status"] == "True" else ready
        reconciling = (True, str(source["reason"]), str(ready["message"]))
    elif adapters_false and ready["reason"] != "ScaledToZero":
        # Adapters still loading on a serving model (at zero there is no pod to load on).
        reconciling = (True, str(adapters.get("reason")), adapters_message)
    else:
        reconciling = (False, str(ready["reason"]), str(ready["message"]))
    return [
        _condition(STALLED, *stalled, generation),
        _condition(RECONCILING, *reconciling, generation),
    ]


def headline_reason(conditions: Sequence[Mapping[str, Any]]) -> str:
    """The reason `kubectl get md` shows: why it cannot be served when Degraded (a
    refused edit leaves Ready True or NotDeployed, which would hide the refusal), else
    how far it is from serving."""
    by_type = {c["type"]: c for c in conditions}
    degraded = by_type[DEGRADED]
    if degraded["status"] == "True":
        return str(degraded["reason"])
    return str(by_type[READY]["reason"])


def build_status(obs: Observation, observed_status: Any, now: str) -> StatusUpdate:
    """The status to write, keeping lastTransitionTime of conditions that did not change.
    `observed_status` is whatever the object holds (see `status_conditions`)."""
    previous = status_conditions(observed_status)
    conditions = []
    transitions = []
    wanted = desired_conditions(obs)
    wanted += kstatus_conditions(wanted, previous.get(ADAPTERS_READY), obs.generation)
    kept_egress = previous.get(EGRESS_OPEN)
    if obs.egress is None and kept_egress is not None:
        wanted.append(dict(kept_egress))  # the policy in place did not change
    for cond in wanted:
        before = previous.get(cond["type"])
        kept = before.get("lastTransitionTime") if before is not None else None
        if before is not None and before.get("status") == cond["status"] and kept:
            # Only a string is kept: anything else would make the write itself refused.
            cond["lastTransitionTime"] = kept if isinstance(kept, str) else now
        else:
            cond["lastTransitionTime"] = now
        if (
            before is None
            or before.get("status") != cond["status"]
            or (before.get("reason") != cond["reason"])
        ):
            transitions.append(
                Transition(cond["type"], cond["status"], cond["reason"], cond["message"])
            )
        conditions.append(cond)
    _, replicas, ready, _, _ = _counts(obs)
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "replicas": replicas,
        "readyReplicas": ready,
        "labelSelector": obs.label_selector,
        "reason": headline_reason(conditions),
        "conditions": conditions,
    }
    if obs.endpoint is not None:
        status["endpoint"] = obs.endpoint
    if obs.gpu is not None:
        status["gpu"] = obs.gpu
    if obs.sizing is not None:
        status["sizing"] = dict(obs.sizing)
    if obs.egress is not None:
        status["egress"] = obs.egress.state.value
    elif isinstance(observed_status, Mapping) and isinstance(observed_status.get("egress"), str):
        status["egress"] = observed_status["egress"]
    if obs.cache is not None:
        status["cache"] = dict(obs.cache)
    if obs.task is not None:
        status["task"] = obs.task
    return StatusUpdate(status=status, transitions=transitions)


def needs_write(desired: Mapping[str, Any], observed: Any) -> bool:
    """True when the observed status lacks something we would write.

    Conditions are compared by type, so conditions owned by the autoscaler do not
    make the reconciler rewrite its own. A malformed observed status (not an object,
    conditions not a list) lacks everything.
    """
    if not isinstance(observed, Mapping):
        return True
    for key, value in desired.items():
        if key == "conditions":
            continue
        if observed.get(key) != value:
            return True
    have = status_conditions(observed)
    if OVERFLOW in have and not any(c["type"] == OVERFLOW for c in desired.get("conditions", [])):
        return True  # spec.gateway.overflow was removed: the applied status drops it
    for cond in desired.get("conditions", []):
        before = have.get(cond["type"])
        if before is None:
            return True
        for k in ("status", "reason", "message", "observedGeneration", "lastTransitionTime"):
            if before.get(k) != cond.get(k):
                return True
    # Fields we used to write and no longer do (e.g. sizing for an unknown model).
    stale = ("endpoint", "gpu", "sizing", "egress", "cache")
    return any(k in observed for k in stale if k not in desired)
