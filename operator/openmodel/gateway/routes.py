"""The routing table: which ModelDeployment serves a `model`, and its routable pods. Pure.

Fed with ModelDeployment and Pod objects (from watches, or a static file); answers
lookups without I/O. A name is a ModelDeployment's served model name or one of its
adapters' names. Two ModelDeployments claiming the same name: every claimant is kept,
oldest first (creation time, then namespace/name), and the conflict is reported, never a
coin toss; the gateway routes to the first the caller may use (gateway/auth/).

A pod is routable while it is Ready, has an IP and is not being deleted. A pod that
is leaving keeps its requests in flight (the proxy never cuts them) but gets no new ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openmodel.api import OWNER_LABEL, SpecError
from openmodel.engines import engine_for, parse_model_deployment
from openmodel.engines.base import served_model_name
from openmodel.gateway.tasks import GENERATE, task_of

ObjectKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Endpoint:
    pod: str
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Backend:
    """One ModelDeployment as the gateway sees it."""

    key: ObjectKey
    served_name: str
    adapters: frozenset[str]
    engine: str
    port: int
    created: str = ""
    # spec.gateway.balancing.policy; None: the platform's gateway.balancing.policy.
    balancing_policy: str | None = None
    task: str = GENERATE  # gateway/tasks.py: which paths it serves


@dataclass(frozen=True, slots=True)
class Route:
    """What a `model` resolves to: the backend, and whether the name is an adapter."""

    backend: Backend
    adapter: str | None = None


def backend_from(body: Mapping[str, Any]) -> Backend | None:
    """A ModelDeployment object -> its Backend; None for one the operator refuses."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    try:
        md = parse_model_deployment(body)
        engine = engine_for(md.spec.engine)
    except (SpecError, KeyError, ValueError):
        return None
    return Backend(
        key=(meta["namespace"], meta["name"]),
        served_name=served_model_name(md.spec),
        adapters=frozenset(a.name for a in md.spec.adapters),
        engine=md.spec.engine,
        port=engine.port,
        created=str(meta.get("creationTimestamp") or ""),
        balancing_policy=md.spec.balancing_policy,
        task=task_of(body),
    )


def endpoint_from(pod: Mapping[str, Any], port: int) -> Endpoint | None:
    """A Pod object -> an Endpoint when it may take new requests, else None."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    ip = status.get("podIP")
    if not (ready and ip):
        return None
    return Endpoint(pod=meta["name"], host=ip, port=port)


@dataclass
class RouteTable:
    backends: dict[ObjectKey, Backend] = field(default_factory=dict)
    # ModelDeployment -> pod name -> the Pod object as last seen (ready or not).
    pods: dict[ObjectKey, dict[str, Mapping[str, Any]]] = field(default_factory=dict)
    names: dict[str, Route] = field(default_factory=dict)
    # Every ModelDeployment claiming a name, oldest first (names[n] is claims[n][0]).
    claims: dict[str, list[Route]] = field(default_factory=dict)
    conflicts: dict[str, list[ObjectKey]] = field(default_factory=dict)
    version: int = 0  # bumped on every change that can affect routing
    # endpoints(key) as of `_endpoints_version`: asked on every request, changed rarely.
    _endpoints: dict[ObjectKey, list[Endpoint]] = field(default_factory=dict)
    _endpoints_version: int = -1

    # --- updates ---

    def put_model_deployment(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        backend = backend_from(body)
        if backend is None:
            self.backends.pop(key, None)
        else:
            self.backends[key] = backend
        self._rebuild()

    def delete_model_deployment(self, namespace: str, name: str) -> None:
        self.backends.pop((namespace, name), None)
        self.pods.pop((namespace, name), None)
        self._rebuild()

    def put_pod(self, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(OWNER_LABEL)
        if not owner:
            return
        self.pods.setdefault((meta["namespace"], owner), {})[meta["name"]] = pod
        self.version += 1

    def delete_pod(self, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(OWNER_LABEL)
        if owner:
            self.pods.get((meta["namespace"], owner), {}).pop(meta["name"], None)
            self.version += 1

    def replace_model_deployments(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        """A fresh list (after a watch restart): what is not listed is gone."""
        self.backends = {}
        for body in bodies:
            backend = backend_from(body)
            if backend is not None:
                self.backends[backend.key] = backend
        self._rebuild()

    def replace_pods(self, pods: Iterable[Mapping[str, Any]]) -> None:
        self.pods = {}
        for pod in pods:
            self.put_pod(pod)
        self.version += 1

    def put_backend(self, backend: Backend, pods: Iterable[Mapping[str, Any]] = ()) -> None:
        """A backend that comes from elsewhere than a ModelDeployment (a static file)."""
        self.backends[backend.key] = backend
        self.pods[backend.key] = {p["metadata"]["name"]: p for p in pods}
        self._rebuild()

    def _rebuild(self) -> None:
        claims: dict[str, list[tuple[Backend, str | None]]] = {}
        for backend in self.backends.values():
            claims.setdefault(backend.served_name, []).append((backend, None))
            for adapter in backend.adapters:
                claims.setdefault(adapter, []).append((backend, adapter))
        names: dict[str, Route] = {}
        routes: dict[str, list[Route]] = {}
        conflicts: dict[str, list[ObjectKey]] = {}
        for name, owners in claims.items():
            owners.sort(key=lambda o: (o[0].created, o[0].key))
            routes[name] = [Route(backend=b, adapter=a) for b, a in owners]
            names[name] = routes[name][0]
            if len(owners) > 1:
                conflicts[name] = [o[0].key for o in owners]
        self.names, self.claims, self.conflicts = names, routes, conflicts
        self.version += 1

    # --- lookups ---

    def route(self, model: str) -> Route | None:
        return self.names.get(model)

    def routes(self, model: str) -> list[Route]:
        """Every ModelDeployment claiming `model`, oldest first; [] for an unknown name."""
        return self.claims.get(model, [])

    def endpoints(self, key: ObjectKey) -> list[Endpoint]:
        """The routable pods of `key`, by name. Shared until the table changes: callers
        must not modify the list."""
        if self._endpoints_version != self.version:
            self._endpoints = {}
            self._endpoints_version = self.version
        found = self._endpoints.get(key)
        if found is None:
            found = self._endpoints[key] = self._routable(key)
        return found

    def _routable(self, key: ObjectKey) -> list[Endpoint]:
        backend = self.backends.get(key)
        if backend is None:
            return []
        found = (endpoint_from(p, backend.port) for p in self.pods.get(key, {}).values())
        return sorted((e for e in found if e is not None), key=lambda e: e.pod)

    def model_names(self) -> list[tuple[str, Route]]:
        return sorted(self.names.items())

    def model_claims(self) -> list[tuple[str, list[Route]]]:
        return sorted(self.claims.items())
