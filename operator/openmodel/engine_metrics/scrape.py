"""Scrape the queue gauge from many pods at once.

    async with Scraper(timeout_s=2.0, concurrency=64, deadline_s=4.0) as scraper:
        # every cycle, for every ModelDeployment:
        results = await scraper.scrape(
            [ScrapeTarget(pod=p.name, host=p.ip, port=engine.port) for p in ready_pods],
            engine.metric_names,
        )
        # results: {pod name: QueueReading | MetricFailure}, one entry per target, in order

One ``Scraper`` is meant to live as long as the operator and serve every
ModelDeployment: it keeps one aiohttp session, so connections to pods are reused from
one cycle to the next while the engine keeps them open (some engines' HTTP servers close
idle connections after a few seconds, e.g. uvicorn after 5 s; others keep them).

Cost and bounds, for 500 pods per cycle:
* a fixed pool of ``concurrency`` worker tasks pulls targets from one iterator, so a
  cycle creates ``concurrency`` tasks, not one per pod, and each request's timeout starts
  when a worker picks it up (not while it waits its turn);
* ``timeout_s`` bounds each request (connect + headers + body);
* ``deadline_s`` bounds the whole call: pods not answered by then get a ``Timeout``
  failure saying so, which the decision treats like any other failure (hold). Keep it
  below the loop period (platform ``autoscaler.pollSeconds``, 5 s by default) so cycles
  never overlap; ``timeout_s`` maps to ``autoscaler.scrapeTimeoutSeconds``;
* bodies above ``max_body_bytes`` are refused (``BodyTooLarge``) without reading them all;
* ``Accept-Encoding: identity``: gzip would cost the engine CPU on its serving event loop
  for a body we read once; ``Accept: text/plain;version=0.0.4`` keeps prometheus_client
  from answering in OpenMetrics;
* proxies from the environment are ignored (``trust_env=False``): pod IPs are direct.

Nothing here raises for a pod's failure; each one becomes a ``MetricFailure``. Only a
programming error (e.g. duplicate pod names) raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

import aiohttp
import yarl

from openmodel.engine_metrics.exposition import (
    FailureKind,
    MetricFailure,
    MetricNames,
    MetricResult,
    read_queue,
)

__all__ = ["ScrapeTarget", "Scraper"]

_HEADERS: Final = {
    "Accept": "text/plain;version=0.0.4",
    "Accept-Encoding": "identity",
    "User-Agent": "openmodel-autoscaler",
}
_CHUNK: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One Ready pod: its name (the key of the result) and where its engine listens."""

    pod: str
    host: str
    port: int
    path: str = "/metrics"
    url: yarl.URL = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once: callers usually keep their targets between cycles. URL.build
        # brackets IPv6 pod IPs.
        url = yarl.URL.build(scheme="http", host=self.host, port=self.port, path=self.path)
        object.__setattr__(self, "url", url)


class _TooLarge(Exception):
    pass


class Scraper:
    """Concurrent /metrics scraping over one reusable HTTP session."""

    def __init__(
        self,
        *,
        timeout_s: float = 2.0,
        concurrency: int = 64,
        deadline_s: float | None = 4.0,
        max_body_bytes: int = 8 * 1024 * 1024,
        keepalive_s: float = 30.0,
    ) -> None:
        if timeout_s <= 0 or concurrency < 1 or max_body_bytes < 1:
            raise ValueError("timeout_s > 0, concurrency >= 1 and max_body_bytes >= 1 required")
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError("deadline_s must be > 0 or None")
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._concurrency = concurrency
        self._deadline_s = deadline_s
        self._max_body_bytes = max_body_bytes
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Scraper:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp wants a running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._concurrency,
                keepalive_timeout=self._keepalive_s,
                use_dns_cache=False,  # targets are IP addresses
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=_HEADERS,
                skip_auto_headers=("Accept-Encoding",),
                trust_env=False,
            )
        return self._session

    async def scrape(
        self, targets: Sequence[ScrapeTarget], names: MetricNames
    ) -> dict[str, MetricResult]:
        """One result per target, keyed by pod name, in the targets' order."""
        if len({t.pod for t in targets}) != len(targets):
            raise ValueError("duplicate pod names in scrape targets")
        session = self._get_session()
        results: dict[str, MetricResult] = {}
        pending = iter(targets)

        async def worker() -> None:
            # All workers share one iterator: next() runs without awaiting, so each
            # target is taken exactly once.
            for target in pending:
                results[target.pod] = await self._fetch(session, target, names)

        try:
            async with asyncio.timeout(self._deadline_s), asyncio.TaskGroup() as group:
                for _ in range(min(self._concurrency, len(targets))):
                    group.create_task(worker())
        except TimeoutError:
            # Only the cycle deadline gets here (_fetch turns request timeouts into
            # results); the pods it cut off are the ones without a result.
            missed = MetricFailure(
                FailureKind.TIMEOUT, f"not scraped within the {self._deadline_s:g}s cycle deadline"
            )
            return {t.pod: results.get(t.pod, missed) for t in targets}
        return {t.pod: results[t.pod] for t in targets}

    async def _fetch(
        self, session: aiohttp.ClientSession, target: ScrapeTarget, names: MetricNames
    ) -> MetricResult:
        url = target.url
        try:
            async with session.get(url, timeout=self._timeout) as response:
                if response.status != 200:
                    return MetricFailure(
                        FailureKind.HTTP_STATUS, f"HTTP {response.status} from {url}"
                    )
                body = await self._read_capped(response)
        except TimeoutError:
            return MetricFailure(
                FailureKind.TIMEOUT, f"no answer from {url} in {self._timeout_s:g}s"
            )
        except aiohttp.ClientConnectorError as exc:
            return MetricFailure(
                FailureKind.UNREACHABLE, f"cannot connect to {url}: {exc.strerror}"
            )
        except aiohttp.ClientError as exc:
            # Reset connections, truncated bodies (Content-Length or chunking cut short),
            # invalid HTTP.
            return MetricFailure(FailureKind.TRANSPORT, f"{url}: {type(exc).__name__}: {exc}")
        except _TooLarge:
            return MetricFailure(
                FailureKind.TOO_LARGE, f"{url} body exceeds {self._max_body_bytes} bytes"
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return MetricFailure(FailureKind.MALFORMED, f"{url} body is not UTF-8: {exc}")
        return read_queue(text, names)

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None:
            if length > self._max_body_bytes:
                raise _TooLarge
            return await response.read()
        # Chunked: read incrementally so an endless body cannot fill memory.
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self._max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)
