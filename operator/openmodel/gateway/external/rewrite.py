"""What goes to an external model and what comes back, as pure functions.

Out: the client's body with `model` set to the upstream's name, and headers built from
the ExternalModel alone (its key, its `spec.headers`): nothing of the client's own
headers goes out (its `Authorization` is the gateway's credential, not the upstream's).
Back: every answer's `model` is the name the client sent, in a JSON body and in each
server-sent event (`ModelRewriter` keeps a partial event until its end, so a stream
stays unbuffered event by event).
"""

from __future__ import annotations

import json
from typing import Any, Final

from openmodel.external_model import DEFAULT_API_KEY_HEADER, ExternalModel
from openmodel.gateway.usage import split_events

_DATA: Final = b"data:"


def upstream_body(forwarded: bytes, upstream_model: str) -> bytes:
    """The body to send: `forwarded` (a JSON object) with `model` replaced."""
    document = json.loads(forwarded)
    document["model"] = upstream_model
    return json.dumps(document, ensure_ascii=False).encode()


def upstream_headers(external: ExternalModel, key: str | None) -> dict[str, str]:
    """spec.headers, then the key: `Bearer <key>` in Authorization, the key alone in any
    other header spec.apiKeyHeader names."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    for rule in external.headers:
        headers[rule.name] = rule.value
    if key is not None:
        header = external.api_key_header
        bearer = header.lower() == DEFAULT_API_KEY_HEADER.lower()
        headers[header] = f"Bearer {key}" if bearer else key
    return headers


def rewrite_json(body: bytes, model: str) -> bytes:
    """A JSON answer with its top-level `model` set to `model`; unchanged when it is not
    a JSON object carrying `model` (an error body, say)."""
    try:
        document: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body
    if not isinstance(document, dict) or "model" not in document:
        return body
    document["model"] = model
    return json.dumps(document, ensure_ascii=False).encode()


def rewrite_event(event: bytes, model: str) -> bytes:
    """One server-sent event (with its terminating blank line) with the `model` of its
    JSON data rewritten; other events ([DONE], comments) unchanged."""
    body = event.rstrip(b"\r\n")
    terminator = event[len(body) :]
    lines = body.splitlines()
    data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(_DATA)]
    if not data:
        return event
    joined = b"\n".join(data)
    rewritten = rewrite_json(joined, model)
    if rewritten is joined:
        return event
    others = [line for line in lines if not line.startswith(_DATA)]
    return b"\n".join([*others, b"data: " + rewritten]) + terminator


class ModelRewriter:
    """A stream of server-sent events with every event's `model` rewritten; a partial
    event waits for its end."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        events, self._pending = split_events(self._pending + chunk)
        return b"".join([rewrite_event(event, self.model) for event in events])

    def end(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rewrite_event(rest, self.model) if rest.strip() else rest
