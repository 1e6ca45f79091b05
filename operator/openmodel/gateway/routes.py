"""The routing table: which ModelDeployment (or ExternalModel) serves a `model`, and its
routable pods. Pure.

Fed with ModelDeployment, ExternalModel and Pod objects (from watches, or a static file);
answers lookups without I/O. A name is a ModelDeployment's served model name, one of its
adapters' names, or an ExternalModel's served name: one namespace of names. Two objects
claiming the same name: every claimant is kept, oldest first (creation time, then
namespace/name, whatever their kind), and the conflict is reported, never a coin toss;
the gateway routes to the first the caller may use (gateway/auth/).

A pod is routable while it is Ready, has an IP and is not being deleted. A pod that
is leaving keeps its requests in flight (the proxy never cuts them) but gets no new ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openmodel.api import OWNER_LABEL, PLURAL, Overflow, SpecError
from openmodel.engines import engine_for, parse_model_deployment
from openmodel.engines.base import served_model_name
from openmodel.external_model import PLURAL as EXTERNAL_PLURAL
from openmodel.external_model import ExternalModel, parse_external_model
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
    # spec.gateway.overflow, only once the operator said it is allowed for this very
    # generation (its `Overflow` condition True, observedGeneration current): fail closed.
    overflow: Overflow | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """What a `model` resolves to: the backend, and whether the name is an adapter; for
    an ExternalModel, `external` (its backend then only carries its key, name, task and
    age: it has no pods)."""

    backend: Backend
    adapter: str | None = None
    external: ExternalModel | None = None

    @property
    def resource(self) -> str:
        """The plural the `use` check asks about (group openmodel.dev)."""
        return EXTERNAL_PLURAL if self.external is not None else PLURAL


OVERFLOW_CONDITION = "Overflow"


def allowed_overflow(body: Mapping[str, Any], overflow: Overflow | None) -> Overflow | None:
    """`overflow` when the ModelDeployment's `Overflow` condition says True for its
    current generation; None otherwise (not set, refused, or not judged yet)."""
    if overflow is None:
        return None
    generation = (body.get("metadata") or {}).get("generation")
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == OVERFLOW_CONDITION:
            current = generation is not None and c.get("observedGeneration") == generation
            return overflow if c.get("status") == "True" and current else None
    return None


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
        overflow=allowed_overflow(body, md.spec.overflow),
    )


def external_route_from(body: Mapping[str, Any]) -> Route | None:
    """An ExternalModel object -> its Route; None for one being deleted or invalid (the
    gateway parses for itself, not trusting anyone's status)."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    try:
        external = parse_external_model(body)
    except SpecError:
        return None
    backend = Backend(
        key=(external.namespace, external.name),
        served_name=external.served_name,
        adapters=frozenset(),
        engine="",
        port=0,
        created=str(meta.get("creationTimestamp") or ""),
        task=external.task,
    )
    return Route(backend=backend, external=external)


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
    externals: dict[ObjectKey, Route] = field(default_factory=dict)
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

    def put_external_model(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        route = external_route_from(body)
        if route is None:
            self.externals.pop(key, None)
        else:
            self.externals[key] = route
        self._rebuild()

    def delete_external_model(self, namespace: str, name: str) -> None:
        self.externals.pop((namespace, name), None)
        self._rebuild()

    def replace_external_models(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        self.externals = {}
        for body in bodies:
            route = external_route_from(body)
            if route is not None:
                self.externals[route.backend.key] = route
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
        claims: dict[str, list[Route]] = {}
        for backend in self.backends.values():
            claims.setdefault(backend.served_name, []).append(Route(backend=backend))
            for adapter in backend.adapters:
                claims.setdefault(adapter, []).append(Route(backend=backend, adapter=adapter))
        for external in self.externals.values():
            claims.setdefault(external.backend.served_name, []).append(external)
        names: dict[str, Route] = {}
        routes: dict[str, list[Route]] = {}
        conflicts: dict[str, list[ObjectKey]] = {}
        for name, owners in claims.items():
            # The kind breaks a tie of equal age and key (a ModelDeployment first).
            owners.sort(key=lambda r: (r.backend.created, r.backend.key, r.resource != PLURAL))
            routes[name] = owners
            names[name] = owners[0]
            if len(owners) > 1:
                conflicts[name] = [o.backend.key for o in owners]
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

    def external_routes(self, name: str) -> list[Route]:
        """The ExternalModels claiming `name`, oldest first (an overflow's targets)."""
        return [r for r in self.claims.get(name, []) if r.external is not None]

    def model_names(self) -> list[tuple[str, Route]]:
        return sorted(self.names.items())

    def model_claims(self) -> list[tuple[str, list[Route]]]:
        return sorted(self.claims.items())
