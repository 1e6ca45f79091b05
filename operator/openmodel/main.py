"""The kopf entry module: wires Kubernetes events to the operator, nothing else.

Every ModelDeployment event, and every event of a Deployment, Service, claim or Pod it
owns, adds that ModelDeployment to the operator's queue for the same level-based pass
(`Reconciler`), which its workers run (`controller/`): the handlers return at once, so
kopf keeps no backlog of events. Handlers are `kopf.on.event` only: kopf then stores no
progress on the object, adds no finalizer, and a converged cluster sees no writes.
Index functions feed every watch event into the object cache (`kube/cache.py`) before
the handlers run (kopf starts no handler until each watched kind's first listing is
indexed), so passes, the resync and the loops read no object from the API. A resync
loop walks the cache and repairs what an event-time error left behind.

`startup` builds the parts and the typed composition root (`operator_root.Operator`),
the one thing kopf's `memo` holds; every handler below hands its event to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import kopf

from openmodel.adapters.loop import AdapterLoop
from openmodel.api import GROUP, KIND, OWNER_LABEL, PLURAL, VERSION
from openmodel.autoscaler.loop import AutoscalerLoop
from openmodel.config import load_config
from openmodel.external_model import KIND as EXTERNAL_MODEL_KIND
from openmodel.external_model import PLURAL as EXTERNAL_MODEL_PLURAL
from openmodel.external_models.loop import ExternalModelLoop
from openmodel.kube import calls as kube
from openmodel.kube import diagnostics
from openmodel.kube.cache import CHILD_KINDS, ObjectCache
from openmodel.kube.kopf_tuning import NoDiffBase
from openmodel.kube.leader import leader_elector
from openmodel.kube.leadership import Leadership
from openmodel.metering.loop import MeteringLoop
from openmodel.model_resolver.store import ModelConfigStore
from openmodel.namespaces import patterns_from_env
from openmodel.operator_root import Operator, build_operator
from openmodel.reconcile.reconciler import Reconciler
from openmodel.reconcile.resync import resync_seconds


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
    hub_endpoint = config.model_resolver.effective_endpoint()
    model_configs = ModelConfigStore(config.model_resolver) if hub_endpoint else None
    cache = ObjectCache()
    autoscaler = AutoscalerLoop(api, config, leadership=leadership, cache=cache)
    reconciler = Reconciler(
        api,
        config,
        model_configs=model_configs,
        cache=cache,
        is_leader=leadership.is_leader,
    )
    adapters = AdapterLoop(api, config, leadership=leadership, cache=cache)
    operator = build_operator(config, cache, reconciler, autoscaler, adapters)
    operator.external_models = ExternalModelLoop(
        api, config, cache, leadership=leadership, recheck_seconds=resync_seconds()
    )
    leadership.when_elected(operator.external_models.kick)
    # Elected: another replica decided until now.
    leadership.when_elected(autoscaler.start_afresh)
    leadership.when_elected(operator.sweep)
    metering = MeteringLoop(api, config, leadership=leadership, cache=cache)
    operator.memory.register("metering", metering.forget)
    others = {"metering": metering.run_forever()}
    if leadership.elector is not None:
        others["leadership"] = leadership.run_forever()
    operator.start(others)
    memo.operator = operator


def _operator(memo: kopf.Memo) -> Operator:
    operator: Operator = memo.operator
    return operator


@kopf.on.probe(id="background-loops")
def background_loops_alive(memo: kopf.Memo, **_: Any) -> str:
    """Liveness: the workers and the resync, autoscaler and adapter loops must be running.
    A task that ended (it should never) fails the probe, so the kubelet restarts the
    operator."""
    operator: Operator | None = getattr(memo, "operator", None)
    dead = [] if operator is None else operator.ended_tasks()
    if dead:
        raise kopf.PermanentError(f"background loops ended: {', '.join(dead)}")
    return "ok"


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    operator: Operator | None = getattr(memo, "operator", None)
    if operator is not None:
        operator.stop()


# -- the cache: fed at indexing time, before any handler of any kind runs ---------------


def _feed(kind: str) -> Callable[..., Any]:
    async def index(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _operator(memo).observe(kind, body)
        return None  # nothing for kopf to keep: the cache is ours

    index.__name__ = f"cache_{kind.lower()}"
    return index


kopf.index(GROUP, VERSION, PLURAL, id="cache-modeldeployments")(_feed(KIND))
kopf.index(GROUP, VERSION, EXTERNAL_MODEL_PLURAL, id="cache-externalmodels")(
    _feed(EXTERNAL_MODEL_KIND)
)
for _group, _version, _plural, _kind in CHILD_KINDS:
    kopf.index(
        _group, _version, _plural, labels={OWNER_LABEL: kopf.PRESENT}, id=f"cache-{_plural}"
    )(_feed(_kind))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_deployment_event(
    type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    _operator(memo).model_deployment_event(type, body)


@kopf.on.event(GROUP, VERSION, EXTERNAL_MODEL_PLURAL)
async def external_model_event(
    type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    _operator(memo).external_model_event(type, body)


def _child_handler(kind: str) -> Callable[..., Any]:
    async def child_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _operator(memo).child_event(kind, type, body)

    child_event.__name__ = f"{kind.lower()}_event"
    return child_event


# No client-side label filter here: the watches select by the owner label server-side
# (startup), and a child whose label is removed by hand arrives as DELETED without it:
# the cache must forget it and its ModelDeployment put the label back.
for _group, _version, _plural, _kind in CHILD_KINDS:
    kopf.on.event(_group, _version, _plural, id=_plural)(_child_handler(_kind))


# Watching by namespace patterns, kopf stops a namespace's watch as soon as the namespace
# is marked for deletion, so the DELETED events of what it held never come (kopf #900):
# the namespace's own event is the last word on them. Cluster-wide, the events come.
if patterns_from_env():

    @kopf.on.event("", "v1", "namespaces")
    async def namespace_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
            operator: Operator | None = getattr(memo, "operator", None)
            if operator is not None:
                operator.namespace_gone(str(body["metadata"]["name"]))
