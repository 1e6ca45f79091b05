"""Run the gateway: the proxy app, its routes (cluster watches or a static file) and the
engine poller, on one event loop.

    await serve(config, host="0.0.0.0", port=GATEWAY_PORT)             # from the cluster
    await serve(config, port=..., routes_file=Path("routes.yaml"))     # static routes
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes import client

from openmodel.config import PlatformConfig
from openmodel.gateway.limits.replicas import ReplicaCount
from openmodel.gateway.poller import EnginePoller
from openmodel.gateway.proxy import Gateway
from openmodel.gateway.routes import RouteTable
from openmodel.gateway.static import load_static_routes
from openmodel.gateway.watch import ClusterRoutes
from openmodel.kube import calls as kube
from openmodel.namespaces import ENV, patterns_from_env

log = logging.getLogger(__name__)

# Longer than any stream the gateway forwards is allowed to take after SIGTERM: the
# gateway's own pod drains too (its Deployment's terminationGracePeriodSeconds).
_DRAIN_SECONDS = 60.0


async def serve(
    config: PlatformConfig,
    host: str = "0.0.0.0",
    port: int = 8080,
    routes_file: Path | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    table = RouteTable()
    limits = config.gateway.limits
    gateway = Gateway(table, config.gateway, replicas=ReplicaCount(limits.replicas or 1))
    watcher: ClusterRoutes | None = None
    background: list[asyncio.Task[None]] = []
    if routes_file is not None:
        load_static_routes(routes_file, table)
        gateway.ready = True
    else:
        patterns = patterns_from_env({ENV: ",".join(config.gateway.namespaces)})

        def synced() -> None:
            gateway.ready = True

        watcher = ClusterRoutes(
            kube.make_api_client(), table, loop, gateway.notify, patterns, on_synced=synced
        )
        watcher.start()
        if limits.enabled and limits.replicas is None:
            follow = gateway.replicas.follow(_gateway_pods(config, kube.make_api_client()))
            background.append(asyncio.create_task(follow, name="gateway-replicas"))
    poller = EnginePoller(
        table, gateway.balancer, config.gateway.queue_poll_seconds, gateway.notify
    )
    background.append(asyncio.create_task(poller.run_forever(), name="engine-poller"))
    runner = web.AppRunner(
        gateway.application(),
        access_log=None,
        # A client that goes away cancels its handler: held requests leave the queue,
        # forwarded ones close their upstream connection.
        handler_cancellation=True,
        shutdown_timeout=_DRAIN_SECONDS,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    log.info("gateway listening on %s:%s", host, port)
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not possible off the main thread (tests run the gateway in a thread).
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping: no new connections, requests in flight finish")
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if watcher is not None:
            watcher.stop()
        await runner.cleanup()


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
