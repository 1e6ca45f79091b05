"""Run the gateway: the proxy app, its door (authentication and authorization, in the
configured mode), its routes (cluster watches or a static file) and the engine poller, on
one event loop; HTTPS when the config names a certificate and key. /metrics and /demand
are served on a second port, always plain HTTP (in-cluster, opened by a NetworkPolicy to
Prometheus and the operator only; docs/security.md).

    await serve(config, host="0.0.0.0", port=GATEWAY_PORT)             # from the cluster
    await serve(config, port=..., routes_file=Path("routes.yaml"))     # static routes
    await serve(config, port=..., metrics_port=0)                      # no metrics port
    await serve(config, port=..., worker=WorkerRole(0, 2, socket))     # one of a pod's

As one of a pod's workers (`gateway.workers` > 1, started by gateway/workers/supervisor.py)
it takes its share of the pod (workers/role.py), serves /demand, /metrics and /readyz on
its Unix socket to the supervisor only, and binds the API port (SO_REUSEPORT, beside the
other workers) only once its routes are loaded: whichever worker a connection reaches
has the whole route table, so the API port's /readyz answers for the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes import client
from prometheus_client import CollectorRegistry

from openmodel.config import (
    GATEWAY_METRICS_PORT,
    GATEWAY_PORT,
    AuthMode,
    GatewayConfig,
    PlatformConfig,
)
from openmodel.gateway.auth.access_control import AccessControl
from openmodel.gateway.auth.access_review import AccessReviewer
from openmodel.gateway.auth.api_key_watch import ApiKeyWatch
from openmodel.gateway.auth.api_keys import ApiKeyIndex
from openmodel.gateway.auth.kube_reviews import KubeReviews
from openmodel.gateway.auth.token_review import TokenReviewer
from openmodel.gateway.external.forward import ExternalForwarder
from openmodel.gateway.external.keys import ExternalKeys, ReadSecret
from openmodel.gateway.limits.replicas import ReplicaCount
from openmodel.gateway.metrics import GatewayMetrics
from openmodel.gateway.poller import EnginePoller
from openmodel.gateway.proxy import Gateway
from openmodel.gateway.routes import RouteTable
from openmodel.gateway.static import load_static_routes
from openmodel.gateway.watch import ClusterRoutes
from openmodel.gateway.workers.role import (
    SUPERVISOR_SILENCE_SECONDS,
    WORKER_HEADER,
    SupervisorContact,
    WorkerRole,
)
from openmodel.kube import calls as kube
from openmodel.namespaces import ENV, patterns_from_env

log = logging.getLogger(__name__)

# Longer than any stream the gateway forwards is allowed to take after SIGTERM: the
# gateway's own pod drains too (its Deployment's terminationGracePeriodSeconds).
_DRAIN_SECONDS = 60.0


def start_access_control(
    config: GatewayConfig, registry: CollectorRegistry, loop: asyncio.AbstractEventLoop
) -> tuple[AccessControl, list[Callable[[], None]]]:
    """The door for `config.auth.mode`, its API-key watch started; and what stops it."""
    auth = config.auth
    if auth.mode is AuthMode.OFF:
        log.warning(
            "gateway: AUTHENTICATION IS OFF (gateway.auth.mode: off): anyone who reaches "
            "this gateway may use every model it routes; use it for local demos only"
        )
        return AccessControl.off(registry), []
    api = kube.make_api_client(pool_size=auth.max_concurrent_reviews, retries=False)
    reviews = KubeReviews(api, auth)
    keys = ApiKeyIndex()
    key_watch = ApiKeyWatch(kube.make_api_client(), keys, loop)
    key_watch.start()
    access = AccessControl(
        auth.mode,
        registry,
        tokens=TokenReviewer(reviews.review_token, auth),
        keys=keys,
        access=AccessReviewer(reviews.review_access, auth),
    )
    log.info(
        "gateway: auth mode %s; tokens trusted for %gs, access decisions for %gs",
        auth.mode.value, auth.token_cache_seconds, auth.access_cache_seconds,
    )  # fmt: skip
    return access, [key_watch.stop, reviews.close]


def tls_context(config: GatewayConfig) -> ssl.SSLContext | None:
    if not config.tls.enabled:
        return None
    assert config.tls.cert_file is not None and config.tls.key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return context


async def serve(
    config: PlatformConfig,
    host: str = "0.0.0.0",
    port: int = GATEWAY_PORT,
    routes_file: Path | None = None,
    stop: asyncio.Event | None = None,
    metrics_port: int = GATEWAY_METRICS_PORT,
    worker: WorkerRole | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT or `stop`; `metrics_port` 0: no /metrics, /demand.
    `worker`: as one of a pod's worker processes (`metrics_port` is then not used)."""
    loop = asyncio.get_running_loop()
    table = RouteTable()
    metrics = GatewayMetrics()
    gateway_config = config.gateway if worker is None else worker.share(config.gateway)
    access, stop_access = start_access_control(gateway_config, metrics.registry, loop)
    limits = gateway_config.limits
    replicas = ReplicaCount.of(limits.replicas or 1, 1 if worker is None else worker.count)
    gateway = Gateway(table, gateway_config, access, metrics, replicas=replicas)
    if worker is not None:
        gateway.started = worker.started_monotonic(time.time(), time.monotonic())
    routes_loaded = asyncio.Event()
    watcher: ClusterRoutes | None = None
    background: list[asyncio.Task[None]] = []
    if routes_file is not None:
        load_static_routes(routes_file, table)
        gateway.ready = True
        routes_loaded.set()
    else:
        patterns = patterns_from_env({ENV: ",".join(config.gateway.namespaces)})

        def synced() -> None:
            gateway.ready = True
            routes_loaded.set()

        watcher = ClusterRoutes(
            kube.make_api_client(), table, loop, gateway.notify, patterns, on_synced=synced
        )
        gateway.privacy = watcher.privacy
        gateway.external = ExternalForwarder(
            ExternalKeys(_secret_reader(kube.make_api_client())), metrics
        )
        watcher.start()
        if limits.enabled and limits.replicas is None:
            follow = gateway.replicas.follow(_gateway_pods(config, kube.make_api_client()))
            background.append(asyncio.create_task(follow, name="gateway-replicas"))
    poller = EnginePoller(
        table, gateway.balancer, config.gateway.queue_poll_seconds, gateway.notify
    )
    background.append(asyncio.create_task(poller.run_forever(), name="engine-poller"))
    # First, so that an API port that answers (the readiness probe) implies this one does.
    stop = stop or asyncio.Event()
    if worker is None:
        monitoring = await _serve_monitoring(gateway, host, metrics_port)
    else:
        contact = SupervisorContact()
        monitoring = await _serve_to_supervisor(gateway, worker, contact)
        watchdog = contact.stop_when_silent(stop, SUPERVISOR_SILENCE_SECONDS)
        background.append(asyncio.create_task(watchdog, name="supervisor-watchdog"))
    application = gateway.application()
    if worker is not None:
        application.on_response_prepare.append(_worker_header(str(worker.index)))
    runner = web.AppRunner(
        application,
        access_log=None,
        # A client that goes away cancels its handler: held requests leave the queue,
        # forwarded ones close their upstream connection.
        handler_cancellation=True,
        shutdown_timeout=_DRAIN_SECONDS,
    )
    await runner.setup()
    tls = tls_context(config.gateway)
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not possible off the main thread (tests run the gateway in a thread).
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if worker is not None:
            # Beside the pod's other workers, and only with the routes loaded (above).
            await _first(routes_loaded, stop)
            if stop.is_set():
                return
        site = web.TCPSite(
            runner, host, port, backlog=2048, ssl_context=tls, reuse_port=worker is not None
        )
        await site.start()
        log.info("gateway %slistening on %s://%s:%s",
                 "" if worker is None else f"worker {worker.index} ",
                 "https" if tls else "http", host, port)  # fmt: skip
        await stop.wait()
    finally:
        log.info("gateway stopping: no new connections, requests in flight finish")
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if watcher is not None:
            watcher.stop()
        for stop_part in stop_access:
            stop_part()
        await runner.cleanup()
        # After the drain: /demand keeps reporting the requests still in flight meanwhile.
        if monitoring is not None:
            await monitoring.cleanup()


async def _serve_monitoring(gateway: Gateway, host: str, port: int) -> web.AppRunner | None:
    """/metrics and /demand on their own plain-HTTP port (none when `port` is 0)."""
    if port == 0:
        log.info("gateway: no metrics port (/metrics and /demand not served)")
        return None
    runner = web.AppRunner(gateway.monitoring_application(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("gateway metrics (/metrics, /demand) on http://%s:%s", host, port)
    return runner


async def _serve_to_supervisor(
    gateway: Gateway, worker: WorkerRole, contact: SupervisorContact
) -> web.AppRunner:
    """/demand, /metrics and /readyz on the worker's Unix socket, for its supervisor;
    each of its requests counts as a sign of life (`contact`)."""

    async def readyz(request: web.Request) -> web.StreamResponse:
        contact.asked()
        return await gateway.handle_readyz(request)

    app = gateway.monitoring_application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(worker.socket)).start()
    return runner


def _worker_header(
    index: str,
) -> Callable[[web.Request, web.StreamResponse], Coroutine[Any, Any, None]]:
    async def add(_: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = index

    return add


async def _first(*events: asyncio.Event) -> None:
    """Wait until one of `events` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _secret_reader(api: client.ApiClient) -> ReadSecret:
    """One Secret's data, by namespace and name (an ExternalModel's key: gateway/external/)."""
    core = client.CoreV1Api(api)

    def read(namespace: str, name: str) -> dict[str, str]:
        secret = core.read_namespaced_secret(name, namespace)
        return {k: str(v) for k, v in (secret.data or {}).items()}

    return read


def _gateway_pods(
    config: PlatformConfig, api: client.ApiClient
) -> Callable[[], list[dict[str, Any]]]:
    """The gateway's own pods (the ones the autoscaler reads demand from), listed."""
    gw = config.gateway

    def list_pods() -> list[dict[str, Any]]:
        return kube.list_objects(
            api, "v1", "Pod", gw.demand_namespace, label_selector=gw.demand_selector
        )

    return list_pods
