"""Every `queuePollSeconds`: read each routable pod's queue gauges, running and waiting
(the same scraper and metric names as the autoscaler) and, for ModelDeployments with
adapters, which adapters each pod's engine has loaded (its `/v1/models`), for the
balancer.

A pod whose metrics cannot be read counts as an empty queue for balancing (the gateway's
own in-flight count still applies); a pod whose model list cannot be read keeps the
adapters it last listed, and a new pod none until it answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from openmodel.engine_metrics.exposition import QueueReading
from openmodel.engine_metrics.scrape import Scraper, ScrapeTarget
from openmodel.engines import engine_for
from openmodel.engines.base import MetricNames
from openmodel.gateway.balancer import Balancer, PodKey
from openmodel.gateway.routes import Endpoint, RouteTable

log = logging.getLogger(__name__)


async def loaded_models(
    session: aiohttp.ClientSession, endpoint: Endpoint, timeout_s: float
) -> frozenset[str] | None:
    try:
        async with session.get(
            f"{endpoint.base_url}/v1/models", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as r:
            if r.status != 200:
                return None
            body = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return None
    return frozenset(e["id"] for e in data if isinstance(e, dict) and isinstance(e.get("id"), str))


@dataclass
class EnginePoller:
    table: RouteTable
    balancer: Balancer
    period_s: float
    on_change: Callable[[], None]
    timeout_s: float = 1.0

    async def run_forever(self) -> None:
        async with (
            Scraper(timeout_s=self.timeout_s, deadline_s=max(0.5, self.period_s * 0.8)) as scraper,
            aiohttp.ClientSession(trust_env=False) as session,
        ):
            while True:
                try:
                    await self.poll_once(scraper, session)
                except Exception:
                    log.exception("gateway: engine poll failed; next one in %ss", self.period_s)
                await asyncio.sleep(self.period_s)

    async def poll_once(self, scraper: Scraper, session: aiohttp.ClientSession) -> None:
        live: set[PodKey] = set()
        work = []
        for key, backend in list(self.table.backends.items()):
            endpoints = self.table.endpoints(key)
            if not endpoints:
                continue
            live.update((key, e.pod) for e in endpoints)
            engine = engine_for(backend.engine)
            targets = [
                ScrapeTarget(pod=e.pod, host=e.host, port=e.port, path=engine.metrics_path)
                for e in endpoints
            ]
            work.append(self._queues(scraper, key, targets, engine.metric_names))
            if backend.adapters:
                work.extend(self._adapters(session, key, e) for e in endpoints)
        await asyncio.gather(*work)
        self.balancer.keep_only(live)
        self.on_change()

    async def _queues(
        self,
        scraper: Scraper,
        key: tuple[str, str],
        targets: list[ScrapeTarget],
        metric_names: MetricNames,
    ) -> None:
        results = await scraper.scrape(targets, metric_names)
        for pod, result in results.items():
            outstanding = (
                result.waiting + (result.running or 0.0)
                if isinstance(result, QueueReading)
                else 0.0
            )
            self.balancer.engine_reported(key, pod, outstanding)
            waiting = result.waiting if isinstance(result, QueueReading) else 0.0
            self.balancer.engine_waiting[(key, pod)] = waiting

    async def _adapters(
        self, session: aiohttp.ClientSession, key: tuple[str, str], endpoint: Endpoint
    ) -> None:
        found = await loaded_models(session, endpoint, self.timeout_s)
        if found is not None:
            self.balancer.loaded_adapters[(key, endpoint.pod)] = found
