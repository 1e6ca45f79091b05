"""The gateway's relay (gateway/relay.py): engine answers read by its own HTTP/1.1
protocol and written straight to the client, through the gateway against scripted
engines on loopback (chunked and content-length answers, answers read until the engine
closes, keep-alive reuse, cuts on either side, a client that does not read), and the
parser against every split of an answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from openmodel.config import GatewayConfig
from openmodel.gateway.auth.access_control import AccessControl
from openmodel.gateway.proxy import Gateway
from openmodel.gateway.relay import Unreachable, Upstream, UpstreamCut, UpstreamPool
from openmodel.gateway.routes import Backend, RouteTable

T = TypeVar("T")
ENGINE_HOST = "127.0.0.41"


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout=30)

    return asyncio.run(bounded())


@dataclass
class EngineRequest:
    head: str
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Answer = Callable[[EngineRequest, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class ScriptedEngine:
    """An HTTP/1.1 server whose answers a test writes byte for byte: `answer` writes one
    and says whether the connection stays open for the next request."""

    answer: Answer
    connections: int = 0
    requests: list[EngineRequest] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a connection ended
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, ENGINE_HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode()
                except asyncio.IncompleteReadError:
                    return
                length = next(
                    int(line.split(":", 1)[1])
                    for line in head.split("\r\n")
                    if line.lower().startswith("content-length:")
                )
                request = EngineRequest(head, await reader.readexactly(length))
                self.requests.append(request)
                if not await self.answer(request, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            self.closed.set()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@dataclass
class Running:
    gateway: Gateway
    url: str
    session: aiohttp.ClientSession
    runner: web.AppRunner

    def connections(self) -> list[Any]:
        """The gateway's client connections (aiohttp's request handlers)."""
        assert self.runner.server is not None
        return [c for c in self.runner.server.connections if c.transport is not None]

    def errors(self, reason: str) -> float:
        return sum(
            sample.value
            for metric in self.gateway.metrics.errors.collect()
            for sample in metric.samples
            if sample.labels.get("reason") == reason and sample.name.endswith("_total")
        )


@asynccontextmanager
async def gateway_to(engine: ScriptedEngine) -> AsyncIterator[Running]:
    await engine.start()
    table = RouteTable()
    backend = Backend(("ns", "m"), "m", frozenset(), "vllm", engine.port)
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Running",
            "podIP": ENGINE_HOST,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    table.put_backend(backend, [pod])
    gateway = Gateway(table, GatewayConfig(), AccessControl.off(CollectorRegistry()))
    gateway.ready = True
    runner = web.AppRunner(gateway.application(), handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            yield Running(gateway, url, session, runner)
    finally:
        await runner.cleanup()
        await engine.stop()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-engine: sim\r\n"
    b"keep-alive: timeout=5\r\ntransfer-encoding: chunked\r\n\r\n"
)
DELTAS = [event({"choices": [{"delta": {"content": word}}]}) for word in ("a", "b", "c")]
USAGE = event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}})
DONE = event("[DONE]")
STREAM = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}


async def write(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def stream_text(running: Running, payload: dict[str, Any]) -> tuple[int, str]:
    async with running.session.post(running.url + "/v1/chat/completions", json=payload) as r:
        return r.status, (await r.read()).decode()


def test_a_chunked_stream_passes_event_by_event_and_the_usage_chunk_only_when_asked() -> None:
    async def scenario() -> None:
        go = asyncio.Event()

        async def answer(request: EngineRequest, writer: asyncio.StreamWriter) -> bool:
            await write(writer, SSE_HEAD + chunk(DELTAS[0]))
            await go.wait()  # the client has the first event before the engine goes on
            go.clear()
            # An event split over two chunks, a chunk holding two events, a chunk size
            # line split over two writes.
            first, second = DELTAS[1][:7], DELTAS[1][7:]
            await write(writer, chunk(first))
            await write(writer, chunk(second + DELTAS[2]) + b"%x\r" % len(USAGE))
            await write(writer, b"\n" + USAGE + b"\r\n" + chunk(DONE) + b"0\r\n\r\n")
            return True

        engine = ScriptedEngine(answer)
        async with gateway_to(engine) as running:
            async with running.session.post(running.url + "/v1/chat/completions", json=STREAM) as r:
                assert r.status == 200
                assert r.headers["x-engine"] == "sim" and "keep-alive" not in r.headers
                first = await r.content.readuntil(b"\n\n")
                assert first == DELTAS[0]
                go.set()
                rest = await r.read()
            assert rest == b"".join(DELTAS[1:]) + DONE
            # The gateway asked for the usage chunk, and took it out of this stream.
            assert engine.requests[0].json["stream_options"] == {"include_usage": True}
            go.set()
            status, text = await stream_text(
                running, {**STREAM, "stream_options": {"include_usage": True}}
            )
            assert status == 200 and text.encode() == b"".join(DELTAS) + USAGE + DONE
            assert engine.connections == 1
            tokens = running.gateway.metrics.usage_completion_tokens.collect()[0].samples
            assert sum(s.value for s in tokens if s.name.endswith("_total")) == 6

    run(scenario)


def test_a_content_length_answer_passes_with_its_length_and_headers() -> None:
    async def scenario() -> None:
        body = json.dumps({"choices": [], "usage": {"prompt_tokens": 1}}).encode()

        async def answer(request: EngineRequest, writer: asyncio.StreamWriter) -> bool:
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-engine: sim\r\n"
                b"content-length: %d\r\n\r\n" % len(body)
            )
            await write(writer, head + body[:5])
            await write(writer, body[5:])
            return True

        engine = ScriptedEngine(answer)
        async with gateway_to(engine) as running:
            async with running.session.post(
                running.url + "/v1/chat/completions",
                json={"model": "m", "messages": []},
                headers={"x-client": "c1", "Connection": "keep-alive"},
            ) as r:
                assert r.status == 200 and r.headers["content-length"] == str(len(body))
                assert "transfer-encoding" not in r.headers
                assert await r.read() == body
            head = engine.requests[0].head.lower()
            assert "x-client: c1\r\n" in head and "connection:" not in head
            assert f"host: {ENGINE_HOST}:{engine.port}\r\n" in head

    run(scenario)


def test_connections_are_reused_until_the_engine_closes_or_answers_until_closing() -> None:
    async def scenario() -> None:
        modes: list[str] = []

        async def answer(request: EngineRequest, writer: asyncio.StreamWriter) -> bool:
            mode = modes.pop(0)
            if mode == "keep":
                await write(writer, SSE_HEAD + chunk(DONE) + b"0\r\n\r\n")
                return True
            if mode == "close":  # says so
                head = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n"
                await write(writer, head + b"{}")
                return False
            if mode == "silent":  # closes after the answer without saying so
                await write(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                return False
            # No length, not chunked: the body is whatever comes until the engine closes.
            await write(writer, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nab")
            await write(writer, b"cd")
            return False

        engine = ScriptedEngine(answer)
        async with gateway_to(engine) as running:
            for mode, connections in [
                ("keep", 1), ("keep", 1), ("keep", 1), ("close", 1), ("keep", 2),
                ("silent", 2), ("until-close", 3), ("keep", 4), ("keep", 4),
            ]:  # fmt: skip
                modes.append(mode)
                engine.closed.clear()
                status, text = await stream_text(running, STREAM)
                assert status == 200, (mode, text)
                assert text == {"until-close": "abcd", "close": "{}", "silent": "{}"}.get(
                    mode, DONE.decode()
                )
                if mode in ("close", "silent", "until-close"):
                    await engine.closed.wait()  # the gateway saw it close, too
                    while running.gateway._pool.idle_count(ENGINE_HOST, engine.port):
                        await asyncio.sleep(0)
                assert engine.connections == connections, mode
            assert running.gateway.balancer.in_flight_for(("ns", "m")) == 0

    run(scenario)


def test_an_engine_that_cuts_mid_stream_cuts_the_clients_stream() -> None:
    async def scenario() -> None:
        async def answer(request: EngineRequest, writer: asyncio.StreamWriter) -> bool:
            await write(writer, SSE_HEAD + chunk(DELTAS[0]) + b"40\r\npartial")
            return False

        engine = ScriptedEngine(answer)
        async with gateway_to(engine) as running:
            async with running.session.post(running.url + "/v1/chat/completions", json=STREAM) as r:
                assert r.status == 200
                assert await r.content.readuntil(b"\n\n") == DELTAS[0]
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()
            assert running.errors("upstream_cut") == 1
            assert running.gateway.balancer.in_flight_for(("ns", "m")) == 0
            assert running.gateway._pool.idle_count(ENGINE_HOST, engine.port) == 0

    run(scenario)


def test_a_client_that_leaves_mid_stream_closes_the_engines_connection() -> None:
    async def scenario() -> None:
        async def answer(request: EngineRequest, writer: asyncio.StreamWriter) -> bool:
            await write(writer, SSE_HEAD + chunk(DELTAS[0]))
            return True  # and nothing more: the stream stays open

        engine = ScriptedEngine(answer)
        async with gateway_to(engine) as running:
            async with running.session.post(running.url + "/v1/chat/completions", json=STREAM) as r:
                assert await r.content.readuntil(b"\n\n") == DELTAS[0]
                r.close()  # the client goes away
            await engine.closed.wait()  # the engine sees its request's connection close
            while running.gateway.balancer.in_flight_for(("ns", "m")):
                await asyncio.sleep(0.01)
            assert running.errors("client_disconnected") == 1

    run(scenario)


def test_a_client_that_does_not_read_stops_the_engine_and_loses_nothing() -> None:
    async def scenario() -> None:
        piece = bytes(range(256)) * 256  # 64 KiB
        total = 64 * 2**20
        stalled = asyncio.Event()
        sent = 0

        async def answer(request: EngineRequest, writer: asyncio.StreamWriter) -> bool:
            nonlocal sent
            head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total
            writer.write(head)
            while sent < total:
                writer.write(piece)
                sent += len(piece)
                if writer.transport.get_write_buffer_size() > 0:
                    # Nobody reads the engine's connection: the gateway stopped reading it.
                    stalled.set()
                await writer.drain()
            return True

        engine = ScriptedEngine(answer)
        async with gateway_to(engine) as running:
            host, port = running.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            body = json.dumps({"model": "m", "prompt": "x"}).encode()
            writer.write(
                b"POST /v1/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: %d\r\n\r\n%b"
                % (len(body), body)
            )
            # The gateway stops reading the engine's connection while the client's is full.
            pool = running.gateway._pool
            while not any(u.transport and not u.transport.is_reading() for u in pool.in_use):
                await asyncio.sleep(0.01)
            await stalled.wait()
            assert sent < total // 2, "the gateway read the engine ahead of its client"
            buffered = [c.transport.get_write_buffer_size() for c in running.connections()]
            assert max(buffered) < 2**20, buffered
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"Content-Length: %d" % total in head
            digest = hashlib.sha256()
            received = 0
            while received < total:
                data = await reader.read(2**20)
                assert data, "the stream ended early"
                digest.update(data)
                received += len(data)
            assert received == total
            assert digest.digest() == hashlib.sha256(piece * (total // len(piece))).digest()
            writer.close()

    run(scenario)


# --- the parser, against every split of an answer ---


class Recorded(asyncio.Transport):
    """A transport that records what the parser under test asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


ANSWERS = [
    (SSE_HEAD + chunk(DELTAS[0]) + chunk(DELTAS[1]) + b"0\r\nx-trailer: 1\r\n\r\n", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", True),
    (b"HTTP/1.0 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy", False),
    (b"HTTP/1.1 204 No Content\r\nx: y\r\n\r\n", True),
]


@pytest.mark.parametrize(("answer", "reusable"), ANSWERS)
def test_the_parser_reads_an_answer_however_it_is_split(answer: bytes, reusable: bool) -> None:
    async def scenario() -> None:
        for split in range(1, len(answer)):
            pool = UpstreamPool()
            upstream = Upstream(pool, ("h", 1), frozenset({"transfer-encoding"}))
            upstream.connection_made(Recorded())
            upstream.send(b"request")
            upstream.data_received(answer[:split])
            upstream.data_received(answer[split:])
            head = await upstream.head()
            body = await upstream.body()
            expected = answer.rsplit(b"\r\n\r\n", 1)[1] if b"content-length" in answer else b""
            if b"chunked" in answer:
                expected = DELTAS[0] + DELTAS[1]
            assert body == expected, split
            assert head.status in (200, 503, 204) and "transfer-encoding" not in head.headers
            assert upstream.reusable() == reusable

    run(scenario)


def test_broken_answers_and_early_closes_are_told_apart() -> None:
    async def scenario() -> None:
        def fresh() -> Upstream:
            upstream = Upstream(UpstreamPool(), ("h", 1), frozenset())
            upstream.connection_made(Recorded())
            upstream.send(b"request")
            return upstream

        closed = fresh()
        closed.connection_lost(None)
        with pytest.raises(Unreachable):
            await closed.head()
        for broken in (b"SMTP ready\r\n\r\n", SSE_HEAD + b"zz\r\n", SSE_HEAD + b"3\r\nabcXY"):
            upstream = fresh()
            upstream.data_received(broken)
            with pytest.raises(UpstreamCut):
                await upstream.head()
                await upstream.body()
            assert not upstream.reusable()
        cut = fresh()
        cut.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        cut.connection_lost(ConnectionResetError())
        await cut.head()
        with pytest.raises(UpstreamCut):
            await cut.body()

    run(scenario)


def test_nothing_listening_is_unreachable() -> None:
    async def scenario() -> None:
        with socket.socket() as s:
            s.bind((ENGINE_HOST, 0))
            port = s.getsockname()[1]
        with pytest.raises(Unreachable):
            await UpstreamPool().send(ENGINE_HOST, port, b"request")

    run(scenario)
