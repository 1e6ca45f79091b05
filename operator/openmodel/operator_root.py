"""The operator's composition root: its parts, typed, in one object (`Operator`).

`main.py`'s startup builds the parts that talk to the API server and hold the Lease
(the cache, the reconciler, the autoscaler and adapter loops), then `build_operator`
adds the controller runtime around them (`controller/`: the queue, the per-object
memory) and the model resolver, and `Operator.start` starts the background tasks.
kopf's `memo` holds this one object; the handlers in `main.py` call its methods, which
say what an event means: feed the cache, skip the echo of our own write, add a key to
the queue, or forget a deleted ModelDeployment.

How a pass is entered: only through `queue.add`, by `model_deployment_event` (SPEC),
`child_event` (CHILD), the resync, the cache audit and an election (`queue_all`, SWEEP),
the model resolver's answers (`ask_pass`, SPEC line, asked by the resolver), and the
queue's own retries after a failed pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from openmodel import telemetry
from openmodel.adapters.loop import AdapterLoop
from openmodel.api import GROUP, KIND, LWS_KIND, OWNER_LABEL
from openmodel.autoscaler.loop import AutoscalerLoop
from openmodel.config import PlatformConfig
from openmodel.controller.memory import ObjectMemory
from openmodel.controller.queue import Asker, Key, Line, PassQueue
from openmodel.controller.workers import work_forever
from openmodel.external_model import KIND as EXTERNAL_MODEL_KIND
from openmodel.external_models.loop import ExternalModelLoop
from openmodel.kube.cache import ObjectCache
from openmodel.map_sizes import track_operator_maps
from openmodel.model_resolver.hub import HubClient
from openmodel.model_resolver.loop import ResolverLoop
from openmodel.reconcile.reconciler import Reconciler
from openmodel.reconcile.resync import audit_forever, queue_all, resync_forever

Body = Mapping[str, Any]


@dataclass
class Operator:
    config: PlatformConfig
    cache: ObjectCache
    reconciler: Reconciler
    autoscaler: AutoscalerLoop
    adapters: AdapterLoop
    queue: PassQueue
    memory: ObjectMemory
    resolver: ResolverLoop | None = None
    external_models: ExternalModelLoop | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # The ExternalModels the watch has shown: while there are none, a ModelDeployment's
    # event wakes no ExternalModel cycle.
    _external_keys: set[Key] = field(default_factory=set)

    # -- what kopf's handlers call (on its event loop, as the queue wants) ---------------

    def observe(self, kind: str, body: Body) -> None:
        """A watch event, before any handler runs: into the cache."""
        self.cache.observe(kind, body)

    def model_deployment_event(self, event_type: str | None, body: Body) -> None:
        key = _key(body)
        if event_type == "DELETED":
            self.cache.forget(KIND, body)
            # Children go with their owner reference; what we remember is all that is left.
            self.memory.forget(key)
            return
        if self.reconciler.own_writes.is_echo(KIND, *key, _version(body)):
            return
        # The index put this body in the cache; the pass reads the newest one from there.
        self.queue.add(key, Line.SPEC)
        if self._external_keys and self.external_models is not None:
            self.external_models.kick()  # its served name may clash with one of theirs

    def external_model_event(self, event_type: str | None, body: Body) -> None:
        """An ExternalModel changed: its verdict and the gateway's egress policy are
        decided again, and every ModelDeployment with overflow is passed (the name it
        overflows to may have appeared, gone or moved)."""
        key = _key(body)
        loop = self.external_models
        if event_type == "DELETED":
            self.cache.forget(EXTERNAL_MODEL_KIND, body)
            self._external_keys.discard(key)
            if loop is not None:
                loop.forget(key)
        else:
            self._external_keys.add(key)
            if loop is not None and loop.is_echo(body):
                return  # our own status write
        if loop is not None:
            loop.kick()
        for md in self.cache.model_deployments():
            gateway = (md.get("spec") or {}).get("gateway")
            if isinstance(gateway, Mapping) and gateway.get("overflow") is not None:
                self.queue.add(_key(md), Line.SPEC)

    def namespace_gone(self, namespace: str) -> None:
        """The namespace is being deleted: what the cache holds of it goes with it, and
        every ModelDeployment in it is forgotten as if its DELETED event had come."""
        for key in self.cache.drop_namespace(namespace):
            self.memory.forget(key)
        gone = {key for key in self._external_keys if key[0] == namespace}
        if gone:
            self._external_keys -= gone
            if self.external_models is not None:
                self.external_models.kick()

    def child_event(self, kind: str, event_type: str | None, body: Body) -> None:
        """A child changed: queue the ModelDeployment named by its owner label."""
        namespace, name = _key(body)
        if event_type == "DELETED":
            self.cache.forget(kind, body)
            self.reconciler.own_writes.forget(kind, namespace, name)
        owner = owner_name(body)
        if owner is None:
            return  # not a ModelDeployment's (the watches select by the owner label)
        if self.reconciler.own_writes.is_echo(kind, namespace, name, _version(body)):
            return
        self.queue.add((namespace, owner), Line.CHILD)

    def sweep(self) -> None:
        """Queue every served ModelDeployment (elected: another replica decided until now)."""
        queue_all(self.reconciler, self.queue)

    def ended_tasks(self) -> list[str]:
        return [t.get_name() for t in self.tasks if t.done()]

    # -- the passes ------------------------------------------------------------------------

    def run_pass(self, key: Key) -> str:
        """One pass (in a worker's thread); its result as telemetry counts it."""
        result = self.reconciler.reconcile_by_name(*key)
        return "rejected" if result is not None and result.problem is not None else "ok"

    def ask_pass_for_resolved(self, key: Key) -> None:
        """The model resolver answered what `key`'s pass waited for."""
        self.queue.add(key, Line.SPEC, Asker.RESOLVER)

    # -- the background tasks --------------------------------------------------------------

    def start(self, others: Mapping[str, Coroutine[Any, Any, None]] | None = None) -> None:
        """Serve the metrics, start the workers, the loops and `others` (more background
        tasks by name, watched by the liveness probe alike), on the running event loop."""
        port = telemetry.metrics_port()
        if port is not None:
            telemetry.start_metrics_server(port)
        track_operator_maps(self.reconciler, self.autoscaler, self.adapters, self.cache, self.queue)
        workers = self.config.operator.workers
        threads = ThreadPoolExecutor(workers, thread_name_prefix="reconcile")
        loops = {
            **{
                f"reconcile-worker-{i}": work_forever(self.queue, self.run_pass, threads)
                for i in range(workers)
            },
            "resync": resync_forever(self.reconciler, self.queue),
            "autoscaler": self.autoscaler.run_forever(),
            "adapters": self.adapters.run_forever(),
            **(others or {}),
        }
        audit_seconds = self.config.operator.cache_audit_seconds
        if audit_seconds > 0:
            loops["cache-audit"] = audit_forever(self.reconciler, self.queue, audit_seconds)
        if self.resolver is not None:
            loops["model-resolver"] = self.resolver.run_forever()
        if self.external_models is not None:
            loops["external-models"] = self.external_models.run_forever()
        self.tasks = [asyncio.create_task(run, name=name) for name, run in loops.items()]

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()


def build_operator(
    config: PlatformConfig,
    cache: ObjectCache,
    reconciler: Reconciler,
    autoscaler: AutoscalerLoop,
    adapters: AdapterLoop,
) -> Operator:
    """The runtime around the parts: the queue, the per-object memory (with everything
    kept per ModelDeployment registered), the model resolver."""
    queue = PassQueue()
    memory = ObjectMemory()
    operator = Operator(config, cache, reconciler, autoscaler, adapters, queue, memory)
    memory.register("queue", queue.forget)
    memory.register("reconciler.own_writes", lambda key: reconciler.own_writes.forget(KIND, *key))
    memory.register("telemetry", lambda key: telemetry.forget(*key))
    # LeaderWorkerSets are kept from our own writes only (not watched): none is left
    # behind by a deleted ModelDeployment (the group is named like it).
    memory.register("cache.leaderworkersets", lambda key: cache.drop(LWS_KIND, *key))
    store = reconciler.model_configs
    if store is not None:
        memory.register("model_configs.waiters", store.forget_waiter)
        hub_endpoint = config.model_resolver.effective_endpoint()
        if hub_endpoint:
            hub = HubClient(hub_endpoint, config.model_resolver)
            operator.resolver = ResolverLoop(store, hub, operator.ask_pass_for_resolved)
    return operator


def owner_name(body: Body) -> str | None:
    """The ModelDeployment a child belongs to: its owner label, else its owner reference."""
    meta = body.get("metadata") or {}
    label = (meta.get("labels") or {}).get(OWNER_LABEL)
    if label:
        return str(label)
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(GROUP + "/"):
            return str(ref.get("name"))
    return None


def _key(body: Body) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace")), str(meta.get("name"))


def _version(body: Body) -> str | None:
    version = (body.get("metadata") or {}).get("resourceVersion")
    return None if version is None else str(version)
