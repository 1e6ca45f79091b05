"""The engine's workload: a Deployment, or a LeaderWorkerSet when a replica spans nodes.

A ModelDeployment has one of the two at a time, except while it switches (an edit, or a
new sizing, changed the layout): the new kind is applied next to the old one, both
serve (the Service selects a Deployment's pods and a group's leaders alike), and the old
one is deleted once the new one is rolled out (or at once when it has no replicas).
So a switch is a rollout, not an outage, given room for both on the nodes.

LeaderWorkerSets are not watched (the CRD may not be installed): the reconciler reads
one when it may exist (`may_have_group`) and keeps it from its own writes, and learns
whether the API server serves the kind from API discovery (`group_discovery`), at most
once a minute. Their pods are watched like every engine pod (the owner label).

LWS names group i's leader pod, its headless Service and its workers' StatefulSet
`<name>-<i>` (subdomainPolicy UniquePerReplica, render.py), which another ModelDeployment
of the namespace may be called: its engine Service would be that group's headless
Service, and the group could not start (its workers find the leader through it). The
group yields: its ModelDeployment reports `GroupNameTaken` naming the other, and its
LeaderWorkerSet is not created or changed (`group_name_takers`); the other one, if the
group's Service came first, reports that Service as LeaderWorkerSet `<name>`'s
(`taken_by`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from openmodel.api import LWS_API_VERSION, LWS_KIND, ROLE_LABEL, WORKER_ROLE
from openmodel.inference_extension.discovery import CrdDiscovery, api_resources
from openmodel.kube.cache import owner_text
from openmodel.reconcile.render import TEMPLATE_HASH_ANNOTATION

DEPLOYMENT_API_VERSION, DEPLOYMENT_KIND = "apps/v1", "Deployment"
ENGINE_KINDS = (DEPLOYMENT_KIND, LWS_KIND)
API_VERSIONS = {DEPLOYMENT_KIND: DEPLOYMENT_API_VERSION, LWS_KIND: LWS_API_VERSION}
LWS_PLURAL = "leaderworkersets"
# The labels LWS sets on every pod of a group: the LeaderWorkerSet's name, the group's
# index (0 .. replicas - 1).
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
LWS_UNAVAILABLE = "LeaderWorkerSetUnavailable"
# status.gpu of a replica that spans nodes (GpuChoice.text).
_GROUP_TEXT = " nodes x "


def group_discovery(api: client.ApiClient) -> CrdDiscovery:
    """Whether the API server serves leaderworkersets.leaderworkerset.x-k8s.io/v1."""
    return CrdDiscovery(api_resources(api), required=((LWS_API_VERSION, LWS_PLURAL),))


def other_kind(kind: str) -> str:
    return LWS_KIND if kind == DEPLOYMENT_KIND else DEPLOYMENT_KIND


def group_index(name: str, group: str) -> int | None:
    """i when `name` is what LWS calls group i of the LeaderWorkerSet `group`
    (`<group>-<i>`, i written as a StatefulSet ordinal: no sign, no leading zero)."""
    prefix = f"{group}-"
    if not name.startswith(prefix):
        return None
    index = name[len(prefix) :]
    if not (index.isascii() and index.isdigit()) or (index != "0" and index.startswith("0")):
        return None
    return int(index)


def group_name_takers(group: str, neighbours: Iterable[str]) -> list[tuple[str, int]]:
    """The names among `neighbours` (the namespace's other ModelDeployments) that are
    group names of `group`, with the group's index, sorted by index: any index, since
    the autoscaler may add groups."""
    found = [(n, i) for n in neighbours if (i := group_index(n, group)) is not None]
    return sorted(found, key=lambda taker: taker[1])


def taken_by(found: Mapping[str, Any]) -> str:
    """Who holds a name, for a message: its owners, and the LeaderWorkerSet group an
    object LWS made belongs to."""
    text = owner_text(found)
    meta = found.get("metadata") or {}
    group = (meta.get("labels") or {}).get(LWS_NAME_LABEL)
    index = group_index(str(meta.get("name")), group) if isinstance(group, str) else None
    if index is None:
        return text
    return (
        f"{text}: LeaderWorkerSet {group} made it for its group {index} (ModelDeployment "
        f"{group} spans nodes, and LWS names group {index}'s leader pod, its headless "
        f"Service and its workers' StatefulSet {group}-{index})"
    )


def may_have_group(
    status: Any, pods: Sequence[Mapping[str, Any]], nodes_stated: int | None
) -> bool:
    """Whether a LeaderWorkerSet of this ModelDeployment may exist (so it is read): the
    last status said its replicas span nodes, a pod of a group is there, or the spec
    asks for more than one node."""
    gpu = status.get("gpu") if isinstance(status, Mapping) else None
    if isinstance(gpu, str) and _GROUP_TEXT in gpu:
        return True
    if (nodes_stated or 1) > 1:
        return True
    return any(LWS_NAME_LABEL in ((p.get("metadata") or {}).get("labels") or {}) for p in pods)


def replicas(workload: Mapping[str, Any] | None) -> int | None:
    if workload is None:
        return None
    value = (workload.get("spec") or {}).get("replicas")
    return None if value is None else int(value)


def rolled_out(workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> bool:
    """Every replica of the current template is there and ready: a Deployment's status
    says so, a LeaderWorkerSet's groups are counted from `pods` (`group_counts`)."""
    if workload.get("kind") == LWS_KIND:
        counts = group_counts(workload, pods)
        return counts.ready >= counts.want and counts.present == counts.updated
    spec, st = workload.get("spec") or {}, workload.get("status") or {}
    want = int(spec.get("replicas", 1))
    caught_up = st.get("observedGeneration", 0) >= (workload.get("metadata") or {}).get(
        "generation", 0
    )
    return bool(
        caught_up
        and st.get("updatedReplicas", 0) >= want
        and st.get("readyReplicas", 0) >= want
        and st.get("replicas", 0) == st.get("updatedReplicas", 0)
    )


def can_retire(
    old: Mapping[str, Any], new: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]
) -> bool:
    """The previous kind's workload may go: the new one serves (`pods`: the
    ModelDeployment's), or the old one serves nothing (no replicas)."""
    if replicas(old) == 0:
        return True
    return new is not None and rolled_out(new, pods)


def pod_templates(workload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A Deployment's pod template; a LeaderWorkerSet's leader and worker templates."""
    spec = workload.get("spec") or {}
    if workload.get("kind") == LWS_KIND:
        group = spec.get("leaderWorkerTemplate") or {}
        return [t for t in (group.get("leaderTemplate"), group.get("workerTemplate")) if t]
    template = spec.get("template")
    return [template] if template else []


def _is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _template_hash(workload: Mapping[str, Any]) -> str | None:
    templates = pod_templates(workload)
    if not templates:
        return None
    return ((templates[0].get("metadata") or {}).get("annotations") or {}).get(
        TEMPLATE_HASH_ANNOTATION
    )


@dataclass(frozen=True)
class GroupCounts:
    """A LeaderWorkerSet's replicas as status reads them, counted from its pods (the
    kind is not watched, so its own status may lag): a group is ready when its leader is
    ready and all its workers run, updated when its pods carry the applied template."""

    want: int
    present: int
    ready: int
    updated: int


def group_counts(workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> GroupCounts:
    size = int(((workload.get("spec") or {}).get("leaderWorkerTemplate") or {}).get("size") or 1)
    current = _template_hash(workload)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        index = (meta.get("labels") or {}).get(LWS_GROUP_INDEX_LABEL)
        if index is None or meta.get("deletionTimestamp"):
            continue
        groups.setdefault(str(index), []).append(pod)
    ready = updated = 0
    for members in groups.values():
        fresh = all(
            ((m.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION)
            == current
            for m in members
        )
        if not fresh or len(members) < size:
            continue
        updated += 1
        leaders = [m for m in members if _role(m) != WORKER_ROLE]
        workers = [m for m in members if _role(m) == WORKER_ROLE]
        if (
            len(leaders) == 1
            and _is_ready(leaders[0])
            and all((w.get("status") or {}).get("phase") == "Running" for w in workers)
        ):
            ready += 1
    return GroupCounts(
        want=replicas(workload) or 0, present=len(groups), ready=ready, updated=updated
    )


def _role(pod: Mapping[str, Any]) -> str | None:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(ROLE_LABEL)
