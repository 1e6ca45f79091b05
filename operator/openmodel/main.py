"""The kopf entry module: wires Kubernetes events to the domain code, nothing else.

Every ModelDeployment event, and every event of a Deployment, Service, claim or Pod it
owns, queues that ModelDeployment for the same level-based pass (`Reconciler`), which
workers run (`reconcile/work_queue.py`): the handlers return at once, so kopf keeps no
backlog of events. Handlers are `kopf.on.event` only: kopf then stores no progress on
the object, adds no finalizer, and a converged cluster sees no writes. Index
functions feed every watch event into the object cache (`kube/cache.py`) before the
handlers run (kopf starts no handler until each watched kind's first listing is
indexed), so passes, the resync and the loops read no object from the API. A resync
loop walks the cache and repairs what an event-time error left behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from openmodel import telemetry
from openmodel.adapters.loop import AdapterLoop
from openmodel.api import GROUP, KIND, OWNER_LABEL, PLURAL, VERSION
from openmodel.autoscaler.loop import AutoscalerLoop
from openmodel.config import load_config
from openmodel.kube import calls as kube
from openmodel.kube import diagnostics
from openmodel.kube.cache import CHILD_KINDS, ObjectCache
from openmodel.kube.kopf_tuning import NoDiffBase
from openmodel.kube.leader import leader_elector
from openmodel.kube.leadership import Leadership
from openmodel.map_sizes import track_operator_maps
from openmodel.model_resolver.hub import HubClient
from openmodel.model_resolver.loop import ResolverLoop
from openmodel.model_resolver.store import ModelConfigStore
from openmodel.reconcile.reconciler import Reconciler, ReconcileResult
from openmodel.reconcile.resync import audit_forever, queue_all, resync_forever
from openmodel.reconcile.retry import RetryQueue, retry_forever
from openmodel.reconcile.work_queue import Line, WorkQueue, work_forever

log = logging.getLogger(__name__)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = load_config()
    diagnostics.install(asyncio.get_running_loop())
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.posting.level = logging.WARNING
    # Event handlers and indexes only: kopf's per-event diff base would be unused work.
    settings.persistence.diffbase_storage = NoDiffBase()
    # Server-side selection: kopf sees only the children, not every Pod of the cluster;
    # an object whose owner label goes away arrives as DELETED (the API's watch rule).
    for group, version, plural, _kind in CHILD_KINDS:
        settings.watching.label_selectors[group, version, plural] = OWNER_LABEL
    kube.limit_rate(config.operator.api_qps, config.operator.api_burst)
    # One Lease renewer apart from every loop (its own client and thread); every write
    # of `api` asks it first.
    leadership = Leadership(leader_elector(kube.make_api_client(pool_size=1, retries=False)))
    # The workers, and the threads of the loops beside them (autoscaler, adapters, audit).
    api = kube.make_api_client(
        pool_size=config.operator.workers + 4, write_guard=leadership.write_window
    )
    memo.config = config
    hub_endpoint = config.model_resolver.effective_endpoint()
    model_configs = ModelConfigStore(config.model_resolver) if hub_endpoint else None
    memo.cache = ObjectCache()
    memo.retries = RetryQueue()
    autoscaler = AutoscalerLoop(api, config, leadership=leadership, cache=memo.cache)
    memo.reconciler = Reconciler(
        api,
        config,
        model_configs=model_configs,
        cache=memo.cache,
        is_leader=leadership.is_leader,
    )
    # Handlers queue keys; these workers run the passes (reconcile/work_queue.py).
    memo.work = WorkQueue()

    # Elected: another replica decided until now.
    leadership.when_elected(autoscaler.start_afresh)
    leadership.when_elected(lambda: queue_all(memo.reconciler, memo.work))
    port = telemetry.metrics_port()
    if port is not None:
        telemetry.start_metrics_server(port)
    adapters = AdapterLoop(
        api,
        config,
        leadership=leadership,
        cache=memo.cache,
    )
    track_operator_maps(memo.reconciler, autoscaler, adapters, memo.cache)
    threads = ThreadPoolExecutor(config.operator.workers, thread_name_prefix="reconcile")
    memo.tasks = [
        *(
            asyncio.create_task(
                work_forever(memo.work, lambda ns, n, swept: _timed(memo, (ns, n), swept), threads),
                name=f"reconcile-worker-{i}",
            )
            for i in range(config.operator.workers)
        ),
        asyncio.create_task(resync_forever(memo.reconciler, memo.work), name="resync"),
        asyncio.create_task(
            retry_forever(memo.retries, memo.reconciler.reconcile_by_name), name="retries"
        ),
        asyncio.create_task(autoscaler.run_forever(), name="autoscaler"),
        asyncio.create_task(adapters.run_forever(), name="adapters"),
    ]
    if leadership.elector is not None:
        memo.tasks.append(asyncio.create_task(leadership.run_forever(), name="leadership"))
    if config.operator.cache_audit_seconds > 0:
        memo.tasks.append(
            asyncio.create_task(
                audit_forever(memo.reconciler, memo.work, config.operator.cache_audit_seconds),
                name="cache-audit",
            )
        )
    if model_configs is not None and hub_endpoint:
        resolver = ResolverLoop(
            model_configs,
            HubClient(hub_endpoint, config.model_resolver),
            memo.reconciler.reconcile_by_name,
        )
        memo.tasks.append(asyncio.create_task(resolver.run_forever(), name="model-resolver"))


@kopf.on.probe(id="background-loops")
def background_loops_alive(memo: kopf.Memo, **_: Any) -> str:
    """Liveness: the resync, autoscaler and adapter loops must be running. A loop that ended
    (it should never) fails the probe, so the kubelet restarts the operator."""
    dead = [t.get_name() for t in getattr(memo, "tasks", []) if t.done()]
    if dead:
        raise kopf.PermanentError(f"background loops ended: {', '.join(dead)}")
    return "ok"


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in getattr(memo, "tasks", []):
        task.cancel()


# -- the cache: fed at indexing time, before any handler of any kind runs ---------------


def _feed(kind: str) -> Callable[..., Any]:
    async def index(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        memo.cache.observe(kind, body)
        return None  # nothing for kopf to keep: the cache is ours

    index.__name__ = f"cache_{kind.lower()}"
    return index


kopf.index(GROUP, VERSION, PLURAL, id="cache-modeldeployments")(_feed(KIND))
for _group, _version, _plural, _kind in CHILD_KINDS:
    kopf.index(
        _group, _version, _plural, labels={OWNER_LABEL: kopf.PRESENT}, id=f"cache-{_plural}"
    )(_feed(_kind))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_deployment_event(
    type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    if type == "DELETED":
        memo.cache.forget(KIND, body)
        # Children go with their owner reference; only local state is left to drop.
        memo.reconciler.locks.forget((namespace, name))
        memo.retries.forget((namespace, name))
        memo.reconciler.own_writes.forget(KIND, namespace, name)
        if memo.reconciler.model_configs is not None:
            memo.reconciler.model_configs.forget_waiter((namespace, name))
        telemetry.forget(namespace, name)
        return
    if memo.reconciler.own_writes.is_echo(
        KIND, namespace, name, body.metadata.get("resourceVersion")
    ):
        return
    # The index put this body in the cache; the pass reads the newest one from there.
    memo.work.add((namespace, name))


def _timed(memo: kopf.Memo, key: tuple[str, str], swept: bool) -> ReconcileResult | None:
    """Run one reconcile pass, counting it in the operator's metrics (swept: the resync
    asked for it, not an event); a pass that fails is due again after a back-off
    (`RetryQueue`)."""
    started = time.monotonic()
    try:
        reconciler: Reconciler = memo.reconciler
        result = reconciler.reconcile_by_name(*key)
    except Exception:
        telemetry.record_reconcile("error", time.monotonic() - started, swept=swept)
        memo.retries.failed(key)
        raise
    memo.retries.succeeded(key)
    outcome = "rejected" if result is not None and result.problem is not None else "ok"
    telemetry.record_reconcile(outcome, time.monotonic() - started, swept=swept)
    return result


def _child_handler(kind: str) -> Callable[..., Any]:
    async def child_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """A child changed: queue the ModelDeployment named by its owner label."""
        if type == "DELETED":
            memo.cache.forget(kind, body)
            memo.reconciler.own_writes.forget(
                kind, str(body.metadata.namespace), str(body.metadata.name)
            )
        namespace, owner = str(body.metadata.namespace), owner_name(body)
        if owner is None:
            return  # not a ModelDeployment's (the watches select by the owner label)
        version = body.metadata.get("resourceVersion")
        if memo.reconciler.own_writes.is_echo(kind, namespace, str(body.metadata.name), version):
            return
        memo.work.add((namespace, owner), Line.CHILD)

    child_event.__name__ = f"{kind.lower()}_event"
    return child_event


# No client-side label filter here: the watches select by the owner label server-side
# (startup), and a child whose label is removed by hand arrives as DELETED without it:
# the cache must forget it and its ModelDeployment put the label back.
for _group, _version, _plural, _kind in CHILD_KINDS:
    kopf.on.event(_group, _version, _plural, id=_plural)(_child_handler(_kind))


def owner_name(body: Mapping[str, Any]) -> str | None:
    """The ModelDeployment a child belongs to: its owner label, else its owner reference."""
    meta = body.get("metadata") or {}
    label = (meta.get("labels") or {}).get(OWNER_LABEL)
    if label:
        return str(label)
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(GROUP + "/"):
            return str(ref.get("name"))
    return None
