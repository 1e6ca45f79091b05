"""The gateway's upstream HTTP/1.1 client: keep-alive connections to the engines, and a
relay that writes each piece of an engine's answer to the client's connection as it
arrives, from the connection's own `data_received`, with no task switch per event.

    pool = UpstreamPool()                                     # one per gateway
    upstream = await pool.send(host, port, request_bytes)    # Unreachable: try another pod
    head = await upstream.head()                              # status, reason, headers, length
    await upstream.relay(ClientSide(transport, protocol, chunked, drain), reader)
    pool.release(upstream)                                    # back to the pool, or closed
    upstream.close()                                          # not read to the end: engine aborts

Why its own: aiohttp's client hands each chunk of a stream to the handler through a
future and a task step, and its server's writer adds its own layers; a streamed answer of
16 tokens is 18 events, and that per-event path was most of the gateway's CPU per request
(docs/benchmarks.md, "Gateway"). Here the engine's bytes are parsed (status line,
headers, a chunked or content-length body, or one read until the engine closes) in the
protocol callback, passed through the usage reader, and written to the client's
transport in one `write` per read: re-framed as chunks when the client's response is
chunked. The handler's task waits once per answer, and once per pause: when the
client's write buffer passes its high-water mark, the engine's connection stops being
read until the client's drains (flow control both ways, so a slow client never makes
the gateway buffer a stream).

A connection goes back to the pool only when its answer was read to the end and the
engine did not ask to close it; an idle one is closed after `idle_seconds` (below the
engines' own keep-alive timeouts, so the gateway never sends on a connection the engine
is closing). Nothing here logs: requests and answers carry secrets and prompts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

from multidict import CIMultiDict

from openmodel.gateway.usage import UsageReader

_HEAD_END: Final = b"\r\n\r\n"
_MAX_HEAD_BYTES: Final = 64 * 1024
_MAX_CHUNK_LINE_BYTES: Final = 4096


class Unreachable(Exception):
    """The request never reached an engine that answered it: could not connect, or the
    connection closed before a byte of the answer came back. Safe to try another pod."""


class UpstreamCut(ConnectionError):
    """The engine's answer broke off (its connection closed or it sent bytes that are
    not HTTP/1.1) after the answer began."""


class ClientGone(ConnectionError):
    """The client's connection closed while its answer was being relayed."""


class WritePausable(Protocol):
    """What the relay needs of the client connection's protocol (aiohttp's request
    handler is one): whether its transport asked it to stop writing."""

    @property
    def writing_paused(self) -> bool: ...


@dataclass(frozen=True)
class ClientSide:
    """The client's end of a relayed answer, after its status and headers went out."""

    transport: asyncio.WriteTransport
    protocol: WritePausable
    chunked: bool  # frame each write as a chunk (the response's Transfer-Encoding)
    drain: Callable[[], Awaitable[None]]  # resolves when the client's buffer drained


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: str
    headers: CIMultiDict[str]  # the engine's, hop-by-hop ones left out
    content_length: int | None  # None: chunked, or read until the engine closes


# Where the parser is in an answer (plain ints: compared on every read).
_IDLE: Final = 0  # nothing sent, or the last answer read to the end
_HEAD: Final = 1
_CHUNK_SIZE: Final = 2
_CHUNK_DATA: Final = 3
_CHUNK_END: Final = 4  # the CRLF after a chunk's data
_TRAILERS: Final = 5
_LENGTH: Final = 6
_UNTIL_CLOSE: Final = 7
_DONE: Final = 8
_BROKEN: Final = 9


def request_head(path: str, host: str, headers: list[tuple[str, str]], body_length: int) -> bytes:
    """The request line and headers of a POST of `body_length` bytes: sent with the body
    in one write."""
    lines = [f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append(f"Content-Length: {body_length}\r\n\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class Upstream(asyncio.Protocol):
    """One keep-alive connection to an engine, carrying one request at a time."""

    def __init__(
        self, pool: UpstreamPool, key: tuple[str, int], hop_by_hop: frozenset[str]
    ) -> None:
        self._pool = pool
        self.key = key
        self._hop_by_hop = hop_by_hop
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self._state = _IDLE
        self._buffer = b""
        self._received_any = False
        self._keep_alive = True
        self._left = 0  # bytes left in the current chunk or content-length body
        self._head: asyncio.Future[ResponseHead] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._early: list[bytes] = []  # body read before the relay began
        self._client: ClientSide | None = None
        self._reader: UsageReader | None = None
        self._paused = False

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._keep_alive = False
        state = self._state
        if state == _UNTIL_CLOSE:
            self._state = _DONE
        elif state == _HEAD and not self._received_any:
            self._fail(Unreachable(f"the engine closed the connection ({exc or 'no error'})"))
        elif state not in (_IDLE, _DONE, _BROKEN):
            self._fail(UpstreamCut(f"the engine closed the connection mid-answer ({exc})"))
        self._pool.forget(self)
        self._wake()

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state in (_IDLE, _DONE, _BROKEN):
            # Bytes nobody asked for: the connection cannot be trusted with another request.
            self._keep_alive = False
            self.close()
            return
        self._received_any = True
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        position = 0
        if state == _HEAD:
            position = self._parse_head(buffer)
            if position < 0:
                return
        parts: list[bytes] = []
        try:
            position = self._parse_body(buffer, position, parts)
        except ValueError as e:
            self._fail(UpstreamCut(f"the engine's answer is not valid HTTP/1.1: {e}"))
            self.close()
            self._wake()
            return
        if position < len(buffer):
            rest = buffer[position:]
            if self._state == _DONE:
                # More than one answer: not a connection to send on again.
                self._keep_alive = False
            else:
                self._buffer = rest
        if parts:
            if self._client is None:
                self._early.extend(parts)
            else:
                self._forward(parts[0] if len(parts) == 1 else b"".join(parts))
        if self._state == _DONE:
            self._wake()

    # --- parsing ---

    def _parse_head(self, buffer: bytes) -> int:
        """Where the body starts in `buffer`, or -1 (head incomplete, or broken)."""
        start = 0
        while True:
            end = buffer.find(_HEAD_END, start)
            if end < 0:
                if len(buffer) - start > _MAX_HEAD_BYTES:
                    self._broken("the engine's response headers are too large")
                else:
                    self._buffer = buffer[start:] if start else buffer
                return -1
            try:
                head = self._head_of(buffer[start:end].decode("utf-8", "surrogateescape"))
            except ValueError as e:
                self._broken(f"the engine's response head is not valid HTTP/1.1: {e}")
                return -1
            start = end + 4
            if head is not None:  # else an interim 1xx answer: the real one follows
                break
        if self._head is not None and not self._head.done():
            self._head.set_result(head)
        return start

    def _head_of(self, text: str) -> ResponseHead | None:
        lines = text.split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ValueError(f"status line {lines[0][:80]!r}")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            return None
        headers: CIMultiDict[str] = CIMultiDict()
        length: int | None = None
        chunked = False
        keep_alive = version == "HTTP/1.1"
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ValueError(f"header line {line[:80]!r}")
            value = value.strip()
            lowered = name.lower()
            if lowered == "content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise ValueError(f"Content-Length {value[:20]!r}")
                length = int(value)
            elif lowered == "transfer-encoding":
                chunked = value.lower().endswith("chunked")
            elif lowered == "connection":
                tokens = {t.strip().lower() for t in value.split(",")}
                keep_alive = "close" not in tokens and (keep_alive or "keep-alive" in tokens)
            if lowered not in self._hop_by_hop:
                headers.add(name, value)
        self._keep_alive = self._keep_alive and keep_alive
        if status in (204, 304):
            self._state, length = _DONE, 0
        elif chunked:
            self._state, length = _CHUNK_SIZE, None
        elif length is not None:
            self._state, self._left = (_LENGTH, length) if length else (_DONE, 0)
        else:
            self._state, self._keep_alive = _UNTIL_CLOSE, False
        return ResponseHead(status, reason, headers, length)

    def _parse_body(self, buffer: bytes, position: int, parts: list[bytes]) -> int:
        """Append the body bytes found in `buffer` from `position` to `parts`; where the
        unread rest begins. ValueError: the framing is broken."""
        size = len(buffer)
        while position < size:
            state = self._state
            if state in (_CHUNK_DATA, _LENGTH):
                take = min(self._left, size - position)
                parts.append(buffer[position : position + take])
                position += take
                self._left -= take
                if not self._left:
                    self._state = _CHUNK_END if state == _CHUNK_DATA else _DONE
            elif state == _CHUNK_SIZE:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    if size - position > _MAX_CHUNK_LINE_BYTES:
                        raise ValueError("chunk size line too long")
                    break
                chunk = int(buffer[position:line_end].split(b";", 1)[0].strip(), 16)
                if chunk < 0:
                    raise ValueError("negative chunk size")
                position = line_end + 2
                if chunk:
                    self._state, self._left = _CHUNK_DATA, chunk
                else:
                    self._state = _TRAILERS
            elif state == _CHUNK_END:
                if size - position < 2:
                    break
                if buffer[position : position + 2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                position += 2
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if buffer.startswith(b"\r\n", position):
                    position += 2
                    self._state = _DONE
                    continue
                end = buffer.find(_HEAD_END, position)
                if end < 0:
                    break
                position = end + 4
                self._state = _DONE
            elif state == _UNTIL_CLOSE:
                parts.append(buffer[position:] if position else buffer)
                position = size
            else:  # DONE: what follows is not this answer's
                break
        return position

    # --- the relay ---

    def _forward(self, data: bytes) -> None:
        reader = self._reader
        self._emit(reader.feed(data) if reader is not None else data)

    def _emit(self, data: bytes) -> None:
        client = self._client
        if not data or client is None:
            return
        transport = client.transport
        if transport.is_closing():
            self._fail(ClientGone("the client closed its connection"))
            self.close()
            self._wake()
            return
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if client.chunked else data)
        if client.protocol.writing_paused and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
            head.exception()  # retrieved here too: whoever awaits it re-raises it

    def _broken(self, why: str) -> None:
        self._state = _BROKEN
        self._fail(UpstreamCut(why))
        self.close()

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # --- what the gateway calls ---

    def send(self, request: bytes) -> None:
        assert self.transport is not None and self._state == _IDLE
        self._state = _HEAD
        self._received_any = False
        self._error = None
        self._early = []
        self._client = None
        self._reader = None
        self._paused = False
        self._head = self._loop.create_future()
        self.transport.write(request)

    async def head(self) -> ResponseHead:
        """The answer's status line and headers. Unreachable: no answer came back (try
        another pod); UpstreamCut: a broken one."""
        assert self._head is not None
        return await self._head

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    async def body(self) -> bytes:
        """The rest of the answer, kept (for small ones only: the draining engine's refusal)."""
        while self._state != _DONE:
            if self._error is not None:
                raise self._error
            await self._wait()
        body, self._early = b"".join(self._early), []
        return body

    async def relay(self, client: ClientSide, reader: UsageReader | None) -> None:
        """Write the rest of the answer to `client` as it arrives (through `reader`,
        whose `end()` is written last) and return once it is all written.
        UpstreamCut / ClientGone: it broke off; CancelledError: the caller closes."""
        self._client, self._reader = client, reader
        if self._early:
            early, self._early = self._early, []
            self._forward(b"".join(early))
        while self._state != _DONE or self._paused:
            if self._error is not None:
                raise self._error
            if self._paused:
                await client.drain()
                self._paused = False
                if self.transport is not None:
                    self.transport.resume_reading()
                continue
            await self._wait()
        if self._error is not None:
            raise self._error
        if reader is not None:
            self._emit(reader.end())
            if self._error is not None:
                raise self._error

    def reusable(self) -> bool:
        return (
            self._state == _DONE
            and self._keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
            and self._error is None
        )

    def idle(self) -> None:
        """Back in the pool: ready for the next request."""
        self._state = _IDLE
        self._client = None
        self._reader = None
        self._head = None

    def close(self) -> None:
        """Close the connection (an unfinished answer: the engine aborts the request)."""
        self._keep_alive = False
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.transport is not None:
            self.transport.close()


@dataclass
class UpstreamPool:
    """Keep-alive connections per engine address, most recently used first."""

    # Headers of the engine's answer not passed on (the proxy's hop-by-hop set).
    hop_by_hop: frozenset[str] = frozenset()
    idle_seconds: float = 3.0
    connect_seconds: float = 5.0
    _idle: dict[tuple[str, int], list[Upstream]] = field(default_factory=dict)
    in_use: set[Upstream] = field(default_factory=set)  # sent on, answer not released

    async def send(self, host: str, port: int, request: bytes) -> Upstream:
        """`request` sent on an idle connection to (host, port), or a new one.
        Unreachable: no connection could be opened."""
        key = (host, port)
        idle = self._idle.get(key)
        while idle:
            upstream = idle.pop()
            if upstream.idle_timer is not None:
                upstream.idle_timer.cancel()
                upstream.idle_timer = None
            if upstream.transport is not None and not upstream.transport.is_closing():
                upstream.send(request)
                self.in_use.add(upstream)
                return upstream
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_seconds):
                _, upstream = await loop.create_connection(
                    lambda: Upstream(self, key, self.hop_by_hop), host, port
                )
        except (OSError, TimeoutError) as e:
            raise Unreachable(f"cannot connect to {host}:{port}: {e}") from e
        upstream.send(request)
        self.in_use.add(upstream)
        return upstream

    def release(self, upstream: Upstream) -> None:
        """An answer ended: keep its connection for the next request when it can carry one."""
        self.in_use.discard(upstream)
        if not upstream.reusable():
            upstream.close()
            return
        upstream.idle()
        self._idle.setdefault(upstream.key, []).append(upstream)
        upstream.idle_timer = asyncio.get_running_loop().call_later(
            self.idle_seconds, self._expire, upstream
        )

    def _expire(self, upstream: Upstream) -> None:
        upstream.idle_timer = None
        self.forget(upstream)
        upstream.close()

    def forget(self, upstream: Upstream) -> None:
        """`upstream` closed: no longer the pool's."""
        self.in_use.discard(upstream)
        idle = self._idle.get(upstream.key)
        if idle and upstream in idle:
            idle.remove(upstream)

    def idle_count(self, host: str, port: int) -> int:
        return len(self._idle.get((host, port), ()))

    def close(self) -> None:
        """Close every idle connection (the gateway is stopping)."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for upstream in connections:
                upstream.close()
