"""The OpenAI-compatible proxy: route by `model`, hold while a model has no ready pod,
forward, and stream the answer back chunk by chunk.

    gateway = Gateway(table, config.gateway, access)  # access: gateway/auth/
    app = gateway.application()          # aiohttp; run with handler_cancellation=True
    monitoring = gateway.monitoring_application()  # /metrics, /demand: another port
    ...  gateway.notify() whenever the table or the scraped state changes

Request path, in order: the caller authenticated before the body is read (401, or 503
when the API server cannot answer; gateway/auth/), body within `maxBodyBytes` (else
413), valid JSON object (400), a string `model` (400), a known model (404), of the
ModelDeployments claiming it the first the caller may use (403), a path the model's
task serves (400 naming the task: a chat to an embedding model; gateway/tasks.py), the
caller's limits
(429 with Retry-After; gateway/limits/), then a pod: the least loaded routable one, or,
with none, hold (at most `holdQueueLength` per ModelDeployment, else 503 at once) until
one is ready or `holdSeconds` pass (503 with Retry-After). Connecting to a pod that just
left is retried on another pod (nothing was sent yet); once the engine answered, its
status and body go to the client unchanged (but for the usage chunk the gateway asked
for itself, below). A client that goes away
(while held or mid-stream) is forgotten: the handler is cancelled (the app runs with
handler cancellation), its hold slot and in-flight count are released, and the
upstream connection is closed, which makes the engine abort the request.
Nothing the operator does cuts a request in flight: a pod being deleted gets no new
requests, and the ones it has finish on the connection they started on.

External models (`external/`): a name an ExternalModel serves is answered by its
upstream, through the same door, limits and usage accounting, unless the caller's
namespace is private (403 `data_must_stay_in`); the answer is marked
`x-openmodel-route: external`. A ModelDeployment whose overflow the operator allowed
sends a request to its external model instead of holding it (no ready replica) or
queueing it (queue deeper than stated): marked `x-openmodel-overflow: <name>`, counted
by reason, and reported in /demand as held while the model has no ready replica (so it
wakes), never for a private namespace's model or caller, or a caller without `use` on
the external model (held as without overflow).

Limits and usage (`limits/`, `usage.py`): once routed, a request is admitted against its
caller's budgets before it is held or forwarded (else 429 with Retry-After), charged a
reservation of the tokens it may use, and settled when its answer ends against the
engine's `usage`, which the usage counters add up. Streams ask the engine for its usage
chunk and drop it from the client's stream when the client did not ask for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.http_writer import StreamWriter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from openmodel.config import GatewayConfig
from openmodel.engines import engine_for
from openmodel.gateway.affinity import affinity_key
from openmodel.gateway.auth.access_control import AccessControl
from openmodel.gateway.balancer import Balancer
from openmodel.gateway.caller import caller_of
from openmodel.gateway.errors import SERVICE_UNAVAILABLE, error_response
from openmodel.gateway.external.forward import (
    OVERFLOW_HEADER,
    ROUTE_HEADER,
    ExternalForwarder,
)
from openmodel.gateway.external.overflow import overflow_reason
from openmodel.gateway.external.privacy import PrivateNamespaces
from openmodel.gateway.limits.limiter import Admission, Limiter, Refusal
from openmodel.gateway.limits.replicas import ReplicaCount
from openmodel.gateway.limits.reservation import completion_reservation, prompt_estimate
from openmodel.gateway.metrics import GatewayMetrics
from openmodel.gateway.relay import (
    ClientGone,
    ClientSide,
    Unreachable,
    Upstream,
    UpstreamCut,
    UpstreamPool,
    request_head,
)
from openmodel.gateway.routes import Backend, Endpoint, ObjectKey, Route, RouteTable
from openmodel.gateway.tasks import ROUTED_PATHS, TASK_PATHS, wrong_task_message
from openmodel.gateway.usage import StreamUsageReader, UsagePlan, UsageReader

log = logging.getLogger(__name__)

# Not forwarded either way (RFC 9110 hop-by-hop, plus what aiohttp sets itself).
_HOP_BY_HOP: Final = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)  # fmt: skip
_SMALL_ERROR_BYTES: Final = 4096


@dataclass
class ModelActivity:
    held: int = 0
    last_request: float | None = None  # monotonic
    # Requests sent to the overflow external model: in flight now, and when each of the
    # last ones arrived (while the model has no ready replica, each counts in /demand as
    # held for as long as it could have been: the model wakes as if it had been held).
    overflowing: int = 0
    overflowed: deque[float] = field(default_factory=deque)

    def overflowed_as_held(self, now: float, window: float, ready: bool) -> int:
        while self.overflowed and (ready or now - self.overflowed[0] > window):
            self.overflowed.popleft()
        return len(self.overflowed)


@dataclass
class Exchange:
    """One admitted request's answer, as far as limits and usage need it."""

    reader: UsageReader
    prompt_estimate: int
    status: int | None = None  # the engine's status, once its answer went to the client


@dataclass
class Gateway:
    table: RouteTable
    config: GatewayConfig
    # Who may call, and use what (built from config.auth by gateway/server.py).
    access: AccessControl
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    balancer: Balancer = field(default_factory=Balancer)
    activity: dict[ObjectKey, ModelActivity] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    ready: bool = False  # the first full list of the routes arrived
    replicas: ReplicaCount = field(default_factory=ReplicaCount)
    limiter: Limiter = field(init=False)
    # External models (gateway/external/): their forwarder (None: none are served) and
    # the private namespaces, fed by the watch (until listed, every namespace counts
    # as private: nothing goes out).
    external: ExternalForwarder | None = None
    privacy: PrivateNamespaces = field(default_factory=PrivateNamespaces)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Idle connections closed after 3 s: below the shortest idle timeout of an engine's
    # HTTP server (uvicorn's 5 s), so the gateway never sends on one the engine closes.
    _pool: UpstreamPool = field(
        default_factory=lambda: UpstreamPool(_HOP_BY_HOP, idle_seconds=3.0, connect_seconds=5.0)
    )

    def __post_init__(self) -> None:
        self.balancer.policy = self.config.balancing.policy
        self.balancer.load_factor = self.config.balancing.load_factor
        self.limiter = Limiter(self.config.limits, replicas=lambda: self.replicas.current)
        self.metrics.limit_replicas.set_function(lambda: self.replicas.current)

    # --- wiring ---

    def notify(self) -> None:
        """Routes or pod state changed: wake every held request to look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    def application(self) -> web.Application:
        """The API port's app: the OpenAI routes behind the door, and the kubelet's probes."""
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[self.access.middleware]
        )
        for path in ROUTED_PATHS:
            app.router.add_post(path, self.handle_inference)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/readyz", self.handle_readyz)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    def monitoring_application(self) -> web.Application:
        """The metrics port's app: /metrics (Prometheus) and /demand (the autoscaler).
        Apart from the API because they tell per-identity usage and per-model demand to
        whoever reaches them: a NetworkPolicy opens this port to monitoring and the
        operator only (docs/security.md)."""
        app = web.Application()
        app.router.add_get("/demand", self.handle_demand)
        app.router.add_get("/metrics", self.handle_metrics)
        return app

    async def _open(self, _: web.Application) -> None:
        if self.external is not None:
            await self.external.open()

    async def _close(self, _: web.Application) -> None:
        self._pool.close()
        if self.external is not None:
            await self.external.close()

    def _activity(self, key: ObjectKey) -> ModelActivity:
        return self.activity.setdefault(key, ModelActivity())

    # --- small endpoints ---

    async def handle_healthz(self, _: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def handle_readyz(self, _: web.Request) -> web.StreamResponse:
        if not self.ready:
            return web.Response(status=503, text="routes not loaded yet")
        return web.Response(text="ok")

    async def handle_models(self, request: web.Request) -> web.StreamResponse:
        usable = await self.access.usable(request, self.table.model_claims())
        if isinstance(usable, web.Response):
            return usable
        data: list[dict[str, Any]] = []
        for name, route in usable:
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": int(self.started_wall),
                "owned_by": route.backend.key[0],
            }
            if route.adapter is not None:
                entry["parent"] = route.backend.served_name
            if route.external is not None:
                entry["openmodel"] = {
                    "kind": "ExternalModel",
                    "upstream_model": route.external.upstream_model,
                    "external": True,
                }
            data.append(entry)
        return web.json_response({"object": "list", "data": data})

    async def handle_demand(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self.demand())

    async def handle_metrics(self, _: web.Request) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    @property
    def started_wall(self) -> float:
        return time.time() - (time.monotonic() - self.started)

    def demand(self) -> dict[str, Any]:
        """What the autoscaler reads (GET /demand): per ModelDeployment, requests held,
        in flight, and seconds since the last request (or since this gateway started)."""
        now = time.monotonic()
        models = []
        for key in sorted(self.table.backends.keys() | self.activity.keys()):
            act = self.activity.get(key) or ModelActivity()
            last = act.last_request if act.last_request is not None else self.started
            ready = bool(self.table.endpoints(key))
            out = act.overflowed_as_held(now, self.config.hold_seconds, ready)
            models.append(
                {
                    "namespace": key[0],
                    "name": key[1],
                    "held": act.held + out,
                    "inFlight": self.balancer.in_flight_for(key) + act.overflowing,
                    "idleSeconds": round(max(0.0, now - last), 3),
                }
            )
        return {"models": models}

    # --- the proxy ---

    async def handle_inference(self, request: web.Request) -> web.StreamResponse:
        received = time.perf_counter()
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.errors.labels("", "body_too_large").inc()
            return error_response(
                413,
                f"request body over the gateway's limit of {self.config.max_body_bytes} bytes",
                "request_too_large",
            )
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self.metrics.errors.labels("", "invalid_json").inc()
            return error_response(400, f"request body is not valid JSON: {e}", "invalid_json")
        if not isinstance(body, dict):
            self.metrics.errors.labels("", "invalid_json").inc()
            return error_response(400, "request body must be a JSON object", "invalid_json")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self.metrics.errors.labels("", "missing_model").inc()
            return error_response(
                400, "`model` is required (a string)", "missing_model", param="model"
            )
        routes = self.table.routes(model)
        if not routes:
            self.metrics.errors.labels(model, "model_not_found").inc()
            return error_response(
                404,
                f"The model `{model}` does not exist (GET /v1/models lists the models "
                "this gateway serves).",
                "model_not_found",
                param="model",
            )
        route = await self.access.choose(request, model, routes)
        if isinstance(route, web.Response):
            self.metrics.errors.labels(model, f"auth_{route.status}").inc()
            return route
        task = route.backend.task
        if request.path not in TASK_PATHS.get(task, ()):
            self.metrics.errors.labels(model, "wrong_task").inc()
            return error_response(
                400, wrong_task_message(model, task, request.path), "wrong_task", param="model"
            )
        if route.external is not None:
            refused = self._must_stay_in(request, model, route)
            if refused is not None:
                return refused
        return await self._serve(request, raw, body, model, route, received)

    async def _serve(
        self,
        request: web.Request,
        raw: bytes,
        body: dict[str, Any],
        model: str,
        route: Route,
        received: float,
    ) -> web.StreamResponse:
        """Admit `body` (parsed from `raw` by `handle_inference`) under the caller's
        limits, route it, and settle its usage."""
        key = route.backend.key
        labels = (key[0], key[1])
        caller = caller_of(request)
        who = (caller.namespace, caller.identity)
        prompt = prompt_estimate(body)
        reserved = prompt + completion_reservation(
            request.path, body, self.config.limits.default_max_tokens
        )
        admitted = self.limiter.admit(caller, reserved)
        if isinstance(admitted, Refusal):
            self.metrics.rate_limited.labels(
                *labels, model, *who, admitted.scope, admitted.reason
            ).inc()
            self.metrics.errors.labels(model, "rate_limited").inc()
            self.metrics.requests.labels(*labels, model, "429").inc()
            return error_response(
                429,
                admitted.message,
                "rate_limit_exceeded",
                kind=admitted.kind,
                retry_after_s=admitted.retry_after_s,
            )
        plan = UsagePlan.of(request.path, body)
        exchange = Exchange(plan.reader(), prompt)
        balancing = self.config.balancing
        affinity = (
            affinity_key(body, route.adapter, balancing.prefix_characters)
            if (route.backend.balancing_policy or balancing.policy) == "prefix"
            else None
        )
        try:
            return await self._route(
                request, plan.forwarded_body(raw, body), model, route, received, exchange, affinity
            )
        finally:
            self._settle(admitted, exchange, (*labels, model, *who))

    def _must_stay_in(self, request: web.Request, model: str, route: Route) -> web.Response | None:
        """The refusal of an external model to a caller whose data must stay in."""
        namespace = caller_of(request).namespace
        if not self.privacy.synced:
            self.metrics.errors.labels(model, "privacy_unknown").inc()
            return error_response(
                503,
                f"`{model}` is an external model, and the gateway has not listed yet which "
                "namespaces are private (openmodel.dev/data=private); retry later",
                "privacy_unknown",
                kind=SERVICE_UNAVAILABLE,
                retry_after_s=1,
            )
        if not self.privacy.is_private(namespace):
            return None
        self.metrics.errors.labels(model, "data_must_stay_in").inc()
        ns, name = route.backend.key
        return error_response(
            403,
            f"`{model}` is served outside the cluster (ExternalModel {ns}/{name}), and your "
            f"namespace `{namespace}` is labelled openmodel.dev/data=private: its requests "
            "never leave the cluster",
            "data_must_stay_in",
            param="model",
        )

    def _settle(self, admitted: Admission, exchange: Exchange, labels: tuple[str, ...]) -> None:
        """The answer ended (or the client left): count the usage, settle the tokens.
        With no usage from the engine: nothing when no answer came or the engine refused
        (it generated nothing); for a stream cut short, the prompt estimate plus one token
        per event streamed; otherwise the reservation stands."""
        if exchange.status is None:
            admitted.finish(0)
            return
        metrics = self.metrics
        metrics.child(metrics.usage_requests, *labels).inc()
        usage = exchange.reader.usage
        if usage is not None:
            metrics.child(metrics.usage_prompt_tokens, *labels).inc(usage.prompt_tokens)
            metrics.child(metrics.usage_completion_tokens, *labels).inc(usage.completion_tokens)
            admitted.finish(usage.total)
        elif exchange.status >= 300:
            admitted.finish(0)
        elif exchange.reader.events:
            streamed = exchange.prompt_estimate + exchange.reader.events
            self.metrics.usage_estimated_tokens.labels(*labels).inc(streamed)
            admitted.finish(streamed)
        else:
            self.metrics.usage_estimated_tokens.labels(*labels).inc(admitted.reserved_tokens)
            admitted.finish(None)

    async def _route(
        self,
        request: web.Request,
        raw: bytes,
        model: str,
        route: Route,
        received: float,
        exchange: Exchange,
        affinity: int | None = None,
    ) -> web.StreamResponse:
        """Pick a pod (holding while there is none) and forward, until one answers; or
        overflow to the external model, or forward to it when it is one."""
        key = route.backend.key
        labels = (key[0], key[1])
        if route.external is not None:
            return await self._external_answer(
                request, raw, model, route, exchange, {ROUTE_HEADER: "external"}, labels
            )
        activity = self._activity(key)
        activity.last_request = time.monotonic()
        deadline = time.monotonic() + self.config.hold_seconds
        held_for = 0.0
        tried: set[str] = set()
        while True:
            if route.backend.overflow is not None and route.adapter is None:
                target = await self._overflow_target(request, route)
                if target is not None:
                    return await self._overflow(request, raw, model, route, exchange, *target)
            endpoint = self.balancer.pick(
                key, self.table.endpoints(key), route.adapter, exclude=tried, affinity=affinity,
                policy=route.backend.balancing_policy,
            )  # fmt: skip
            if endpoint is None:
                # No pod (or every pod refused the connection once): wait for a change.
                response, waited = await self._hold(key, route, deadline)
                held_for += waited
                if response is not None:
                    return response
                tried.clear()
                continue
            result = await self._forward(
                request, raw, route, endpoint, received, held_for, exchange
            )
            if result is not None:
                self.metrics.child(self.metrics.requests, *labels, model, str(result.status)).inc()
                activity.last_request = time.monotonic()
                return result
            tried.add(endpoint.pod)

    async def _overflow_target(
        self, request: web.Request, route: Route
    ) -> tuple[Route, str] | None:
        """(the external route, why) when this request overflows; None to stay in."""
        key = route.backend.key
        endpoints = self.table.endpoints(key)
        queued = self._activity(key).held + sum(
            self.balancer.engine_waiting.get((key, e.pod), 0.0) for e in endpoints
        )
        reason = overflow_reason(route.backend.overflow, len(endpoints), queued)
        if reason is None or self.external is None:
            return None
        # Private data never leaves: the model's namespace and the caller's (unknown
        # until listed counts as private).
        if self.privacy.is_private(key[0]) or self.privacy.is_private(caller_of(request).namespace):
            return None
        assert route.backend.overflow is not None
        for target in self.table.external_routes(route.backend.overflow.model):
            if target.backend.task == route.backend.task and await self.access.may_use(
                request, target
            ):
                return target, reason
        return None

    async def _overflow(
        self,
        request: web.Request,
        raw: bytes,
        model: str,
        route: Route,
        exchange: Exchange,
        target: Route,
        reason: str,
    ) -> web.StreamResponse:
        key = route.backend.key
        assert target.external is not None
        served = target.external.served_name
        self.metrics.child(self.metrics.overflow_requests, *key, model, served, reason).inc()
        activity = self._activity(key)
        activity.overflowed.append(time.monotonic())
        activity.overflowing += 1
        try:
            return await self._external_answer(
                request, raw, model, target, exchange, {OVERFLOW_HEADER: served}, key
            )
        finally:
            activity.overflowing -= 1
            activity.last_request = time.monotonic()

    async def _external_answer(
        self,
        request: web.Request,
        raw: bytes,
        model: str,
        target: Route,
        exchange: Exchange,
        marks: dict[str, str],
        labels: ObjectKey,
    ) -> web.StreamResponse:
        """Forward to an external model; counted under `labels` (where it was routed)."""
        assert target.external is not None
        if self.external is None:
            self.metrics.errors.labels(model, "external_unavailable").inc()
            return error_response(
                503, f"`{model}` is an external model and this gateway serves none",
                "external_unavailable", kind=SERVICE_UNAVAILABLE,
            )  # fmt: skip
        in_flight = self.metrics.child(self.metrics.in_flight, *target.backend.key)
        in_flight.inc()
        try:
            response = await self.external.forward(
                request, raw, target.external, model, exchange, marks
            )
        finally:
            in_flight.dec()
        self.metrics.child(self.metrics.requests, *labels, model, str(response.status)).inc()
        return response

    async def _hold(
        self, key: ObjectKey, route: Route, deadline: float
    ) -> tuple[web.StreamResponse | None, float]:
        """Wait for a routable pod. (None, waited) to look again; (response, waited) to end."""
        activity = self._activity(key)
        model = route.adapter or route.backend.served_name
        if activity.held >= self.config.hold_queue_length:
            self.metrics.errors.labels(model, "hold_queue_full").inc()
            return (
                error_response(
                    503,
                    f"`{model}` has no ready replica and {activity.held} requests are already "
                    "waiting for one; retry later",
                    "model_starting",
                    kind=SERVICE_UNAVAILABLE,
                    retry_after_s=max(1, int(self.config.hold_seconds // 10)),
                ),
                0.0,
            )
        started = time.monotonic()
        remaining = deadline - started
        if remaining <= 0:
            return self._hold_expired(key, model), 0.0
        activity.held += 1
        self.metrics.held.labels(*key).inc()
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout=remaining)
        except TimeoutError:
            waited = time.monotonic() - started
            self.metrics.hold_seconds.labels(*key).observe(waited)
            return self._hold_expired(key, model), waited
        finally:
            activity.held -= 1
            self.metrics.held.labels(*key).dec()
        waited = time.monotonic() - started
        self.metrics.hold_seconds.labels(*key).observe(waited)
        return None, waited

    def _hold_expired(self, key: ObjectKey, model: str) -> web.Response:
        self.metrics.errors.labels(model, "hold_timeout").inc()
        return error_response(
            503,
            f"`{model}` ({key[0]}/{key[1]}) has no ready replica after "
            f"{self.config.hold_seconds:g}s; it may still be starting: retry later",
            "model_starting",
            kind=SERVICE_UNAVAILABLE,
            retry_after_s=max(1, int(self.config.hold_seconds // 10)),
        )

    def _refused_unrun(self, backend: Backend, endpoint: Endpoint, body: bytes) -> bool:
        """A small 5xx that says the request was never run: from a pod that is leaving,
        or the engine's answer while it drains after SIGTERM (`Engine.draining_refusal`:
        an engine may still accept connections and refuse each new request so)."""
        leaving = endpoint.pod not in {e.pod for e in self.table.endpoints(backend.key)}
        draining = engine_for(backend.engine).draining_refusal
        return leaving or (draining is not None and draining in body)

    async def _forward(
        self,
        request: web.Request,
        raw: bytes,
        route: Route,
        endpoint: Endpoint,
        received: float,
        held_for: float,
        exchange: Exchange,
    ) -> web.StreamResponse | None:
        """Send to one pod and stream its answer back (gateway/relay.py). None: could not
        connect, or the engine closed before answering, or refused the request unrun
        (retry). A 200 answer passes through `exchange.reader` (usage read, usage chunk
        dropped when the client did not ask for it); others pass unchanged."""
        key = route.backend.key
        self.balancer.started(key, endpoint.pod)
        in_flight = self.metrics.child(self.metrics.in_flight, *key)
        in_flight.inc()
        upstream: Upstream | None = None
        try:
            sent = time.perf_counter()
            try:
                upstream = await self._pool.send(
                    endpoint.host, endpoint.port, _upstream_request(request, endpoint, raw)
                )
                head = await upstream.head()
            except Unreachable as e:
                log.info("gateway: %s unreachable (%s); trying another pod", endpoint.pod, e)
                return None
            engine_headers = time.perf_counter() - sent
            prefetched: bytes | None = None
            size = head.content_length
            if head.status >= 500 and size is not None and size <= _SMALL_ERROR_BYTES:
                prefetched = await upstream.body()
                if self._refused_unrun(route.backend, endpoint, prefetched):
                    log.info("gateway: %s is shutting down; trying another pod", endpoint.pod)
                    self._pool.release(upstream)
                    upstream = None
                    return None
            response = web.StreamResponse(
                status=head.status, reason=head.reason, headers=head.headers
            )
            reader = exchange.reader if head.status == 200 else None
            if size is not None and not isinstance(reader, StreamUsageReader):
                response.content_length = size
            writer = await response.prepare(request)
            exchange.status = head.status
            added = (time.perf_counter() - received) - held_for - engine_headers
            self.metrics.child(self.metrics.added_latency, *key).observe(max(0.0, added))
            if prefetched is not None:
                await response.write(prefetched)
            else:
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise ClientGone("the client closed its connection")
                chunked = isinstance(writer, StreamWriter) and writer.chunked
                client = ClientSide(transport, request.protocol, chunked, request.writer.drain)
                await upstream.relay(client, reader)
            await response.write_eof()
            self._pool.release(upstream)
            upstream = None
            return response
        except (asyncio.CancelledError, ClientGone):
            self.metrics.errors.labels(route.adapter or route.backend.served_name,
                                       "client_disconnected").inc()  # fmt: skip
            raise
        except (UpstreamCut, ConnectionResetError) as e:
            # The engine went away mid-answer (its pod was killed, not drained): the
            # headers are out, so the client sees a cut stream; say so in the log.
            self.metrics.errors.labels(route.backend.served_name, "upstream_cut").inc()
            log.warning("gateway: %s cut a response mid-way: %s", endpoint.pod, e)
            raise
        finally:
            if upstream is not None:
                upstream.close()  # not read to the end: the engine aborts the request
            self.balancer.finished(key, endpoint.pod)
            in_flight.dec()


def _upstream_request(request: web.Request, endpoint: Endpoint, raw: bytes) -> bytes:
    """The POST to the engine: the client's headers but the hop-by-hop ones, and `raw`
    as its body, in one buffer."""
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
    return request_head(request.path, f"{host}:{endpoint.port}", headers, len(raw)) + raw
