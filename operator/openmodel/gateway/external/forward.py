"""Send one request to an external model and stream its answer back.

    forwarder = ExternalForwarder(keys, metrics)   # open()/close() with the app
    response = await forwarder.forward(request, forwarded_body, route, model, exchange,
                                       marks={"x-openmodel-route": "external"})

The body goes out with the upstream's model name and the ExternalModel's headers (its
key among them); the answer comes back with the client's model name (rewrite.py), a
stream event by event as it arrives. Faults, each counted in
`openmodel_gateway_errors_total{reason}` and answered in the OpenAI error shape:
- no answer begun within spec.timeoutSeconds: 504 `upstream_timeout`;
- the upstream refused the key (401/403): 502 `external_auth_failed`, naming the
  ExternalModel and its Secret; the upstream's body is dropped (OpenAI's echoes part of
  the key) and the key is read again on the next request (it may have been rotated);
- the key unreadable: 503 `external_key_unavailable`; the upstream unreachable: 502
  `external_unreachable`;
- 429 and every other answer: passed through, with its Retry-After;
- a stream cut mid-way: logged and counted as `upstream_cut`, and the client's stream
  is cut too (as for a self-hosted engine).
Nothing here logs a body, a header value or the key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp
from aiohttp import web

from openmodel.external_model import ExternalModel
from openmodel.gateway.errors import SERVICE_UNAVAILABLE, error_response
from openmodel.gateway.external.keys import ExternalKeys, KeyUnavailable
from openmodel.gateway.external.rewrite import (
    ModelRewriter,
    rewrite_json,
    upstream_body,
    upstream_headers,
)
from openmodel.gateway.metrics import GatewayMetrics
from openmodel.gateway.usage import StreamUsageReader, UsageReader

log = logging.getLogger(__name__)

UPSTREAM_ERROR: Final = "upstream_error"
# The marks on every answer from outside the cluster (docs/gateway.md).
ROUTE_HEADER: Final = "x-openmodel-route"
OVERFLOW_HEADER: Final = "x-openmodel-overflow"
# Answer headers passed back to the client; the rest of the upstream's stay there.
_PASSED_HEADERS: Final = ("Content-Type", "Retry-After")
_CONNECT_TIMEOUT_S: Final = 10.0


class Exchanged(Protocol):
    """What the proxy's Exchange carries that forwarding fills in."""

    reader: UsageReader
    status: int | None


def _named(external: ExternalModel) -> str:
    return f"ExternalModel {external.namespace}/{external.name} (`{external.served_name}`)"


@dataclass
class ExternalForwarder:
    keys: ExternalKeys
    metrics: GatewayMetrics
    _session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT_S),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _error(self, model: str, reason: str, response: web.Response) -> web.Response:
        self.metrics.errors.labels(model, reason).inc()
        return response

    async def forward(
        self,
        request: web.Request,
        forwarded: bytes,
        external: ExternalModel,
        model: str,
        exchange: Exchanged,
        marks: Mapping[str, str],
    ) -> web.StreamResponse:
        """`forwarded`: the client's body as the proxy would send it to an engine (the
        usage chunk asked for); `model`: the name the client sent."""
        assert self._session is not None
        try:
            key = await self.keys.key(external)
        except KeyUnavailable as e:
            return self._marked(
                self._error(
                    model,
                    "external_key_unavailable",
                    error_response(
                        503, str(e), "external_key_unavailable", kind=SERVICE_UNAVAILABLE
                    ),
                ),
                marks,
            )
        url = external.base_url + request.path.removeprefix("/v1")
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout(external.timeout_seconds):
                    upstream = await self._session.post(
                        url,
                        data=upstream_body(forwarded, external.upstream_model),
                        headers=upstream_headers(external, key),
                    )
            except TimeoutError:
                return self._marked(self._timed_out(external, model), marks)
            except aiohttp.ClientError as e:
                log.warning("gateway: %s unreachable: %s", _named(external), type(e).__name__)
                return self._marked(
                    self._error(
                        model,
                        "external_unreachable",
                        error_response(
                            502,
                            f"{_named(external)} could not be reached; retry later",
                            "external_unreachable",
                            kind=UPSTREAM_ERROR,
                        ),
                    ),
                    marks,
                )
            if upstream.status in (401, 403):
                self.keys.forget(external)
                log.warning(
                    "gateway: %s refused the key (HTTP %s)", _named(external), upstream.status
                )
                return self._marked(self._auth_failed(external, model, upstream.status), marks)
            answered = await self._relay(request, upstream, external, model, exchange, marks)
            upstream.release()
            upstream = None
            return answered
        except asyncio.CancelledError:
            self.metrics.errors.labels(model, "client_disconnected").inc()
            raise
        finally:
            if upstream is not None:
                upstream.close()  # not read to the end: the upstream stops generating

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        external: ExternalModel,
        model: str,
        exchange: Exchanged,
        marks: Mapping[str, str],
    ) -> web.StreamResponse:
        headers = {h: upstream.headers[h] for h in _PASSED_HEADERS if h in upstream.headers}
        response = web.StreamResponse(status=upstream.status, headers={**headers, **marks})
        reader = exchange.reader if upstream.status == 200 else None
        if not isinstance(reader, StreamUsageReader):
            # A JSON answer (or an error): whole, then rewritten.
            body = await upstream.read()
            if reader is not None:
                reader.feed(body)
                reader.end()
                body = rewrite_json(body, model)
            response.content_length = len(body)
            await response.prepare(request)
            exchange.status = upstream.status
            await response.write(body)
        else:
            await response.prepare(request)
            exchange.status = upstream.status
            rewriter = ModelRewriter(model)
            try:
                async for chunk in upstream.content.iter_any():
                    passed = rewriter.feed(reader.feed(chunk))
                    if passed:
                        await response.write(passed)
            except (aiohttp.ClientError, ConnectionResetError) as e:
                self.metrics.errors.labels(model, "upstream_cut").inc()
                log.warning(
                    "gateway: %s cut a response mid-way: %s", _named(external), type(e).__name__
                )
                raise
            tail = rewriter.feed(reader.end()) + rewriter.end()
            if tail:
                await response.write(tail)
        await response.write_eof()
        self._charge(external, exchange)
        return response

    def _charge(self, external: ExternalModel, exchange: Exchanged) -> None:
        usage = exchange.reader.usage
        if external.price is None or usage is None or exchange.status != 200:
            return
        cost = (
            usage.prompt_tokens * external.price.prompt_per_million
            + usage.completion_tokens * external.price.completion_per_million
        ) / 1_000_000
        self.metrics.child(self.metrics.external_cost, external.namespace, external.name).inc(cost)

    @staticmethod
    def _marked(response: web.Response, marks: Mapping[str, str]) -> web.Response:
        response.headers.update(marks)
        return response

    def _timed_out(self, external: ExternalModel, model: str) -> web.Response:
        return self._error(
            model,
            "upstream_timeout",
            error_response(
                504,
                f"{_named(external)} did not begin its answer within "
                f"{external.timeout_seconds}s (spec.timeoutSeconds); retry later",
                "upstream_timeout",
                kind=UPSTREAM_ERROR,
            ),
        )

    def _auth_failed(self, external: ExternalModel, model: str, status: int) -> web.Response:
        secret = external.api_key_secret
        where = f"Secret `{secret.name}`" if secret is not None else "no key (none is set)"
        return self._error(
            model,
            "external_auth_failed",
            error_response(
                502,
                f"{_named(external)} refused the gateway's credentials (upstream HTTP "
                f"{status}); the key in {where} may be wrong, revoked or lack access to "
                f"`{external.upstream_model}`: the platform must fix it",
                "external_auth_failed",
                kind=UPSTREAM_ERROR,
            ),
        )
