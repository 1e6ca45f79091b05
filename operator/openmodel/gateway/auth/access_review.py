"""May this caller use this ModelDeployment (or ExternalModel)? The API server's
SubjectAccessReview answers (verb `use` on `modeldeployments`, or `externalmodels`, of
group `openmodel.dev`, the object's name, in its namespace); the answer, yes or no, is
remembered for `accessCacheSeconds`, so a RoleBinding removed (or added) takes effect
within that bound.

An adapter is used through its ModelDeployment: the right to use the one is the right to
use the other. Concurrent requests asking the same question share one review; at most
`maxConcurrentReviews` are in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from openmodel.api import GROUP, PLURAL
from openmodel.config.gateway_auth import GatewayAuthConfig
from openmodel.gateway.auth.decision_cache import DecisionCache
from openmodel.gateway.auth.token_review import ReviewUnavailable
from openmodel.gateway.caller import Caller

USE_VERB: Final = "use"


@dataclass(frozen=True, slots=True)
class AccessQuestion:
    user: str
    groups: tuple[str, ...]
    namespace: str
    name: str  # the ModelDeployment (or ExternalModel)
    resource: str = PLURAL

    def body(self) -> dict[str, object]:
        """The SubjectAccessReview to create (authorization.k8s.io/v1)."""
        return {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": self.user,
                "groups": list(self.groups),
                "resourceAttributes": {
                    "group": GROUP,
                    "resource": self.resource,
                    "verb": USE_VERB,
                    "namespace": self.namespace,
                    "name": self.name,
                },
            },
        }


# question -> allowed; raises ReviewUnavailable.
ReviewAccess = Callable[[AccessQuestion], Awaitable[bool]]


def question(caller: Caller, namespace: str, name: str, resource: str = PLURAL) -> AccessQuestion:
    return AccessQuestion(caller.identity, caller.groups, namespace, name, resource)


class AccessReviewer:
    def __init__(
        self,
        review: ReviewAccess,
        config: GatewayAuthConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._review = review
        self._config = config
        self.decisions: DecisionCache[AccessQuestion, bool] = DecisionCache(
            config.access_cache_size, clock
        )
        self._slots = asyncio.Semaphore(config.max_concurrent_reviews)
        self._in_flight: dict[AccessQuestion, asyncio.Task[bool]] = {}
        self.reviews_sent = 0

    async def allowed(
        self, caller: Caller, namespace: str, name: str, resource: str = PLURAL
    ) -> bool:
        asked = question(caller, namespace, name, resource)
        known = self.decisions.get(asked)
        if known is not None:
            return known
        # Its own task: a client that goes away does not cancel the others' review.
        review = self._in_flight.get(asked)
        if review is None:
            review = asyncio.create_task(self._ask(asked))
            self._in_flight[asked] = review
            review.add_done_callback(lambda done: self._done(asked, done))
        return await asyncio.shield(review)

    def _done(self, asked: AccessQuestion, review: asyncio.Task[bool]) -> None:
        del self._in_flight[asked]
        if not review.cancelled():
            review.exception()

    async def _ask(self, asked: AccessQuestion) -> bool:
        try:
            async with asyncio.timeout(self._config.review_timeout_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise ReviewUnavailable("too many access reviews in flight") from None
        try:
            self.reviews_sent += 1
            decision = await self._review(asked)
        finally:
            self._slots.release()
        self.decisions.put(asked, decision, self._config.access_cache_seconds)
        return decision
