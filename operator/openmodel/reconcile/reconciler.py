"""The level-based reconcile: observe, plan, apply what differs, rebuild status.

One function serves create, update, resume, child drift and periodic resync. It never
writes a ModelDeployment's spec, and it writes nothing when the world already matches.

It reads from the watch-fed cache (`kube/cache.py`): a pass makes no request unless it
writes, or the cache cannot answer (a child it has never seen, which may be someone
else's object of the same name: that one is never taken over, `ChildNotOwned`). An
update of an existing child carries the cached resourceVersion, so a pass acting on a
stale copy is refused (409) instead of reverting a newer change; it reads that child
again and runs once more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.api import (
    API_VERSION,
    DATA_LABEL,
    DATA_PRIVATE,
    KIND,
    LWS_API_VERSION,
    LWS_KIND,
    TASK_GENERATE,
    TASKS,
    ModelDeploymentSpec,
    SpecError,
)
from openmodel.clock import utc_now
from openmodel.config import PlatformConfig
from openmodel.engines import parse_model_deployment
from openmodel.external_model import KIND as EXTERNAL_MODEL_KIND
from openmodel.external_model import parse_external_model
from openmodel.inference_extension.gate import InferenceExtensionGate
from openmodel.kube import calls as kube
from openmodel.kube.cache import WATCHED, ObjectCache, Reader, owner_text, owner_uids
from openmodel.kube.events import post_event
from openmodel.kube.leadership import NotLeader
from openmodel.model_resolver.state import ModelConfigState
from openmodel.model_resolver.store import ModelConfigStore, model_ref_for
from openmodel.privacy.egress import EgressPlan
from openmodel.problems import GROUP_NAME_TAKEN, Problem
from openmodel.reconcile.drift import object_holds
from openmodel.reconcile.overflow import (
    NOT_ALLOWED_IN_PRIVATE_NAMESPACE,
    OVERFLOW,
    OverflowVerdict,
    overflow_verdict,
)
from openmodel.reconcile.plan import decided_task, make_plan
from openmodel.reconcile.pod_failures import engine_failure, unschedulable_message
from openmodel.reconcile.render import endpoint, label_selector
from openmodel.reconcile.status import DEGRADED, READY, Observation, build_status, needs_write
from openmodel.reconcile.workload import (
    API_VERSIONS,
    DEPLOYMENT_KIND,
    ENGINE_KINDS,
    LWS_UNAVAILABLE,
    can_retire,
    group_counts,
    group_discovery,
    group_name_takers,
    may_have_group,
    other_kind,
    pod_templates,
    replicas,
    taken_by,
)
from openmodel.weights import state as weights_state
from openmodel.weights.render import DOWNLOAD_CONTAINER, CachePlan, own_claim_names

log = logging.getLogger(__name__)

POLICY_API_VERSION, POLICY_KIND = "networking.k8s.io/v1", "NetworkPolicy"

ObjectKey = tuple[str, str]


@dataclass
class OwnWrites:
    """The resourceVersion of the last object each of our own writes produced.

    The watch echoes every write back as an event. An event carrying exactly the
    version we wrote shows nothing we have not already seen (the pass that wrote it also
    rebuilt status from it), so handlers skip it: on a 200-object rollout this saves a
    full pass (four reads) per echo. Any other writer's change has another version.
    """

    _versions: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def record(self, kind: str, written: Mapping[str, Any]) -> None:
        meta = written.get("metadata") or {}
        if meta.get("resourceVersion"):
            key = (kind, meta.get("namespace", ""), meta.get("name", ""))
            self._versions[key] = meta["resourceVersion"]

    def is_echo(self, kind: str, namespace: str, name: str, version: str | None) -> bool:
        return version is not None and self._versions.get((kind, namespace, name)) == version

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._versions.pop((kind, namespace, name), None)


class ForeignChild(Exception):
    """A create found the name taken by an object the ModelDeployment does not own."""

    def __init__(self, found: Mapping[str, Any]) -> None:
        super().__init__(f"{found.get('kind')}/{(found.get('metadata') or {}).get('name')}")
        self.found = found


class StaleChild(Exception):
    """An update was refused because the cached child is older than the API's."""

    def __init__(self, obj: Mapping[str, Any], *, read_again: bool = False) -> None:
        super().__init__(f"{obj['kind']}/{obj['metadata']['name']}")
        self.obj = obj
        self.read_again = read_again  # the cache already holds the API's version


CHILD_NOT_OWNED = "ChildNotOwned"
# A 409 where only status moved is not a stale plan: apply again over the new version,
# this many times at most (then the next watch event runs the pass).
STATUS_ONLY_REAPPLIES = 3
REPAIR_FIELD_MANAGER = "openmodel-repair"


@dataclass
class ReconcileResult:
    applied: list[str]
    status_written: bool
    problem: Problem | None


class Reconciler:
    def __init__(
        self,
        api: client.ApiClient,
        config: PlatformConfig,
        clock: Callable[[], str] = utc_now,
        model_configs: ModelConfigStore | None = None,
        cache: ObjectCache | None = None,
        is_leader: Callable[[], bool] | None = None,
    ) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        # config.json resolutions; None: sizing uses the catalogue only.
        self.model_configs = model_configs
        self.own_writes = OwnWrites()
        self.inference_extension = InferenceExtensionGate(api)
        # Whether LeaderWorkerSets are served: asked only for a replica that spans nodes.
        self.groups = group_discovery(api)
        self.cache = cache if cache is not None else ObjectCache()
        # With leader election: only the Lease holder writes; a standby keeps its cache
        # warm (the watches run) and reconciles everything when it takes over. Asked at
        # the start of a pass; each write asks again (the API client's write guard).
        self.is_leader = is_leader or (lambda: True)
        self.reader = Reader(
            self.cache, lambda av, kind, ns, name: kube.get(self.api, av, kind, ns, name)
        )

    def reconcile_by_name(self, namespace: str, name: str) -> ReconcileResult | None:
        """One pass. The operator runs it only from its queue's workers
        (`controller/`), which never run two passes of one ModelDeployment at once."""
        if not self.is_leader():
            return None
        try:
            return self._pass(namespace, name)
        except NotLeader:
            # The hold lapsed mid-pass: the next leader reconciles everything anyway.
            log.info("%s/%s: no longer the leader; pass stopped before writing", namespace, name)
            return None

    def _pass(self, namespace: str, name: str) -> ReconcileResult | None:
        # The cache holds the newest ModelDeployment any watch event or write showed.
        body = self.reader.model_deployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        try:
            return self._pass_reading_once_again(namespace, name, body)
        except ApiException as e:
            # Its ModelDeployments go with it: a create there is refused until they do,
            # and once it is gone their DELETED events are on the way.
            if kube.namespace_terminating(e):
                log.info("%s/%s: the namespace is being deleted; nothing created", namespace, name)
            elif kube.namespace_not_found(e):
                log.info("%s/%s: the namespace is gone; nothing created", namespace, name)
            else:
                raise
            return None

    def _pass_reading_once_again(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> ReconcileResult | None:
        try:
            return self._reconcile(body)
        except StaleChild as stale:
            obj = stale.obj
            if not stale.read_again:
                self.reader.refresh(obj["apiVersion"], obj["kind"], namespace, name=_name(obj))
            log.info("%s/%s: %s changed meanwhile; read again", namespace, name, stale)
        try:
            return self._reconcile(body)
        except StaleChild as stale:
            # Changed again: the watch event of that change runs the next pass.
            log.info("%s/%s: %s changed again; next event decides", namespace, name, stale)
            return None

    def _reconcile(self, body: Mapping[str, Any]) -> ReconcileResult:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        uid = str(meta.get("uid") or "")
        foreign: list[str] = []
        deployment = self.reader.child("apps/v1", "Deployment", namespace, name, uid)
        if deployment is not None and uid not in owner_uids(deployment):
            foreign.append(f"Deployment/{name} already exists and {owner_text(deployment)}")
            deployment = None
        # The engine's workload of each kind that exists (workload.py).
        workloads: dict[str, Mapping[str, Any] | None] = {DEPLOYMENT_KIND: deployment}
        pods = self.reader.pods(namespace, name)
        nodes_stated = ((body.get("spec") or {}).get("gpu") or {}).get("nodes")
        if may_have_group(
            body.get("status"), pods, nodes_stated if isinstance(nodes_stated, int) else None
        ):
            workloads[LWS_KIND] = self._group(namespace, name, uid, foreign)
        wanted_kind = DEPLOYMENT_KIND
        group_missing = False
        problem: Problem | None = None
        created: list[str] = []
        updated: list[str] = []
        gpu_text: str | None = None
        sizing: dict[str, Any] | None = None
        desired_replicas: int | None = None
        md_endpoint: str | None = None
        egress: EgressPlan | None = None
        cache: weights_state.CacheState | None = None
        task: str | None = None
        cache_plan: CachePlan | None = None
        download_pods: list[dict[str, Any]] = []
        overflow: OverflowVerdict | None = None
        previous_cache = (body.get("status") or {}).get("cache")
        try:
            md = parse_model_deployment(body)
            md_endpoint = endpoint(md, self.config)
            # The replicas in place (the autoscaler's), of a group if there is one.
            current = replicas(workloads.get(LWS_KIND)) or replicas(deployment)
            annotations = meta.get("annotations")
            model_config = self._model_config(md.spec, annotations, (namespace, name))
            task = decided_task(md.spec, model_config, (body.get("status") or {}).get("task"))
            private = self._private_namespace(namespace, md.spec)
            overflow = overflow_verdict(md.spec.overflow, private, self._external_names())
            plan = make_plan(
                md, self.config, current, annotations, model_config, private, task=task
            )
            gpu_text = plan.gpu.text(md.spec.gpu.type)
            sizing = plan.gpu.estimate
            desired_replicas = plan.replicas
            cache_plan = plan.children.cache
            if cache_plan is not None:
                cache, download_pods = self._cache_state(cache_plan, namespace, uid, previous_cache)
            # The engine starts (or changes) only on a complete cache: a Deployment that
            # runs already is left as it is while a new download runs.
            hold_engine = cache is not None and cache.phase != weights_state.READY
            wanted_kind = plan.children.deployment["kind"]
            if wanted_kind == LWS_KIND and LWS_KIND not in workloads:
                workloads[LWS_KIND] = self._group(namespace, name, uid, foreign)
            group_missing = wanted_kind == LWS_KIND and bool(self.groups.missing())
            takers = (
                group_name_takers(name, self._neighbours(namespace, name))
                if wanted_kind == LWS_KIND
                else []
            )
            name_taken = bool(takers)
            work: list[tuple[dict[str, Any], Mapping[str, Any] | None]] = []
            for obj in self.inference_extension.applicable(plan.children.all(), body):
                if obj["kind"] in ENGINE_KINDS and (hold_engine or group_missing or name_taken):
                    continue
                if obj["kind"] in ENGINE_KINDS:
                    observed = workloads.get(obj["kind"])
                else:
                    observed = self.reader.child(
                        obj["apiVersion"], obj["kind"], namespace, _name(obj), uid
                    )
                    if observed is not None and uid not in owner_uids(observed):
                        foreign.append(
                            f"{obj['kind']}/{_name(obj)} already exists and {taken_by(observed)}"
                        )
                        continue
                work.append((obj, observed))
            # The engine workload last: no GPU is taken while a name it needs is
            # someone else's (a create finds that out only by trying).
            work.sort(key=lambda item: item[0]["kind"] in ENGINE_KINDS)
            for obj, observed in work:
                if object_holds(obj, observed):
                    continue
                if foreign and obj["kind"] in ENGINE_KINDS:
                    continue
                try:
                    result = self._apply_child(obj, observed, uid)
                except ForeignChild as taken:
                    foreign.append(
                        f"{obj['kind']}/{_name(obj)} already exists and {taken_by(taken.found)}"
                    )
                    continue
                if result is None:
                    continue
                (updated if observed is not None else created).append(f"{obj['kind']}/{_name(obj)}")
                if obj["kind"] in ENGINE_KINDS:
                    workloads[obj["kind"]] = result
            if not self.config.privacy.network_policy.enabled:
                self._withdraw_network_policy(namespace, name, uid)
            egress = plan.egress
            if not foreign and not hold_engine and not group_missing and not name_taken:
                self._retire_other_kind(body, workloads, wanted_kind)
            if group_missing:
                raise SpecError(
                    "spec.gpu",
                    f"a replica spans {plan.gpu.nodes} nodes ({plan.gpu.text(md.spec.gpu.type)}: "
                    f"{plan.gpu.count * plan.gpu.nodes} GPUs, more than one node holds) and runs "
                    "as a LeaderWorkerSet group, but the API server does not serve "
                    "leaderworkersets.leaderworkerset.x-k8s.io/v1: install LeaderWorkerSet "
                    "(sigs.k8s.io/lws), or choose a layout of one node (a larger gpu.type, "
                    "spec.quantization); nothing else was changed",
                    reason=LWS_UNAVAILABLE,
                )
            if name_taken:
                named = ", ".join(f"{taker} (group {index})" for taker, index in takers)
                raise SpecError(
                    "metadata.name",
                    f"a replica spans {plan.gpu.nodes} nodes and runs as a group of "
                    f"LeaderWorkerSet {name}, which names group i's leader pod, headless "
                    f"Service and workers' StatefulSet {name}-<i>; ModelDeployment {named} "
                    "in this namespace has such a name, and its engine Service would be "
                    "the group's (whose workers could not reach their leader): the "
                    "LeaderWorkerSet is not created or changed until one of the two "
                    "ModelDeployments is renamed or this one's layout fits one node",
                    reason=GROUP_NAME_TAKEN,
                )
            if foreign:
                # Someone else's object of the same name: never taken over silently.
                raise SpecError(
                    "metadata.name",
                    f"{'; '.join(foreign)}: openmodel does not "
                    "take over objects it does not own (delete or rename that object, or "
                    "give the ModelDeployment another name); that object is left as it is, "
                    "and the engine Deployment is not created or changed until then",
                    reason=CHILD_NOT_OWNED,
                )
        except SpecError as e:
            problem = Problem(e.reason, f"{e.field}: {e.message}")
        applied = created + updated
        if problem is None and cache is not None:
            problem = _cache_problem(cache, download_pods)
        # The workload status reads: the wanted kind's, else (not applied yet) the other's.
        workload = workloads.get(wanted_kind) or workloads.get(other_kind(wanted_kind))
        superseded = self._tidy_weights(cache_plan, cache, namespace, name, uid, workload)

        pods = self.reader.pods(namespace, name)
        obs = Observation(
            generation=int(meta.get("generation") or 0),
            name=name,
            label_selector=label_selector(name),
            endpoint=md_endpoint,
            desired_replicas=desired_replicas,
            deployment=workload,
            pods=pods,
            groups=(
                group_counts(workload, pods)
                if workload is not None and workload.get("kind") == LWS_KIND
                else None
            ),
            problem=problem,
            gpu=gpu_text,
            sizing=sizing,
            egress=egress if problem is None else None,
            cache=None if cache is None else _cache_status(cache, superseded),
            task=task or _unparsed_task(body),
            overflow=overflow,
        )
        update = build_status(obs, body.get("status"), self.clock())
        written = False
        if needs_write(update.status, body.get("status")):
            status_body = {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": name, "namespace": namespace},
                "status": update.status,
            }
            try:
                result = kube.apply(self.api, status_body, subresource="status")
                self.own_writes.record(KIND, result)
                self.cache.wrote(KIND, result)
                written = True
            except ApiException as e:
                if e.status != 404:  # deleted meanwhile: nothing left to report on
                    raise
        if applied:
            log.info("applied %s for %s/%s", ", ".join(applied), namespace, name)
        if updated:
            # Creation is told by the conditions (and the Ready event): a burst of a
            # thousand creations posts no thousand "Applied" events. A change of an
            # existing child (a rollout, or a hand edit put back) is worth an Event.
            post_event(self.api, body, "Applied", f"applied {', '.join(updated)}")
        if cache is not None:
            self._post_cache_events(body, previous_cache, cache, superseded)
        for t in update.transitions:
            if t.condition == DEGRADED and t.status == "True":
                post_event(self.api, body, t.reason, t.message, "Warning")
            elif t.condition == READY and t.status == "True":
                post_event(self.api, body, t.reason, t.message)  # Ready, or ScaledToZero
            elif t.condition == OVERFLOW and t.reason != NOT_ALLOWED_IN_PRIVATE_NAMESPACE:
                # (refused in a private namespace: the Degraded event says so)
                kind = "Normal" if t.status == "True" else "Warning"
                post_event(self.api, body, f"Overflow{t.reason}", t.message, kind)
        return ReconcileResult(applied=applied, status_written=written, problem=problem)

    def _neighbours(self, namespace: str, name: str) -> list[str]:
        """The names of the namespace's other ModelDeployments (from the cache)."""
        return [
            b["metadata"]["name"]
            for b in self.cache.model_deployments()
            if b["metadata"]["namespace"] == namespace and b["metadata"]["name"] != name
        ]

    def _group(
        self, namespace: str, name: str, uid: str, foreign: list[str]
    ) -> Mapping[str, Any] | None:
        """The ModelDeployment's LeaderWorkerSet (None: none, or the kind is not served);
        someone else's of that name is reported in `foreign`."""
        if self.groups.missing():
            return None
        group = self.reader.child(LWS_API_VERSION, LWS_KIND, namespace, name, uid)
        if group is not None and uid not in owner_uids(group):
            foreign.append(f"{LWS_KIND}/{name} already exists and {owner_text(group)}")
            return None
        return group

    def _retire_other_kind(
        self,
        body: Mapping[str, Any],
        workloads: dict[str, Mapping[str, Any] | None],
        wanted_kind: str,
    ) -> None:
        """After a switch between a Deployment and a LeaderWorkerSet: delete the old kind
        once the new one serves (workload.py)."""
        old_kind = other_kind(wanted_kind)
        old = workloads.get(old_kind)
        pods = self.reader.pods(body["metadata"]["namespace"], body["metadata"]["name"])
        if old is None or not can_retire(old, workloads.get(wanted_kind), pods):
            return
        meta = old["metadata"]
        kube.delete(self.api, API_VERSIONS[old_kind], old_kind, meta["namespace"], meta["name"])
        self.cache.drop(old_kind, meta["namespace"], meta["name"])
        workloads[old_kind] = None
        message = f"{old_kind}/{meta['name']} deleted: the {wanted_kind} of the new layout serves"
        log.info("%s/%s: %s", meta["namespace"], body["metadata"]["name"], message)
        post_event(self.api, body, "WorkloadReplaced", message)

    def _private_namespace(self, namespace: str, spec: ModelDeploymentSpec) -> bool:
        """Whether the namespace is labelled openmodel.dev/data=private. Asked only when
        the answer can change what is rendered or reported (an egress exception, engine
        telemetry the platform turned on, overflow to an external model), so the common
        pass makes no request for it."""
        if not (spec.egress_exceptions or self.config.privacy.engine_telemetry or spec.overflow):
            return False
        return kube.namespace_labels(self.api, namespace).get(DATA_LABEL) == DATA_PRIVATE

    def _external_names(self) -> set[str]:
        """The names the ExternalModels in the cache serve (one the API server holds but
        that does not parse serves none)."""
        names = set()
        for body in self.cache.all_of(EXTERNAL_MODEL_KIND):
            try:
                names.add(parse_external_model(body).served_name)
            except SpecError:
                continue
        return names

    def _withdraw_network_policy(self, namespace: str, name: str, uid: str) -> None:
        """The platform turned NetworkPolicies off: ours, from before, are deleted (the
        engine pods' and the download Job pods')."""
        for policy in (name, f"{name}-weights"):
            found = self.reader.child(POLICY_API_VERSION, POLICY_KIND, namespace, policy, uid)
            if found is None or uid not in owner_uids(found):
                continue
            kube.delete(self.api, POLICY_API_VERSION, POLICY_KIND, namespace, policy)
            self.cache.drop(POLICY_KIND, namespace, policy)
            log.info("%s/%s: NetworkPolicy %s deleted (privacy.networkPolicy.enabled is false)",
                     namespace, name, policy)  # fmt: skip

    def _apply_child(
        self, obj: dict[str, Any], observed: Mapping[str, Any] | None, owner_uid: str
    ) -> dict[str, Any] | None:
        """Write one child: create it when the cache holds none, else server-side apply
        over the cached version. None when it is to be skipped this pass."""
        try:
            if observed is None and obj["kind"] in WATCHED:
                created = self._create_child(obj, owner_uid)
                if created is not None:
                    return self._wrote(obj["kind"], created)
                # Ours after all (its label was taken off by hand): read, now update it.
                observed = self.cache.get(obj["kind"], obj["metadata"]["namespace"], _name(obj))
                if observed is None:
                    raise StaleChild(obj)
            return self._wrote(obj["kind"], self._apply_over(obj, observed))
        except ApiException as e:
            if self.inference_extension.gone(obj, e):
                return None
            if e.status == 404 and obj["kind"] == LWS_KIND:
                # The CRD was removed since the last discovery: ask again next pass.
                self.groups.invalidate()
                raise SpecError(
                    "spec.gpu",
                    "a replica spans nodes and runs as a LeaderWorkerSet group, but the API "
                    "server no longer serves leaderworkersets.leaderworkerset.x-k8s.io/v1: "
                    "install LeaderWorkerSet (sigs.k8s.io/lws), or choose a layout of one node",
                    reason=LWS_UNAVAILABLE,
                ) from None
            if e.status == 409 and observed is not None:
                raise StaleChild(obj) from None
            if e.status in (400, 422):
                raise SpecError(
                    "spec",
                    f"the API server refused the {obj['kind']}: {_api_message(e)}",
                    reason="ApplyRejected",
                ) from None
            raise

    def _create_child(self, obj: dict[str, Any], owner_uid: str) -> dict[str, Any] | None:
        """POST a child the cache says we do not have. One request and no read for a new
        child; when the name is taken the object is read: someone else's is never written
        (ForeignChild), ours (None) is updated by the caller."""
        meta = obj["metadata"]
        try:
            return kube.create(self.api, obj, kube.FIELD_MANAGER)
        except ApiException as e:
            if e.status != 409:
                raise
        found = self.reader.existing(
            obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"], owner_uid
        )
        if found is None:
            raise StaleChild(obj)  # deleted since: the next pass creates it
        if owner_uid not in owner_uids(found):
            raise ForeignChild(found)
        return None

    def _apply_over(
        self, obj: dict[str, Any], observed: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        if observed is None:
            return kube.apply(self.api, obj)
        observed = self._own_fields_as_applied(obj, observed)
        version = observed["metadata"].get("resourceVersion")
        for attempt in range(STATUS_ONLY_REAPPLIES + 1):
            # Optimistic concurrency: refused (409) when the cached copy is stale.
            sent = {**obj, "metadata": {**obj["metadata"], "resourceVersion": version}}
            try:
                return kube.apply(self.api, sent)
            except ApiException as e:
                if e.status == 409:
                    version = self._version_if_only_status_moved(obj, observed)
                    if version is None or attempt == STATUS_ONLY_REAPPLIES:
                        raise StaleChild(obj, read_again=True) from None
                    continue
                if e.status != 422:
                    raise
                refusal = _api_message(e)
                break
        # A hand edit can make the merge itself invalid: a Service port changed by a
        # JSON patch keeps its name, and applying ours next to it is a duplicate name.
        # Put our lists back wholesale, then apply again.
        log.info("%s/%s refused a merge (%s); replacing its spec", obj["kind"], _name(obj),
                 refusal)  # fmt: skip
        self._replace_spec(obj, version)
        return kube.apply(self.api, obj)

    def _version_if_only_status_moved(
        self, obj: Mapping[str, Any], observed: Mapping[str, Any]
    ) -> str | None:
        """After a 409: the child as the API has it now. When its spec and owners are as
        the plan saw them (the Deployment controller writes status and its revision
        annotation through a rollout), the plan still holds and its new resourceVersion
        is returned; else None. Labels and annotations of ours that moved are put back
        by the apply itself."""
        meta = obj["metadata"]
        fresh = self.reader.refresh(obj["apiVersion"], obj["kind"], meta["namespace"], _name(obj))
        if fresh is None or _plan_inputs(fresh) != _plan_inputs(observed):
            return None
        return str(fresh["metadata"].get("resourceVersion"))

    def _own_fields_as_applied(
        self, obj: Mapping[str, Any], observed: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """A child we created (POST) has its fields under an Update entry of our manager,
        which our apply would never remove (a dropped env var would stay forever). Before
        the first apply over it, that entry becomes an Apply entry (one request, once per
        child). The answer is the object as the server holds it: if its spec or owners
        changed since the cached copy the plan was made from, the pass is stale (the
        apply's resourceVersion guard cannot tell any more). Status, and the revision
        annotation the Deployment controller writes through a rollout, are no stale
        plan: the apply puts back any label or annotation of ours."""
        entries = observed["metadata"].get("managedFields") or []
        ours = [
            (i, e.get("operation"))
            for i, e in enumerate(entries)
            if e.get("manager") == kube.FIELD_MANAGER and not e.get("subresource")
        ]
        index = next((i for i, op in ours if op == "Update"), None)
        if index is None or any(op == "Apply" for _, op in ours):
            return observed
        try:
            upgraded = self._wrote(obj["kind"], kube.upgrade_to_apply(self.api, observed, index))
        except ApiException as e:
            if e.status == 422:  # the entry moved: the object changed since we saw it
                raise StaleChild(obj) from None
            raise
        if _plan_inputs(upgraded) != _plan_inputs(observed):
            raise StaleChild(obj)
        return upgraded

    def _wrote(self, kind: str, result: dict[str, Any]) -> dict[str, Any]:
        self.own_writes.record(kind, result)
        self.cache.wrote(kind, result)
        return result

    def _replace_spec(self, obj: Mapping[str, Any], version: str | None) -> None:
        """A JSON merge patch of the rendered spec: lists are replaced, not merged (the
        cached resourceVersion guards it as it guards the apply)."""
        meta = obj["metadata"]
        kube.call(
            self.api,
            "PATCH",
            kube.object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]),
            body={
                "metadata": {"resourceVersion": version},
                "spec": obj["spec"],
            },
            content_type="application/merge-patch+json",
            # Its own name, so managedFields show the repair (the forced apply after it
            # takes back every field that differs).
            query=[("fieldManager", REPAIR_FIELD_MANAGER)],
        )

    def _cache_state(
        self, plan: CachePlan, namespace: str, uid: str, previous: Any
    ) -> tuple[weights_state.CacheState, list[dict[str, Any]]]:
        """Where the weights download stands, and the Job's pods when they were read. The
        Job comes from the watch cache; its pods (one LIST) and the running pod's newest
        log line (one GET) only while it runs, once after it finished, and when it
        failed."""
        if plan.job_name is None:
            return weights_state.observe(plan, None), []
        job = self.reader.child("batch/v1", "Job", namespace, plan.job_name, uid)
        if job is not None and uid not in owner_uids(job):
            raise SpecError(
                "metadata.name",
                f"Job/{plan.job_name} already exists and {owner_text(job)}: openmodel does "
                "not take over objects it does not own",
                reason=CHILD_NOT_OWNED,
            )
        pods: list[dict[str, Any]] = []
        line: str | None = None
        if weights_state.needs_pods(job, previous, plan.job_name):
            pods = kube.list_objects(
                self.api, "v1", "Pod", namespace, f"batch.kubernetes.io/job-name={plan.job_name}"
            )
            pod = weights_state.running_pod(pods)
            if pod is not None and weights_state.job_condition(job or {}, "Complete") is None:
                line = self._progress_line(namespace, pod)
        return weights_state.observe(plan, job, pods, line, previous), pods

    def _progress_line(self, namespace: str, pod: str) -> str | None:
        """The running download's newest log line; None when the API server cannot give
        it (a kubelet it cannot reach, no `pods/log` right): the progress is only shown,
        so its absence leaves the bytes unknown and never fails the pass."""
        try:
            return kube.log_tail(self.api, namespace, pod, DOWNLOAD_CONTAINER, 1)
        except ApiException as e:
            log.warning(
                "%s/%s: no progress line from the download pod's log: %s %s",
                namespace, pod, e.status, e.reason,
            )  # fmt: skip
            return None

    def _tidy_weights(
        self,
        plan: CachePlan | None,
        cache: weights_state.CacheState | None,
        namespace: str,
        name: str,
        uid: str,
        deployment: Mapping[str, Any] | None,
    ) -> list[str]:
        """Once a download is complete: retire the ModelDeployment's other download Jobs
        (a deadline and a TTL of 0, so the Job controller removes them; the operator
        deletes nothing), and name its own claims no pod template mounts any more (an
        access-mode change, e.g. the upgrade from ReadWriteOnce claims), which the
        platform deletes."""
        if plan is None or cache is None or cache.phase != weights_state.READY:
            return []
        for job in self.cache.labelled("Job", namespace, name):
            job_name = _name(job)
            if job_name == plan.job_name or uid not in owner_uids(job):
                continue
            if (job.get("spec") or {}).get("ttlSecondsAfterFinished") == 0:
                continue
            self._wrote(
                "Job",
                kube.call(
                    self.api,
                    "PATCH",
                    kube.object_path("batch/v1", "Job", namespace, job_name),
                    body={"spec": {"activeDeadlineSeconds": 1, "ttlSecondsAfterFinished": 0}},
                    content_type="application/merge-patch+json",
                    query=[("fieldManager", kube.FIELD_MANAGER)],
                ),
            )
            log.info("%s/%s: retired the superseded download Job %s", namespace, name, job_name)
        if deployment is None or not _rolled_out(deployment):
            return []
        mounted = _mounted_claims(deployment)
        superseded = []
        for claim in own_claim_names(name):
            if claim == plan.claim_name or claim in mounted:
                continue
            held = self.cache.get("PersistentVolumeClaim", namespace, claim)
            if held is not None and uid in owner_uids(held):
                superseded.append(claim)
        return superseded

    def _post_cache_events(
        self,
        body: Mapping[str, Any],
        previous: Any,
        cache: weights_state.CacheState,
        superseded: list[str],
    ) -> None:
        before = previous if isinstance(previous, Mapping) else {}
        same_job = before.get("job") == cache.job
        if cache.job is None:
            return
        if cache.phase == weights_state.DOWNLOADING and not (
            same_job and before.get("phase") == weights_state.DOWNLOADING
        ):
            post_event(self.api, body, "DownloadStarted", f"download Job {cache.job} started")
        if cache.phase == weights_state.READY and not (
            same_job and before.get("phase") == weights_state.READY
        ):
            post_event(
                self.api, body, "DownloadComplete",
                f"download Job {cache.job} complete: {cache.revision or 'revision unknown'}, "
                f"{cache.bytes_total or 0} bytes in claim {cache.claim_name}",
            )  # fmt: skip
        if superseded and before.get("supersededClaims") != superseded:
            post_event(
                self.api, body, "CacheClaimSuperseded",
                f"claim(s) {', '.join(superseded)} no longer mounted (the cache moved to "
                f"{cache.claim_name}): delete them when nothing else uses them "
                "(kubectl delete pvc …); they go with the ModelDeployment otherwise",
                "Warning",
            )  # fmt: skip

    def _model_config(
        self, spec: Any, annotations: Mapping[str, Any] | None, key: ObjectKey
    ) -> ModelConfigState | None:
        """Where reading the model's config.json stands; never waits for it."""
        if self.model_configs is None:
            return None
        ref = model_ref_for(spec, annotations)
        return None if ref is None else self.model_configs.lookup(ref, key)


def _cache_problem(
    cache: weights_state.CacheState, pods: Sequence[Mapping[str, Any]]
) -> Problem | None:
    """A failed download is Degraded with its cause, and so is one whose pod cannot be
    placed (an unbound claim, no node) or started (its image); one running holds the
    engine back (a pending reason, not a fault)."""
    if cache.phase == weights_state.FAILED:
        return Problem(cache.reason or weights_state.DOWNLOAD_FAILED, cache.message or "")
    if cache.phase == weights_state.READY:
        return None
    stuck = unschedulable_message(pods)
    if stuck is not None:
        return Problem("DownloadUnschedulable", f"download Job {cache.job}: {stuck}")
    failing = engine_failure(pods)
    if failing is not None and failing.reason == "EngineStartFailed":
        return Problem("DownloadStartFailed", f"download Job {cache.job}: {failing.message}")
    if cache.phase != weights_state.READY:
        return Problem(
            weights_state.DOWNLOADING_WEIGHTS,
            f"the engine starts once download Job {cache.job} has filled claim "
            f"{cache.claim_name} ({cache.progress})",
        )
    return None


def _cache_status(cache: weights_state.CacheState, superseded: list[str]) -> dict[str, Any]:
    out = cache.status()
    if superseded:
        out["supersededClaims"] = superseded
    return out


def _unparsed_task(body: Mapping[str, Any]) -> str:
    """status.task when the spec could not be parsed: spec.task if it is one, else the
    task decided before, else generate."""
    for value in (
        (body.get("spec") or {}).get("task"),
        (body.get("status") or {}).get("task"),
    ):
        if isinstance(value, str) and value in TASKS:
            return value
    return TASK_GENERATE


def _rolled_out(deployment: Mapping[str, Any]) -> bool:
    spec, st = deployment.get("spec") or {}, deployment.get("status") or {}
    want = int(spec.get("replicas", 1))
    caught_up = st.get("observedGeneration", 0) >= (deployment.get("metadata") or {}).get(
        "generation", 0
    )
    return bool(caught_up and st.get("updatedReplicas", 0) >= want
                and st.get("replicas", 0) == st.get("updatedReplicas", 0))  # fmt: skip


def _mounted_claims(workload: Mapping[str, Any]) -> set[str]:
    return {
        str(v["persistentVolumeClaim"].get("claimName"))
        for template in pod_templates(workload)
        for v in (template.get("spec") or {}).get("volumes") or []
        if isinstance(v, Mapping) and isinstance(v.get("persistentVolumeClaim"), Mapping)
    }


def _plan_inputs(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of an existing child a plan depends on: its spec (replicas) and owners."""
    return (obj.get("spec"), obj["metadata"].get("ownerReferences"))


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except ValueError:
        return str(e.reason)
