"""The gateway's door: who the caller is (before the body is read) and which of a name's
ModelDeployments it may use (once the route is known), in the configured mode.

- `enforce` (the default): no or a malformed credential, an unknown token or key: 401
  (`invalid_api_key`, `WWW-Authenticate: Bearer`); a caller without `use` on every
  ModelDeployment the name resolves to: 403 (`permission_denied`); the API server
  unable to answer: 503. Never let through on doubt.
- `audit`: the same checks, counted by outcome in
  `openmodel_gateway_auth_decisions_total`, nothing refused (a platform turning auth on
  sees who would be refused before anyone is).
- `off`: every caller is ANONYMOUS and may use everything (local demos; logged as a
  WARNING at start).

The caller is stored on the request under `CALLER_KEY` (gateway/caller.py) for the
limits and the usage counters. `/healthz` and `/readyz` stay open (the kubelet's
probes); `/metrics` and `/demand` are not on this port at all but on the metrics port,
which a NetworkPolicy opens to Prometheus and the autoscaler only: docs/security.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from openmodel.config import AuthMode
from openmodel.gateway.auth.access_review import AccessReviewer
from openmodel.gateway.auth.api_keys import ApiKeyIndex
from openmodel.gateway.auth.credentials import (
    ApiKeyCredential,
    BearerToken,
    Malformed,
    parse_authorization,
)
from openmodel.gateway.auth.token_review import ReviewUnavailable, TokenReviewer
from openmodel.gateway.caller import ANONYMOUS, CALLER_KEY, Caller, caller_of
from openmodel.gateway.errors import SERVICE_UNAVAILABLE, error_response
from openmodel.gateway.routes import Route

log = logging.getLogger(__name__)

PROTECTED_PREFIX: Final = "/v1/"
_RETRY_AFTER_S: Final = 1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AuthMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "openmodel_gateway_auth_decisions",
            "Authentication and authorization outcomes (audit mode counts what enforce "
            "would refuse), by stage and outcome.",
            ["mode", "stage", "outcome"],
            registry=registry,
        )
        self.cache_entries = Gauge(
            "openmodel_gateway_auth_cache_entries",
            "Entries in the gateway's caches of TokenReview answers and access decisions.",
            ["cache"],
            registry=registry,
        )
        self.reviews = Gauge(
            "openmodel_gateway_auth_reviews_sent",
            "TokenReviews and SubjectAccessReviews sent to the API server since start.",
            ["review"],
            registry=registry,
        )


def unauthenticated(message: str) -> web.Response:
    response = error_response(401, message, "invalid_api_key")
    response.headers["WWW-Authenticate"] = 'Bearer realm="openmodel"'
    return response


def unavailable(what: str) -> web.Response:
    return error_response(
        503,
        f"the gateway could not {what} (the Kubernetes API did not answer); retry later",
        "auth_unavailable",
        kind=SERVICE_UNAVAILABLE,
        retry_after_s=_RETRY_AFTER_S,
    )


def forbidden(model: str, kind: str = "ModelDeployment") -> web.Response:
    return error_response(
        403,
        f"you may not use `{model}`: it needs the `use` verb on its {kind} "
        "(e.g. a RoleBinding to the openmodel-user ClusterRole in its namespace)",
        "permission_denied",
        param="model",
    )


class AccessControl:
    def __init__(
        self,
        mode: AuthMode,
        registry: CollectorRegistry,
        tokens: TokenReviewer | None = None,
        keys: ApiKeyIndex | None = None,
        access: AccessReviewer | None = None,
    ) -> None:
        if mode is not AuthMode.OFF and (tokens is None or keys is None or access is None):
            raise ValueError(f"auth mode {mode} needs the token, key and access checks")
        self.mode = mode
        self.tokens = tokens
        self.keys = keys
        self.access = access
        self.metrics = AuthMetrics(registry)
        if tokens is not None and access is not None:
            self.metrics.cache_entries.labels("tokens").set_function(lambda: len(tokens.known))
            self.metrics.cache_entries.labels("refused_tokens").set_function(
                lambda: len(tokens.refused)
            )
            self.metrics.cache_entries.labels("access").set_function(lambda: len(access.decisions))
            self.metrics.reviews.labels("token").set_function(lambda: tokens.reviews_sent)
            self.metrics.reviews.labels("access").set_function(lambda: access.reviews_sent)

    @classmethod
    def off(cls, registry: CollectorRegistry) -> AccessControl:
        return cls(AuthMode.OFF, registry)

    def _count(self, stage: str, outcome: str) -> None:
        self.metrics.decisions.labels(self.mode.value, stage, outcome).inc()

    # --- authentication ---

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate every /v1/ request before its handler reads the body."""
        if self.mode is AuthMode.OFF or not request.path.startswith(PROTECTED_PREFIX):
            request[CALLER_KEY] = ANONYMOUS
            return await handler(request)
        found = await self.authenticate(request.headers.get("Authorization"))
        if isinstance(found, web.Response):
            if self.mode is AuthMode.ENFORCE:
                return found
            found = ANONYMOUS
        request[CALLER_KEY] = found
        return await handler(request)

    async def authenticate(self, header: str | None) -> Caller | web.Response:
        """The caller, or the refusal enforce mode answers with (counted either way)."""
        assert self.tokens is not None and self.keys is not None
        credential = parse_authorization(header)
        if credential is None:
            self._count("authenticate", "missing")
            return unauthenticated(
                "no credential: send `Authorization: Bearer <ServiceAccount token or API key>`"
            )
        if isinstance(credential, Malformed):
            self._count("authenticate", "malformed")
            return unauthenticated(credential.reason)
        caller: Caller | None
        if isinstance(credential, ApiKeyCredential):
            if not self.keys.synced:
                self._count("authenticate", "unavailable")
                return unavailable("read its API keys yet")
            caller = self.keys.caller(credential)
            if caller is None:
                self._count("authenticate", "unknown_key")
                return unauthenticated("the API key is not valid (wrong, revoked or rotated)")
        else:
            assert isinstance(credential, BearerToken)
            try:
                caller = await self.tokens.caller(credential)
            except ReviewUnavailable:
                self._count("authenticate", "unavailable")
                return unavailable("review the token")
            if caller is None:
                self._count("authenticate", "unknown_token")
                return unauthenticated("the token is not valid (expired, revoked or unknown)")
        self._count("authenticate", "authenticated")
        return caller

    # --- authorization ---

    async def choose(
        self, request: web.Request, model: str, routes: Sequence[Route]
    ) -> Route | web.Response:
        """Of the ModelDeployments claiming `model` (oldest first), the first the caller may
        use; in audit mode the oldest when it may use none."""
        if self.mode is AuthMode.OFF:
            return routes[0]
        assert self.access is not None
        caller = caller_of(request)
        failed = False
        for route in routes:
            namespace, name = route.backend.key
            try:
                if await self.access.allowed(caller, namespace, name, route.resource):
                    self._count("authorize", "allowed")
                    return route
            except ReviewUnavailable:
                failed = True
        self._count("authorize", "unavailable" if failed else "denied")
        if self.mode is AuthMode.AUDIT:
            return routes[0]
        if failed:
            return unavailable("review the caller's access")
        return forbidden(model, "ExternalModel" if routes[0].external else "ModelDeployment")

    async def may_use(self, request: web.Request, route: Route) -> bool:
        """Whether the caller may use `route` (an overflow's target): False on doubt, and
        for a refusal audit mode would only count (nothing goes out of the cluster on a
        check that did not pass)."""
        if self.mode is AuthMode.OFF:
            return True
        assert self.access is not None
        namespace, name = route.backend.key
        try:
            allowed = await self.access.allowed(caller_of(request), namespace, name, route.resource)
        except ReviewUnavailable:
            allowed = False
        self._count("authorize_overflow", "allowed" if allowed else "denied")
        return allowed

    async def usable(
        self, request: web.Request, claims: Sequence[tuple[str, list[Route]]]
    ) -> list[tuple[str, Route]] | web.Response:
        """/v1/models: each name with the route the caller would get, if any."""
        if self.mode is not AuthMode.ENFORCE:
            return [(name, routes[0]) for name, routes in claims]
        listed: list[tuple[str, Route]] = []
        for name, routes in claims:
            chosen = await self.choose(request, name, routes)
            if isinstance(chosen, Route):
                listed.append((name, chosen))
            elif chosen.status == 503:
                return chosen
        return listed
