"""The kopf entry module: wires Kubernetes events to the domain code, nothing else.

Every ModelDeployment event, and every event of a Deployment or Pod it owns, runs the
same level-based `Reconciler.reconcile`. Handlers are `kopf.on.event` only: kopf then
stores no progress on the object, adds no finalizer, and a converged cluster sees no
writes. A resync loop repairs what an event-time error left behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import kopf

from openmodel import telemetry
from openmodel.adapters.loop import AdapterLoop
from openmodel.api import GROUP, KIND, OWNER_LABEL, PLURAL, VERSION
from openmodel.autoscaler.loop import AutoscalerLoop
from openmodel.config import load_config
from openmodel.kube import calls as kube
from openmodel.kube.leader import leader_elector
from openmodel.model_resolver.hub import HubClient
from openmodel.model_resolver.loop import ResolverLoop
from openmodel.model_resolver.store import ModelConfigStore
from openmodel.reconcile.reconciler import Reconciler, ReconcileResult
from openmodel.reconcile.resync import resync_forever

log = logging.getLogger(__name__)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.posting.level = logging.WARNING
    config = load_config()
    api = kube.make_api_client()
    memo.config = config
    hub_endpoint = config.model_resolver.effective_endpoint()
    model_configs = ModelConfigStore(config.model_resolver) if hub_endpoint else None
    memo.reconciler = Reconciler(api, config, model_configs=model_configs)
    port = telemetry.metrics_port()
    if port is not None:
        telemetry.start_metrics_server(port)
    elector = leader_elector(api)
    autoscaler = AutoscalerLoop(api, config, elector=elector)
    adapters = AdapterLoop(
        api, config, is_leader=None if elector is None else (lambda: autoscaler.was_leader)
    )
    memo.tasks = [
        asyncio.create_task(resync_forever(memo.reconciler), name="resync"),
        asyncio.create_task(autoscaler.run_forever(), name="autoscaler"),
        asyncio.create_task(adapters.run_forever(), name="adapters"),
    ]
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


@kopf.on.event(GROUP, VERSION, PLURAL)
def model_deployment_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    if type == "DELETED":
        # Children go with their owner reference; only local state is left to drop.
        memo.reconciler.locks.forget((namespace, name))
        memo.reconciler.own_writes.forget(KIND, namespace, name)
        if memo.reconciler.model_configs is not None:
            memo.reconciler.model_configs.forget_waiter((namespace, name))
        telemetry.forget(namespace, name)
        return
    if memo.reconciler.own_writes.is_echo(
        KIND, namespace, name, body.metadata.get("resourceVersion")
    ):
        return
    _timed(memo, lambda: memo.reconciler.reconcile(body))


def _timed(memo: kopf.Memo, run: Callable[[], ReconcileResult | None]) -> None:
    """Run one reconcile pass, counting it in the operator's metrics."""
    started = time.monotonic()
    try:
        result = run()
    except Exception:
        telemetry.record_reconcile("error", time.monotonic() - started)
        raise
    outcome = "rejected" if result is not None and result.problem is not None else "ok"
    telemetry.record_reconcile(outcome, time.monotonic() - started)


@kopf.on.event("apps", "v1", "deployments", labels={OWNER_LABEL: kopf.PRESENT})
def deployment_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _reconcile_owner(body, memo)


@kopf.on.event("", "v1", "pods", labels={OWNER_LABEL: kopf.PRESENT})
def pod_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _reconcile_owner(body, memo)


@kopf.on.event("", "v1", "services", labels={OWNER_LABEL: kopf.PRESENT})
def service_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _reconcile_owner(body, memo)


def _reconcile_owner(body: kopf.Body, memo: kopf.Memo) -> None:
    """A child changed: reconcile the ModelDeployment named by its owner label."""
    namespace, owner = str(body.metadata.namespace), str(body.metadata.labels[OWNER_LABEL])
    kind, version = str(body.get("kind")), body.metadata.get("resourceVersion")
    if memo.reconciler.own_writes.is_echo(kind, namespace, str(body.metadata.name), version):
        return
    _timed(memo, lambda: memo.reconciler.reconcile_by_name(namespace, owner))
