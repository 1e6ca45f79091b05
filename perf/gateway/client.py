"""bench_gateway's load: a client process (`python -m perf.bench_gateway --client SPEC`)
running closed loops of streamed chat completions over keep-alive connections, with a
small HTTP/1.1 client of its own (cheaper per request than aiohttp's, so the clients take
as little CPU as possible from the cores they share with the rest)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

MODEL: Final = "bench"
# The first content delta of a chat stream (the role chunk before it has "role" first).
CONTENT_MARK: Final = b'"delta":{"content":'


@dataclass
class ClientSpec:
    targets: list[tuple[str, int]]
    loops: int
    first_loop: int  # this process's first loop index over all processes (round-robin)
    tokens: int
    warm_at: float  # wall clock: loops start
    start_at: float  # wall clock: measuring starts
    end_at: float  # wall clock: no new request after this
    out: str


@dataclass
class ClientResult:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    completed_in_window: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


class BadResponse(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection, opened on first use and after an error."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, limit=1 << 20
            )
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def chat_request(host: str, port: int, tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say something."}],
            "stream": True,
            "max_tokens": tokens,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_chunked(reader: asyncio.StreamReader, t0: float) -> tuple[bytes, float | None]:
    """The body of a chunked response, and when its first content delta arrived."""
    pieces: list[bytes] = []
    first: float | None = None
    tail = b""
    while True:
        size = int((await reader.readline()).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # the end of the (empty) trailer section
            return b"".join(pieces), first
        data = (await reader.readexactly(size + 2))[:-2]
        if first is None and CONTENT_MARK in tail + data:
            first = time.perf_counter() - t0
        tail = data[-len(CONTENT_MARK) :]
        pieces.append(data)


async def stream_once(conn: Connection, request: bytes, tokens: int) -> tuple[float, float]:
    """One streamed chat completion: (time to first token, total time)."""
    reader, writer = await conn.streams()
    t0 = time.perf_counter()
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    if b"transfer-encoding: chunked" in head:
        body, ttft = await read_chunked(reader, t0)
    else:
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body, ttft = await reader.readexactly(length), None
    total = time.perf_counter() - t0
    if b"connection: close" in head:
        conn.close()
    if status != 200:
        raise BadResponse(f"HTTP {status}: {body[:200]!r}")
    events = body.count(b"data: ")
    if ttft is None or events != tokens + 2 or not body.endswith(b"data: [DONE]\n\n"):
        raise BadResponse(f"{events} events (want {tokens + 2}), ends {body[-40:]!r}")
    return ttft, total


async def client_loop(index: int, spec: ClientSpec, result: ClientResult) -> None:
    conns = [Connection(h, p) for h, p in spec.targets]
    requests = [chat_request(h, p, spec.tokens) for h, p in spec.targets]
    turn = index  # loops start on different engines, then each goes round the list
    await asyncio.sleep(max(0.0, spec.warm_at - time.time()))
    try:
        while (started := time.time()) < spec.end_at:
            i = turn % len(conns)
            turn += 1
            try:
                ttft, total = await stream_once(conns[i], requests[i], spec.tokens)
            except (OSError, ValueError, IndexError, BadResponse, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as e:  # fmt: skip
                conns[i].close()
                if started >= spec.start_at:
                    result.errors += 1
                    if len(result.error_samples) < 5:
                        result.error_samples.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.05)
                continue
            if started >= spec.start_at:
                result.ttft.append(ttft)
                result.total.append(total)
                if time.time() <= spec.end_at:
                    result.completed_in_window += 1
    finally:
        for conn in conns:
            conn.close()


async def run_client(spec: ClientSpec) -> None:
    result = ClientResult()
    await asyncio.gather(
        *(client_loop(spec.first_loop + j, spec, result) for j in range(spec.loops))
    )
    Path(spec.out).write_text(json.dumps(asdict(result)))
