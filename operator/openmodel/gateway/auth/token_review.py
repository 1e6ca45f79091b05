"""Who a bearer token belongs to, as the API server's TokenReview says, remembered for a
bounded time.

- A token the API server vouched for is remembered for `tokenCacheSeconds` (never past
  the JWT's own `exp`): a revoked token (its ServiceAccount deleted, its Secret removed)
  stops working within that bound plus the API server's own cache of authenticated
  tokens (10 s in kube-apiserver).
- A token it refused is remembered for `deniedCacheSeconds` only, in its own LRU, so a
  stream of random tokens can neither grow memory nor evict the good ones.
- Concurrent requests with one token share one review; at most `maxConcurrentReviews`
  reviews are in flight; a request that cannot get a slot within the review timeout is
  answered as if the API server were unreachable (`ReviewUnavailable`: 503, never let
  through).
- The caches are keyed by the token's SHA-256 digest: the gateway's memory holds no token
  beyond the request that carried it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from openmodel.config.gateway_auth import GatewayAuthConfig
from openmodel.gateway.auth.credentials import BearerToken
from openmodel.gateway.auth.decision_cache import DecisionCache
from openmodel.gateway.caller import Caller, CallerKind

SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:"


class ReviewUnavailable(Exception):
    """The API server could not be asked or did not answer (timeout, down, 5xx, 403 for
    the gateway itself): the request is refused with 503, never let through."""


@dataclass(frozen=True, slots=True)
class TokenVerdict:
    """The API server's answer to one TokenReview."""

    authenticated: bool
    username: str = ""
    groups: tuple[str, ...] = ()


# (token, audiences) -> verdict; raises ReviewUnavailable.
ReviewToken = Callable[[str, tuple[str, ...]], Awaitable[TokenVerdict]]


def caller_from(verdict: TokenVerdict) -> Caller:
    """A ServiceAccount's username is system:serviceaccount:<namespace>:<name>."""
    if verdict.username.startswith(SERVICE_ACCOUNT_PREFIX):
        namespace, _, name = verdict.username[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
        if namespace and name:
            return Caller(CallerKind.SERVICE_ACCOUNT, namespace, name, groups=verdict.groups)
    return Caller(CallerKind.USER, "", verdict.username, groups=verdict.groups)


class TokenReviewer:
    def __init__(
        self,
        review: ReviewToken,
        config: GatewayAuthConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._review = review
        self._config = config
        self._wall_clock = wall_clock
        self.known: DecisionCache[bytes, Caller] = DecisionCache(config.token_cache_size, clock)
        # Refused tokens: a tenth of the room, they are cheap to review again.
        self.refused: DecisionCache[bytes, bool] = DecisionCache(
            max(1, config.token_cache_size // 10), clock
        )
        self._slots = asyncio.Semaphore(config.max_concurrent_reviews)
        self._in_flight: dict[bytes, asyncio.Task[Caller | None]] = {}
        self.reviews_sent = 0

    def cached(self, credential: BearerToken) -> tuple[bytes, Caller | None, bool]:
        """(digest, caller remembered, whether the token is remembered as refused)."""
        digest = hashlib.sha256(credential.token.encode()).digest()
        return digest, self.known.get(digest), self.refused.get(digest) is not None

    async def caller(self, credential: BearerToken) -> Caller | None:
        """The token's caller; None when the API server refuses it."""
        digest, known, refused = self.cached(credential)
        if known is not None:
            return known
        if refused:
            return None
        # The review runs as a task of its own: a client that goes away does not cancel
        # the review the other requests with the same token wait for.
        review = self._in_flight.get(digest)
        if review is None:
            review = asyncio.create_task(self._ask(digest, credential))
            self._in_flight[digest] = review
            review.add_done_callback(lambda done: self._done(digest, done))
        return await asyncio.shield(review)

    def _done(self, digest: bytes, review: asyncio.Task[Caller | None]) -> None:
        del self._in_flight[digest]
        if not review.cancelled():
            review.exception()  # retrieved: a failure nobody waited for is not logged

    async def _ask(self, digest: bytes, credential: BearerToken) -> Caller | None:
        try:
            async with asyncio.timeout(self._config.review_timeout_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise ReviewUnavailable("too many token reviews in flight") from None
        try:
            self.reviews_sent += 1
            verdict = await self._review(credential.token, self._config.audiences)
        finally:
            self._slots.release()
        if not verdict.authenticated:
            self.refused.put(digest, True, self._config.denied_cache_seconds)
            return None
        found = caller_from(verdict)
        ttl = self._config.token_cache_seconds
        if credential.expires_at is not None:
            ttl = min(ttl, credential.expires_at - self._wall_clock())
        self.known.put(digest, found, ttl)
        return found
