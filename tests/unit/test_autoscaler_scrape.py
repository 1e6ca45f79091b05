"""Concurrent /metrics scraping (openmodel.engine_metrics.scrape) against local HTTP servers.

Every server binds 127.0.0.1 (or another 127.0.0.0/8 address) on a port the kernel picks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from openmodel.autoscaler.decision import (
    DecisionReason,
    Observation,
    ScalingHistory,
    ScalingPolicy,
    decide,
)
from openmodel.engine_metrics.exposition import FailureKind, MetricFailure, QueueReading
from openmodel.engine_metrics.scrape import Scraper, ScrapeTarget
from openmodel.engines import ENGINES
from openmodel.simulator import SimulatorHandle, start_simulator

VLLM_METRICS = ENGINES["vllm"].metric_names
TGI_METRICS = ENGINES["tgi"].metric_names

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VLLM_OK = (
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n'
    'vllm:num_requests_running{engine="0",model_name="m"} 4.0\n'
)


def text(body: str, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, status=status, content_type="text/plain")

    return handler


@contextlib.asynccontextmanager
async def serve(routes: dict[str, Handler], host: str = "127.0.0.1") -> AsyncIterator[int]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    # A short shutdown: handlers still blocked when a test ends are cancelled.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def targets(port: int, *paths: str) -> list[ScrapeTarget]:
    return [ScrapeTarget(path.strip("/"), "127.0.0.1", port, path) for path in paths]


def kind(result: object) -> FailureKind:
    assert isinstance(result, MetricFailure), result
    return result.kind


def test_one_result_per_pod_in_order():
    async def main() -> None:
        routes = {
            "/ok": text(VLLM_OK),
            "/tgi": text("# TYPE tgi_queue_size gauge\ntgi_queue_size 3\n"),
            "/nan": text('vllm:num_requests_waiting{engine="0"} NaN\n'),
            "/negative": text("vllm:num_requests_waiting -2\n"),
            "/empty": text(""),
            "/garbage": text("vllm:num_requests_waiting{engine=0} 3\n"),
            "/html": text("<html>hello</html>"),
            "/500": text("internal error", status=500),
            "/503": text("loading", status=503),
        }
        async with serve(routes) as port, Scraper(timeout_s=5) as scraper:
            results = await scraper.scrape(targets(port, *routes), VLLM_METRICS)
        assert list(results) == [path.strip("/") for path in routes]
        assert results["ok"] == QueueReading(waiting=7.0, running=4.0)
        assert kind(results["tgi"]) is FailureKind.MISSING
        assert kind(results["nan"]) is FailureKind.NOT_FINITE
        assert kind(results["negative"]) is FailureKind.NEGATIVE
        assert kind(results["empty"]) is FailureKind.EMPTY_BODY
        assert kind(results["garbage"]) is FailureKind.MALFORMED
        assert kind(results["html"]) is FailureKind.MISSING
        assert kind(results["500"]) is FailureKind.HTTP_STATUS
        assert "HTTP 500" in str(results["500"])
        assert kind(results["503"]) is FailureKind.HTTP_STATUS

    asyncio.run(main())


def test_tgi_names():
    async def main() -> None:
        routes = {"/metrics": text("# TYPE tgi_queue_size gauge\ntgi_queue_size 3\n\n")}
        async with serve(routes) as port, Scraper() as scraper:
            results = await scraper.scrape(targets(port, "/metrics"), TGI_METRICS)
        assert results == {"metrics": QueueReading(waiting=3.0, running=None)}

    asyncio.run(main())


def test_request_timeout():
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text=VLLM_OK)

    async def main() -> None:
        async with serve({"/hang": hang, "/ok": text(VLLM_OK)}) as port:
            # 1 s: long enough for /ok on a busy machine, short for the test.
            async with Scraper(timeout_s=1.0, deadline_s=None) as scraper:
                results = await scraper.scrape(targets(port, "/hang", "/ok"), VLLM_METRICS)
            release.set()
        assert kind(results["hang"]) is FailureKind.TIMEOUT
        assert "in 1s" in str(results["hang"])
        assert isinstance(results["ok"], QueueReading)

    asyncio.run(main())


def test_cycle_deadline_bounds_the_whole_scrape():
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text=VLLM_OK)

    async def main() -> float:
        paths = {f"/hang{i}": hang for i in range(6)}
        async with serve({**paths, "/ok": text(VLLM_OK)}) as port:
            # 2 workers, 6 hanging pods, 30 s per request: without the deadline this
            # would take 90 s.
            scraper = Scraper(timeout_s=30, concurrency=2, deadline_s=1.0)
            started = time.monotonic()
            async with scraper:
                results = await scraper.scrape(targets(port, "/ok", *paths), VLLM_METRICS)
            elapsed = time.monotonic() - started
            release.set()
        assert isinstance(results["ok"], QueueReading)
        for i in range(6):
            assert kind(results[f"hang{i}"]) is FailureKind.TIMEOUT
            assert "1s cycle deadline" in str(results[f"hang{i}"])
        return elapsed

    assert asyncio.run(main()) < 10


def test_unreachable_pod():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    async def main() -> None:
        async with Scraper() as scraper:
            results = await scraper.scrape(targets(closed_port, "/metrics"), VLLM_METRICS)
        assert kind(results["metrics"]) is FailureKind.UNREACHABLE

    asyncio.run(main())


async def raw_server(response: bytes) -> tuple[asyncio.Server, int]:
    """Answers every connection with `response`, then closes it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    "response",
    [
        # Content-Length promises more than arrives: a cut-off body must not parse as a
        # smaller number ("12" arriving as "1").
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nvllm:num_requests_waiting 1",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1b\r\nvllm:num_requests_waiting 1",
        b"not http at all\r\n\r\n",
    ],
)
def test_broken_responses_are_transport_errors(response):
    async def main() -> None:
        server, port = await raw_server(response)
        async with server, Scraper() as scraper:
            results = await scraper.scrape(targets(port, "/metrics"), VLLM_METRICS)
        assert kind(results["metrics"]) is FailureKind.TRANSPORT

    asyncio.run(main())


def test_body_size_cap():
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(5):
            await response.write(b"# " + b"x" * 500 + b"\n")
        await response.write_eof()
        return response

    async def main() -> None:
        routes = {"/big": text("# " + "x" * 5000 + "\n" + VLLM_OK), "/chunked": chunked}
        async with serve(routes) as port, Scraper(max_body_bytes=1000) as scraper:
            results = await scraper.scrape(targets(port, "/big", "/chunked"), VLLM_METRICS)
        assert kind(results["big"]) is FailureKind.TOO_LARGE
        assert kind(results["chunked"]) is FailureKind.TOO_LARGE

    asyncio.run(main())


def test_chunked_body_under_the_cap_is_read():
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for line in VLLM_OK.splitlines(keepends=True):
            await response.write(line.encode())
        await response.write_eof()
        return response

    async def main() -> None:
        async with serve({"/metrics": chunked}) as port, Scraper() as scraper:
            results = await scraper.scrape(targets(port, "/metrics"), VLLM_METRICS)
        assert results["metrics"] == QueueReading(waiting=7.0, running=4.0)

    asyncio.run(main())


def test_body_that_is_not_utf8():
    async def latin1(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'vllm:num_requests_waiting{m="\xe9"} 1\n')

    async def main() -> None:
        async with serve({"/metrics": latin1}) as port, Scraper() as scraper:
            results = await scraper.scrape(targets(port, "/metrics"), VLLM_METRICS)
        assert kind(results["metrics"]) is FailureKind.MALFORMED

    asyncio.run(main())


def test_concurrency_is_bounded():
    limit = 5
    in_flight = 0
    peak = 0
    gate = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        # Requests pile up until `limit` are in flight at once; an unbounded client
        # would have all 40 in flight by the time the gate opens.
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight >= limit:
            gate.set()
        await gate.wait()
        await asyncio.sleep(0)  # let any other arrivals in before leaving
        in_flight -= 1
        return web.Response(text=VLLM_OK)

    async def main() -> None:
        async with serve({"/metrics": held}) as port:
            pods = [ScrapeTarget(f"pod-{i}", "127.0.0.1", port) for i in range(40)]
            async with Scraper(concurrency=limit) as scraper:
                results = await scraper.scrape(pods, VLLM_METRICS)
        assert all(isinstance(r, QueueReading) for r in results.values())
        assert peak == limit

    asyncio.run(main())


def test_headers_and_connection_reuse():
    seen: list[tuple[str | None, str | None, object]] = []

    async def record(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append((request.headers.get("Accept"), request.headers.get("Accept-Encoding"), peer))
        return web.Response(text=VLLM_OK)

    async def main() -> None:
        async with serve({"/metrics": record}) as port, Scraper() as scraper:
            for _ in range(3):
                await scraper.scrape(targets(port, "/metrics"), VLLM_METRICS)

    asyncio.run(main())
    assert len(seen) == 3
    assert {(accept, encoding) for accept, encoding, _ in seen} == {
        ("text/plain;version=0.0.4", "identity")
    }
    assert len({peer for _, _, peer in seen}) == 1  # one connection, kept alive


def test_proxy_environment_is_ignored(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")

    async def main() -> None:
        async with serve({"/metrics": text(VLLM_OK)}) as port, Scraper() as scraper:
            results = await scraper.scrape(targets(port, "/metrics"), VLLM_METRICS)
        assert isinstance(results["metrics"], QueueReading)

    asyncio.run(main())


def test_duplicate_pod_names_are_a_caller_bug():
    async def main() -> None:
        async with Scraper() as scraper:
            with pytest.raises(ValueError, match="duplicate"):
                await scraper.scrape([ScrapeTarget("a", "127.0.0.1", 1)] * 2, VLLM_METRICS)
            assert await scraper.scrape([], VLLM_METRICS) == {}

    asyncio.run(main())


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout_s": 0}, {"concurrency": 0}, {"max_body_bytes": 0}, {"deadline_s": 0}],
)
def test_scraper_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        Scraper(**kwargs)


def test_ipv6_target_url_is_bracketed():
    assert str(ScrapeTarget("a", "fd00::1", 8000).url) == "http://[fd00::1]:8000/metrics"


def test_scrape_and_decide_over_simulated_pods():
    # 30 simulated vLLM pods, one per loopback address, the same port on each as in a
    # cluster. Each has 1 slot and 3 requests in it: 1 running, 2 waiting.
    async def main() -> None:
        def pod(host: str, port: int) -> Awaitable[SimulatorHandle]:
            return start_simulator("vllm", host, port, slots=1, service_time=3600, model="m")

        # The first picks a free port; the others use the same one on their own address.
        first = await pod("127.0.10.1", 0)
        handles = [first]
        load: list[asyncio.Task[None]] = []
        try:
            for i in range(2, 31):
                handles.append(await pod(f"127.0.10.{i}", first.port))
            async with aiohttp.ClientSession() as client:

                async def request(url: str) -> None:
                    async with client.post(url, json={"model": "m", "prompt": "hi"}):
                        pass

                load = [
                    asyncio.create_task(request(h.url + "/v1/completions"))
                    for h in handles
                    for _ in range(3)
                ]
                deadline = time.monotonic() + 30
                while any(h.stats.waiting < 2 for h in handles):
                    assert time.monotonic() < deadline, [h.stats.waiting for h in handles]
                    await asyncio.sleep(0.01)
                pods = [ScrapeTarget(f"pod-{i}", h.host, h.port) for i, h in enumerate(handles)]
                async with Scraper(concurrency=8) as scraper:
                    results = await scraper.scrape(pods, VLLM_METRICS)
                for task in load:
                    task.cancel()
                await asyncio.gather(*load, return_exceptions=True)
        finally:
            for h in handles:
                await h.stop()
        assert all(
            isinstance(r, QueueReading) and (r.waiting, r.running) == (2.0, 1.0)
            for r in results.values()
        ), results
        observation = Observation.from_results(results, starting={"pod-new"})
        policy = ScalingPolicy(min_replicas=1, max_replicas=100, target_queue_depth=1)
        decision = decide(
            observation=observation,
            current_replicas=31,
            policy=policy,
            history=ScalingHistory(),
            now=0.0,
        )
        assert decision.queue_depth == 60
        assert (decision.desired_replicas, decision.reason) == (60, DecisionReason.SCALE_UP)

    asyncio.run(main())
