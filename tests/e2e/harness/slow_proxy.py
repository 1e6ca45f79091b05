"""A slow, throttling HTTP proxy in front of kube-apiserver, for resilience tests.

The operator under test talks plain HTTP to the proxy (its kubeconfig: an http://
server and a placeholder token); the proxy talks TLS to the real API server with the
credentials of the harness's own kubeconfig. Every request waits `delay` seconds before
it is forwarded, and a seeded share of them is answered instead with what kube-apiserver
sends when it sheds load: 429, `Retry-After`, a `Status` body with reason
TooManyRequests. Responses, watches included, are streamed chunk by chunk (nothing is
buffered), so a watch's events reach the operator as the API server sends them.

`stall()` makes it hang: every request that arrives from then on waits, unanswered and
not forwarded, until `resume()`, then goes on to the API server as any other (a hung API
server that recovers); streams already open (watches) keep flowing. A request whose
client gives up meanwhile is dropped, never forwarded.

Each request is recorded (arrival and answer times, status, whether it was throttled or
held by a stall, who sent it), so a test can count 429s and check how soon a throttled
request came back. It runs in a thread of the test process, with its own event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from kubernetes import client, config

from .kubeconfig import write_token_kubeconfig

# Headers that belong to one hop, never forwarded (RFC 9110 section 7.6.1), plus the
# ones aiohttp sets itself, and the caller's credentials (the proxy uses its own).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
    }
)
PLACEHOLDER_TOKEN = "through-the-slow-proxy"


@dataclass(frozen=True)
class Recorded:
    """One request as the proxy saw it (times from time.monotonic())."""

    method: str
    path: str  # with the query string
    user_agent: str
    body_digest: str
    arrived: float
    answered: float  # when the status line was sent (a watch goes on after it)
    status: int  # 0: the client gave up before an answer (dropped, never forwarded)
    throttled: bool
    held: bool = False  # arrived during a stall

    @property
    def is_watch(self) -> bool:
        return "watch=true" in self.path or "watch=1" in self.path

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What a retry of this request repeats exactly."""
        return (self.user_agent, self.method, self.path, self.body_digest)


@dataclass(frozen=True)
class Retry:
    """A throttled request and the next identical one from the same client."""

    throttled: Recorded
    again: Recorded

    @property
    def gap(self) -> float:
        """Seconds from the 429 being sent to the request coming back."""
        return self.again.arrived - self.throttled.answered


def too_many_requests_body(retry_after: int) -> bytes:
    """kube-apiserver's own 429 body (what its max-in-flight and APF filters send)."""
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Too many requests, please try again later.",
            "reason": "TooManyRequests",
            "details": {"retryAfterSeconds": retry_after},
            "code": 429,
        }
    ).encode()


def retries(records: Sequence[Recorded]) -> tuple[list[Retry], list[Recorded]]:
    """Pair each throttled request with the next identical request (same client, method,
    path and query, body) that arrived after its 429 was sent. Returns the pairs and the
    throttled requests that never came back."""
    ordered = sorted(records, key=lambda r: r.arrived)
    pairs: list[Retry] = []
    abandoned: list[Recorded] = []
    for i, record in enumerate(ordered):
        if not record.throttled:
            continue
        again = next(
            (
                later
                for later in ordered[i + 1 :]
                if later.key == record.key and later.arrived >= record.arrived
            ),
            None,
        )
        if again is None:
            abandoned.append(record)
        else:
            pairs.append(Retry(record, again))
    return pairs, abandoned


class SlowProxy:
    """Start with `start()`, point a client at `url` (or `write_kubeconfig`), `stop()`."""

    def __init__(
        self,
        upstream_kubeconfig: Path,
        *,
        delay: float = 0.3,
        throttle_share: float = 0.1,
        retry_after: int = 1,
        seed: int = 13,
    ) -> None:
        self.delay = delay
        self.throttle_share = throttle_share
        self.retry_after = retry_after
        self._random = random.Random(seed)
        upstream = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]  # the loaders are unannotated
            config_file=str(upstream_kubeconfig), client_configuration=upstream
        )
        self._upstream = upstream
        self._records: list[Recorded] = []
        self._flowing: asyncio.Event | None = None  # cleared: stalled
        self._holding = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slow-proxy")
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def records(self) -> list[Recorded]:
        with self._lock:
            return list(self._records)

    @property
    def holding(self) -> int:
        """Requests waiting now for the stall to end."""
        with self._lock:
            return self._holding

    def stall(self) -> None:
        """From now on, hold every new request until `resume()`."""
        asyncio.run_coroutine_threadsafe(self._set_flowing(False), self._loop).result(10)

    def resume(self) -> None:
        """Forward the held requests (those whose client still waits) and the next ones."""
        asyncio.run_coroutine_threadsafe(self._set_flowing(True), self._loop).result(10)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for the proxy: plain HTTP, a placeholder token (the proxy
        authenticates upstream itself)."""
        return write_token_kubeconfig(path, self.url, None, PLACEHOLDER_TOKEN, "slow-proxy")

    def start(self) -> SlowProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _ssl_context(self) -> ssl.SSLContext | bool:
        up = self._upstream
        if not up.host.startswith("https://"):
            return False
        context = ssl.create_default_context(cafile=up.ssl_ca_cert) if up.verify_ssl else None
        if context is None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if up.cert_file and up.key_file:
            context.load_cert_chain(up.cert_file, up.key_file)
        return context

    def _upstream_auth(self) -> dict[str, str]:
        up = self._upstream
        token = up.api_key.get("BearerToken") or up.api_key.get("authorization")
        if not token:
            return {}
        prefix = up.api_key_prefix.get("BearerToken") or up.api_key_prefix.get("authorization")
        return {"Authorization": f"{prefix} {token}" if prefix else token}

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        connector = aiohttp.TCPConnector(ssl=self._ssl_context(), limit=0)
        # auto_decompress off: bytes go through as the API server encoded them.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _throttle(self) -> bool:
        with self._lock:
            return self._random.random() < self.throttle_share

    def _record(
        self, request: web.Request, body: bytes, arrived: float, status: int, held: bool = False
    ) -> None:
        record = Recorded(
            method=request.method,
            path=request.path_qs,
            user_agent=request.headers.get("User-Agent", ""),
            body_digest=hashlib.sha256(body).hexdigest()[:16],
            arrived=arrived,
            answered=time.monotonic(),
            status=status,
            throttled=status == 429,
            held=held,
        )
        with self._lock:
            self._records.append(record)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()
        held = await self._wait_while_stalled(request, body, arrived)
        throttle = self._throttle()
        await asyncio.sleep(self.delay)
        if throttle:
            self._record(request, body, arrived, 429, held)
            return web.Response(
                status=429,
                body=too_many_requests_body(self.retry_after),
                content_type="application/json",
                headers={"Retry-After": str(self.retry_after)},
            )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.update(self._upstream_auth())
        target = self._upstream.host.rstrip("/") + request.path_qs
        async with self._session.request(
            request.method, target, headers=headers, data=body or None
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP},
            )
            await response.prepare(request)
            self._record(request, body, arrived, upstream.status, held)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                # The operator closed its end (a watch it no longer wants).
                return response
            await response.write_eof()
            return response

    async def _wait_while_stalled(self, request: web.Request, body: bytes, arrived: float) -> bool:
        """True when the request was held by a stall; a client that gives up meanwhile
        cancels this handler (handler_cancellation): recorded with status 0, dropped."""
        assert self._flowing is not None
        if self._flowing.is_set():
            return False
        with self._lock:
            self._holding += 1
        try:
            await self._flowing.wait()
        except asyncio.CancelledError:
            self._record(request, body, arrived, 0, held=True)
            raise
        finally:
            with self._lock:
                self._holding -= 1
        return True
