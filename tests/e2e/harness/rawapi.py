"""Raw requests to the API server through a kubernetes `ApiClient`: JSON in, bytes or
JSON out, independent of the operator's own client code and of the generated models."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException


def call(
    api: client.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    accept: str = "application/json",
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
    timeout: float = 60.0,
) -> bytes:
    """One request; the response body, or ApiException for a status outside 2xx."""
    method, url, headers, serialized, _ = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Accept": accept, "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(
        method, url, header_params=headers, body=serialized, _request_timeout=timeout
    )
    data: bytes = response.read()  # type: ignore[no-untyped-call]  # untyped in the client
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=data[:300].decode(errors="replace"))
    return data


def request(
    api: client.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    timeout: float = 30.0,
) -> dict[str, Any]:
    """`call` with a JSON answer ({} for an empty body)."""
    data = call(api, method, path, body, content_type=content_type, timeout=timeout)
    answer: dict[str, Any] = json.loads(data) if data else {}
    return answer


def watch_events(
    api: client.ApiClient,
    path: str,
    query: list[tuple[str, str]],
    stop: threading.Event,
    timeout: int = 60,
) -> Iterator[dict[str, Any]]:
    """One raw watch request on `path` (one JSON event a line) from the query's
    resourceVersion: every event, ERROR ones included, until the server ends the watch
    after `timeout` s or `stop` is set."""
    response = api.call_api(
        *api.param_serialize(
            "GET",
            path,
            query_params=[("watch", "true"), ("timeoutSeconds", str(timeout)), *query],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )[:4],
        _request_timeout=(10, timeout + 30),
    )
    buffer = b""
    try:
        for chunk in response.response.stream(65536, decode_content=True):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    yield event
            if stop.is_set():
                return
    finally:
        response.response.release_conn()
