"""Admission by budget: requests per minute, tokens per minute and concurrent requests,
per identity and per namespace (the caller's), as `gateway.limits` sets them.

    limiter = Limiter(config.gateway.limits, replicas=lambda: count.current)
    admitted = limiter.admit(caller, reserve_tokens)
    if isinstance(admitted, Refusal): answer 429 with admitted.retry_after_s
    ...  admitted.finish(actual_tokens)      # once, when the answer ended (or None: keep)

Tokens are known only after the answer, so admission charges a reservation (the request's
max_tokens plus a prompt estimate; `reservation.py`) and `finish` settles it against the
engine's usage: the unused part is given back, a larger real use is charged when learnt.

Shared by several gateway replicas: each enforces its share, limit / N, where N is the
number of ready gateway replicas it sees (`replicas.py`). Requests and concurrency shares
are at least 1 (so a budget smaller than N lets up to N through, one per replica).

Everything runs on the event loop's thread, without an await between the check and the
charge, so admission is atomic. Keys with nothing in their windows and nothing in flight
are dropped, so the state is bounded by the identities active in one window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from openmodel.config.gateway_limits import GatewayLimitsConfig, Limits
from openmodel.gateway.caller import Caller
from openmodel.gateway.limits.window import Charge, SlidingWindow

IDENTITY: Final = "identity"
NAMESPACE: Final = "namespace"
# OpenAI's error types for a 429 (the `type` of its error body).
REQUESTS: Final = "requests"
TOKENS: Final = "tokens"
# Reasons for the refusal counter.
REASON_REQUESTS: Final = "requests_per_minute"
REASON_TOKENS: Final = "tokens_per_minute"
REASON_CONCURRENT: Final = "concurrent_requests"
REASON_TOO_LARGE: Final = "request_too_large"
# No way to know when a request in flight ends: a client refused by concurrency retries soon.
_CONCURRENCY_RETRY_S: Final = 1


@dataclass
class _Budget:
    """One key's state: the two windows and the requests in flight."""

    requests: SlidingWindow
    tokens: SlidingWindow
    in_flight: int = 0

    def idle(self, now: float) -> bool:
        return self.in_flight == 0 and self.requests.empty(now) and self.tokens.empty(now)


@dataclass(frozen=True)
class Refusal:
    scope: str  # IDENTITY or NAMESPACE
    reason: str  # REASON_*
    retry_after_s: int | None  # None: it never fits (larger than the whole budget)
    message: str

    @property
    def kind(self) -> str:
        """OpenAI's error type: "tokens" when tokens were short, else "requests"."""
        return TOKENS if self.reason in (REASON_TOKENS, REASON_TOO_LARGE) else REQUESTS


@dataclass
class Admission:
    """A request let in: what it charged, settled once by `finish`."""

    limiter: Limiter
    reserved_tokens: int
    _charges: list[tuple[_Budget, Charge]] = field(default_factory=list)
    _finished: bool = False

    def finish(self, actual_tokens: int | None) -> None:
        """The answer ended: settle the reservation against `actual_tokens` (None: the
        reservation stands) and free the concurrency slot. Idempotent."""
        if self._finished:
            return
        self._finished = True
        now = self.limiter.clock()
        for budget, charge in self._charges:
            budget.in_flight -= 1
            if actual_tokens is not None:
                budget.tokens.settle(charge, actual_tokens, now)


@dataclass(frozen=True)
class _Scope:
    name: str  # IDENTITY or NAMESPACE
    key: str
    limits: Limits


class Limiter:
    def __init__(
        self,
        config: GatewayLimitsConfig,
        replicas: Callable[[], int] = lambda: 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.replicas = replicas
        self.clock = clock
        self._budgets: dict[tuple[str, str], _Budget] = {}
        self._swept = clock()

    def _scopes(self, caller: Caller) -> list[_Scope]:
        tenant = self.config.for_namespace(caller.namespace)
        scopes = [_Scope(IDENTITY, caller.identity, tenant.per_identity)]
        # Callers outside any namespace (users, `anonymous`) have only their identity's.
        if caller.namespace:
            scopes.append(_Scope(NAMESPACE, caller.namespace, tenant.per_namespace))
        return [s for s in scopes if s.limits.any]

    def _budget(self, scope: _Scope) -> _Budget:
        window = self.config.window_seconds
        return self._budgets.setdefault(
            (scope.name, scope.key), _Budget(SlidingWindow(window), SlidingWindow(window))
        )

    def share(self, per_minute: int) -> float:
        """This replica's budget per window for a limit of `per_minute`."""
        return per_minute * self.config.window_seconds / 60.0 / max(1, self.replicas())

    def admit(self, caller: Caller, tokens: int) -> Admission | Refusal:
        now = self.clock()
        self._sweep(now)
        scopes = self._scopes(caller)
        budgets = [self._budget(s) for s in scopes]
        refusals = [
            r for s, b in zip(scopes, budgets, strict=True) if (r := self._check(s, b, tokens, now))
        ]
        if refusals:
            never = [r for r in refusals if r.retry_after_s is None]
            return never[0] if never else max(refusals, key=lambda r: r.retry_after_s or 0)
        admission = Admission(self, tokens)
        for budget in budgets:
            budget.requests.charge(now, 1)
            budget.in_flight += 1
            admission._charges.append((budget, budget.tokens.charge(now, tokens)))
        return admission

    def _check(self, scope: _Scope, budget: _Budget, tokens: int, now: float) -> Refusal | None:
        limits, n = scope.limits, max(1, self.replicas())
        who = f"{scope.name} {scope.key!r}" if scope.key else scope.name
        if limits.concurrent_requests is not None:
            allowed = max(1, limits.concurrent_requests // n)
            if budget.in_flight >= allowed:
                return Refusal(
                    scope.name, REASON_CONCURRENT, _CONCURRENCY_RETRY_S,
                    f"Rate limit reached for {who}: {limits.concurrent_requests} concurrent "
                    "requests; retry when one has finished.",
                )  # fmt: skip
        waits: list[tuple[float, str, str]] = []
        if limits.requests_per_minute is not None:
            allowed_requests = max(1.0, self.share(limits.requests_per_minute))
            wait = budget.requests.wait_for(now, 1, allowed_requests)
            if wait > 0:
                waits.append((wait, REASON_REQUESTS, f"{limits.requests_per_minute} requests"))
        if limits.tokens_per_minute is not None:
            allowed_tokens = self.share(limits.tokens_per_minute)
            wait = budget.tokens.wait_for(now, tokens, allowed_tokens)
            if math.isinf(wait):
                return Refusal(
                    scope.name, REASON_TOO_LARGE, None,
                    f"Request too large for {who}: it may use {tokens} tokens (max_tokens plus "
                    f"the prompt), over the limit of {allowed_tokens:.0f} tokens per "
                    f"{self.config.window_seconds:g}s this gateway enforces; lower max_tokens.",
                )  # fmt: skip
            if wait > 0:
                waits.append((wait, REASON_TOKENS, f"{limits.tokens_per_minute} tokens"))
        if not waits:
            return None
        wait, reason, what = max(waits)
        retry_after = max(1, math.ceil(wait))
        return Refusal(
            scope.name, reason, retry_after,
            f"Rate limit reached for {who}: {what} per minute; retry in {retry_after}s.",
        )  # fmt: skip

    def _sweep(self, now: float) -> None:
        """Drop idle keys, at most once per window (keeps admission O(1) on average)."""
        if now - self._swept < self.config.window_seconds:
            return
        self._swept = now
        for key in [k for k, b in self._budgets.items() if b.idle(now)]:
            del self._budgets[key]

    def tracked(self) -> int:
        """Keys with state (identities and namespaces seen in the last window)."""
        return len(self._budgets)
