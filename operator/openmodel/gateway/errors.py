"""OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
from typing import Final

from aiohttp import web

INVALID_REQUEST: Final = "invalid_request_error"
SERVICE_UNAVAILABLE: Final = "service_unavailable"


def error_response(
    status: int,
    message: str,
    code: str,
    *,
    kind: str = INVALID_REQUEST,
    param: str | None = None,
    retry_after_s: int | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )
