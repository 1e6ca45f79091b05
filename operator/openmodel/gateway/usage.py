"""Usage accounting: the engine's own token count of each answer, read as the answer
passes through the gateway (the authoritative count limits settle against and the usage
counters add up).

    plan = UsagePlan.of(path, body)       # before forwarding
    raw = plan.forwarded_body(raw)         # streams: ask the engine for its usage chunk
    reader = plan.reader()
    await response.write(reader.feed(chunk)) ... await response.write(reader.end())
    reader.usage                           # Usage, or None when the engine sent none

Answers that are not streamed carry `usage` in their JSON body. A stream carries it only
when asked (`stream_options: {include_usage: true}`): then the engine (as the
OpenAI API does) sends one more event before `data: [DONE]`, a chunk with
`"choices": []` and the `usage` object. The gateway always asks; when the client did not,
that event is taken out of what the client receives, so the client sees the stream it
asked for. Nothing here logs; a body is read only for its `usage`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

_STREAMED_PATHS: Final = ("/v1/chat/completions", "/v1/completions")
# A non-streamed body larger than this is forwarded without being kept for its usage.
MAX_KEPT_BYTES: Final = 16 * 1024 * 1024
_USAGE_KEY: Final = b'"usage"'
_DONE: Final = b"[DONE]"
_ASK_USAGE: Final = b',"stream_options":{"include_usage":true}'


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_from(document: Any) -> Usage | None:
    """The `usage` of an answer's JSON, when it has a well-formed one."""
    usage = document.get("usage") if isinstance(document, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    # Embeddings answer without completion tokens (or with 0).
    completion = _count(usage.get("completion_tokens") or 0)
    return None if prompt is None or completion is None else Usage(prompt, completion)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class UsageReader(Protocol):
    usage: Usage | None
    events: int  # stream events forwarded (0 for a JSON answer)

    def feed(self, chunk: bytes) -> bytes: ...

    def end(self) -> bytes: ...


@dataclass(frozen=True)
class UsagePlan:
    streamed: bool
    client_asked_usage: bool

    @classmethod
    def of(cls, path: str, body: Mapping[str, Any]) -> UsagePlan:
        streamed = path in _STREAMED_PATHS and body.get("stream") is True
        options = body.get("stream_options")
        asked = isinstance(options, Mapping) and options.get("include_usage") is True
        return cls(streamed, asked)

    @property
    def injects(self) -> bool:
        return self.streamed and not self.client_asked_usage

    def forwarded_body(self, raw: bytes, body: Mapping[str, Any]) -> bytes:
        """`raw` unchanged, or with the usage chunk asked for: `stream_options` added
        before the object's closing brace when the body has none (no re-encoding), else
        the body re-encoded with it merged."""
        if not self.injects:
            return raw
        if "stream_options" not in body and body:
            end = len(raw.rstrip())
            if raw[end - 1 : end] == b"}":
                return raw[: end - 1] + _ASK_USAGE + raw[end - 1 :]
        options = body.get("stream_options")
        merged = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
        return json.dumps({**body, "stream_options": merged}, ensure_ascii=False).encode()

    def reader(self) -> UsageReader:
        if self.streamed:
            return StreamUsageReader(strip=self.injects)
        return BodyUsageReader()


class BodyUsageReader:
    """A JSON answer: forwarded as it comes, kept (up to MAX_KEPT_BYTES) to read `usage`."""

    def __init__(self) -> None:
        self._kept: list[bytes] = []
        self._size = 0
        self.usage: Usage | None = None
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        if self._size <= MAX_KEPT_BYTES:
            self._kept.append(chunk)
        return chunk

    def end(self) -> bytes:
        if self._size <= MAX_KEPT_BYTES:
            try:
                self.usage = usage_from(json.loads(b"".join(self._kept)))
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.usage = None
        self._kept = []
        return b""


class StreamUsageReader:
    """Server-sent events: complete events are forwarded as they arrive (a partial one
    waits for its end), the usage is read from the event that carries it, and that event
    is dropped when `strip` (the client did not ask for it)."""

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.usage: Usage | None = None
        self.events = 0  # data events forwarded, [DONE] and the usage chunk aside
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._pending and _USAGE_KEY not in chunk and b"\r" not in chunk:
            return self._feed_plain(chunk)
        events, self._pending = split_events(self._pending + chunk)
        return b"".join([event for event in events if self._keep(event)])

    def _feed_plain(self, chunk: bytes) -> bytes:
        """`feed` for the common chunk (LF-separated events, none with a usage, nothing
        pending): nothing to drop, so the complete events pass as one slice; only counted."""
        events = chunk.split(b"\n\n")
        self._pending = events.pop()
        for event in events:
            if event.startswith(b"data:") and b"\n" not in event:
                if event[5:].strip() != _DONE:
                    self.events += 1
            else:
                self._keep(event + b"\n\n")  # counts it, when it has data
        return chunk[: len(chunk) - len(self._pending)] if self._pending else chunk

    def end(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest if not rest or self._keep(rest) else b""

    def _keep(self, event: bytes) -> bool:
        payload = _data_of(event)
        if payload is None or payload == _DONE:
            return True
        if _USAGE_KEY in payload:
            try:
                document = json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError):
                document = None
            found = usage_from(document)
            if found is not None:
                self.usage = found  # with continuous usage stats, the last is the total
                if document.get("choices") == []:
                    return not self.strip
        self.events += 1
        return True


def split_events(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete server-sent events `data` begins with (each with its terminating
    blank line), and the partial event after them, kept until the next read."""
    events: list[bytes] = []
    start = 0
    while True:
        end, size = _next_boundary(data, start)
        if end < 0:
            return events, data[start:]
        events.append(data[start : end + size])
        start = end + size


def _next_boundary(data: bytes, start: int) -> tuple[int, int]:
    """(index, length) of the next blank line ending an event, or (-1, 0)."""
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return (lf, 2) if lf >= 0 else (-1, 0)


def _data_of(event: bytes) -> bytes | None:
    """The data of one event (its `data:` lines joined), None when it has none."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")
    ]
    return b"\n".join(lines).strip() if lines else None
