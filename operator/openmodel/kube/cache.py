"""What the watches delivered, so that a reconcile pass reads no object from the API.

kopf already watches ModelDeployments and the children they own (Deployments, Services,
claims and Pods carrying the owner label). Index functions registered in `main.py` feed
every watch event into an `ObjectCache` before any handler runs, and kopf starts handlers
only once every watched kind's initial listing is indexed, so the first passes see the
whole cluster. Handlers feed the deletions (kopf does not index those).

The operator's own writes go in too (`wrote`): the API server's answer is newer than
anything the watch has delivered yet, and a pass that runs before the echo arrives must
not write again. An older version arriving later never replaces a newer one.

What is kept is slimmed (`slim`): `managedFields` (half of a Deployment's or a Pod's
bytes) shrinks to who manages it and how, without the field sets, and kubectl's
last-applied annotation goes; nothing here reads either.

Kinds nobody watches (the Inference Extension children) are kept only from our writes;
a miss is answered by one GET (`Reader.child`). `audit` compares the cache with one
LIST per watched kind now and then: a watch that was re-listed after a long outage may
have missed a deletion (kopf emits no DELETED for it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openmodel.api import KIND, OWNER_LABEL

log = logging.getLogger(__name__)

Body = Mapping[str, Any]
# (kind, namespace, name)
CacheKey = tuple[str, str, str]
OwnerKey = tuple[str, str]

POD = "Pod"
# The children whose watch (by owner label) feeds the cache, with ModelDeployments:
# (group, version, plural, kind). Other kinds are remembered from our own writes.
CHILD_KINDS = (
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ("", "v1", "pods", POD),
    # The weights download Jobs (weights/): a finished download starts the engine.
    ("batch", "v1", "jobs", "Job"),
)


def resource_version(body: Body) -> int | None:
    """The resourceVersion as a number (etcd's revision), None when absent or opaque."""
    raw = (body.get("metadata") or {}).get("resourceVersion")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_ENTRY_KEYS = ("manager", "operation", "subresource")


def slim(body: Body) -> dict[str, Any]:
    """`body` without what the operator never reads: each managedFields entry keeps its
    manager, operation and subresource (in order: a JSON patch may address one by index),
    and kubectl's last-applied annotation is dropped. Everything else is shared, not
    copied."""
    meta = dict(body.get("metadata") or {})
    entries = meta.get("managedFields")
    if entries:
        meta["managedFields"] = [
            {k: e[k] for k in _ENTRY_KEYS if k in e} for e in entries if isinstance(e, Mapping)
        ]
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**body, "metadata": meta}


def _newer(candidate: Body, current: Body | None) -> bool:
    if current is None:
        return True
    new, old = resource_version(candidate), resource_version(current)
    # Opaque versions cannot be ordered: the last delivered wins, as in client-go.
    return new is None or old is None or new >= old


@dataclass
class ObjectCache:
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _objects: dict[CacheKey, Body] = field(default_factory=dict)
    # Pods by (namespace, owner label value) -> name -> body.
    _pods: dict[OwnerKey, dict[str, Body]] = field(default_factory=dict)
    # (namespace, pod name) -> the owner it is filed under (a deletion may lack the label).
    _pod_owner: dict[tuple[str, str], str] = field(default_factory=dict)

    # -- feeding ---------------------------------------------------------------------

    def observe(self, kind: str, body: Body) -> None:
        """A watch event (ADDED, MODIFIED or a listing) or our own write's answer."""
        body = slim(body)
        meta = body["metadata"]
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        with self._lock:
            if kind == POD:
                owner = str((meta.get("labels") or {}).get(OWNER_LABEL) or "")
                filed = self._pod_owner.get((namespace, name))
                if filed is not None and filed != owner:
                    self._drop_pod(namespace, name)
                pods = self._pods.setdefault((namespace, owner), {})
                if _newer(body, pods.get(name)):
                    pods[name] = body
                    self._pod_owner[(namespace, name)] = owner
                return
            key = (kind, namespace, name)
            if _newer(body, self._objects.get(key)):
                self._objects[key] = body

    wrote = observe

    def forget(self, kind: str, body: Body) -> None:
        """A DELETED event: drop the object (unless a newer one of that name is held)."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        with self._lock:
            if kind == POD:
                owner = self._pod_owner.get((namespace, name))
                held = (self._pods.get((namespace, owner)) or {}).get(name) if owner else None
                if held is not None and _newer(body, held):
                    self._drop_pod(namespace, name)
                return
            key = (kind, namespace, name)
            held = self._objects.get(key)
            if held is not None and _uid(held) == _uid(body) and _newer(body, held):
                del self._objects[key]

    def _drop_pod(self, namespace: str, name: str) -> None:
        owner = self._pod_owner.pop((namespace, name), None)
        if owner is None:
            return
        pods = self._pods.get((namespace, owner)) or {}
        pods.pop(name, None)
        if not pods:
            self._pods.pop((namespace, owner), None)

    def drop_namespace(self, namespace: str) -> list[tuple[str, str]]:
        """Forget every object of `namespace` (it is being deleted); returns the
        (namespace, name) of the ModelDeployments that were held."""
        with self._lock:
            keys = [k for k in self._objects if k[1] == namespace]
            dropped = [(ns, name) for kind, ns, name in keys if kind == KIND]
            for key in keys:
                del self._objects[key]
            for owner_key in [k for k in self._pods if k[0] == namespace]:
                for name in list(self._pods[owner_key]):
                    self._pod_owner.pop((namespace, name), None)
                del self._pods[owner_key]
        return dropped

    def drop(self, kind: str, namespace: str, name: str) -> None:
        """Forget what we remember (an apply answered 404/409: the next read asks)."""
        with self._lock:
            self._objects.pop((kind, namespace, name), None)

    # -- reading ---------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Body | None:
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def pods(self, namespace: str, owner: str) -> list[Body]:
        with self._lock:
            return list((self._pods.get((namespace, owner)) or {}).values())

    def all_of(self, kind: str) -> list[Body]:
        """Every cached object of `kind` (a snapshot; pods: all owned pods)."""
        with self._lock:
            if kind == POD:
                return [p for pods in self._pods.values() for p in pods.values()]
            return [b for (k, _, _), b in self._objects.items() if k == kind]

    def model_deployments(self) -> list[Body]:
        return self.all_of(KIND)

    def labelled(self, kind: str, namespace: str, owner: str) -> list[Body]:
        """The cached objects of `kind` in `namespace` carrying the owner label `owner`."""
        with self._lock:
            return [
                b
                for (k, ns, _), b in self._objects.items()
                if k == kind
                and ns == namespace
                and ((b.get("metadata") or {}).get("labels") or {}).get(OWNER_LABEL) == owner
            ]

    def sizes(self) -> dict[str, int]:
        """Objects held per kind (the operator's metrics report them)."""
        with self._lock:
            counts: dict[str, int] = {POD: sum(len(p) for p in self._pods.values())}
            for k, _, _ in self._objects:
                counts[k] = counts.get(k, 0) + 1
            return counts

    # -- audit -----------------------------------------------------------------------

    def audit(self, kind: str, listed: Iterable[Body], list_version: int | None) -> int:
        """Compare the cache's view of `kind` with a fresh LIST (taken at `list_version`):
        objects the LIST lacks although the cache holds them from before it are gone (a
        missed deletion) and dropped; listed objects are observed (the newer version
        wins). Returns how many objects differed."""
        fresh: dict[CacheKey, Body] = {}
        for body in listed:
            meta = body.get("metadata") or {}
            fresh[(kind, str(meta.get("namespace")), str(meta.get("name")))] = body
        differences = 0
        with self._lock:
            if kind == POD:
                held = {
                    (POD, ns, name): (owner, body)
                    for (ns, owner), pods in self._pods.items()
                    for name, body in pods.items()
                }
            else:
                held = {k: ("", b) for k, b in self._objects.items() if k[0] == kind}
            for key, (_owner, body) in held.items():
                if key in fresh:
                    continue
                version = resource_version(body)
                if list_version is not None and version is not None and version > list_version:
                    continue  # created after the LIST was taken
                differences += 1
                if kind == POD:
                    self._drop_pod(key[1], key[2])
                else:
                    self._objects.pop(key, None)
            differences += len(fresh.keys() - held.keys())
        for body in fresh.values():
            self.observe(kind, body)
        return differences


def _uid(body: Body) -> str | None:
    uid = (body.get("metadata") or {}).get("uid")
    return str(uid) if uid else None


def owner_uids(body: Body) -> set[str]:
    return {str(r.get("uid")) for r in (body.get("metadata") or {}).get("ownerReferences") or []}


def owner_text(body: Body) -> str:
    """Who owns `body`, for a message: `ConfigMap/x`, or that nothing does."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    if not refs:
        return "has no owner reference"
    return "is owned by " + ", ".join(
        f"{r.get('kind')}/{r.get('name')} (uid {str(r.get('uid'))[:8]})" for r in refs
    )


Getter = Callable[[str, str, str, str], "Body | None"]


# Kinds whose every labelled object the watches deliver: a miss means we own none.
WATCHED = frozenset(kind for _g, _v, _p, kind in CHILD_KINDS)


@dataclass
class Reader:
    """Reads for one pass, from the cache. A miss of a watched kind means no object of
    ours has that name; an object of someone else's may (the watches select by our
    label), which the create then finds (409 AlreadyExists) and `existing` reads. One GET
    is made for a kind nobody watches that we have not written."""

    cache: ObjectCache
    get: Getter  # (apiVersion, kind, namespace, name) -> body or None (404)

    def model_deployment(self, namespace: str, name: str) -> Body | None:
        return self.cache.get(KIND, namespace, name)

    def child(
        self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str
    ) -> Body | None:
        held = self.cache.get(kind, namespace, name)
        if held is not None or kind in WATCHED:
            return held
        return self.existing(api_version, kind, namespace, name, owner_uid)

    def existing(
        self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str
    ) -> Body | None:
        """The object of that name as the API server has it now (None: there is none)."""
        found = self.get(api_version, kind, namespace, name)
        # Someone else's object is not kept: nothing would tell the cache it changed.
        if found is not None and owner_uid in owner_uids(found):
            self.cache.observe(kind, found)
        return found

    def refresh(self, api_version: str, kind: str, namespace: str, name: str) -> Body | None:
        """A write found the cached version stale (409): read the object again."""
        found = self.get(api_version, kind, namespace, name)
        if found is None:
            self.cache.drop(kind, namespace, name)
        else:
            self.cache.observe(kind, found)
        return found

    def pods(self, namespace: str, owner: str) -> list[Body]:
        return self.cache.pods(namespace, owner)
