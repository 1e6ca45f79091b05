"""Who sent a request: what the gateway's authentication established, read by
authorization, the limits and the usage counters.

Authentication stores the caller on the aiohttp request under `CALLER_KEY` before the
request is routed; everything after it reads `caller_of(request)`. With authentication
off (an explicit platform setting for local demos) every request is `ANONYMOUS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from aiohttp import web


class CallerKind(enum.StrEnum):
    SERVICE_ACCOUNT = (
        "ServiceAccount"  # a Kubernetes ServiceAccount token, or an API key bound to one
    )
    USER = "User"  # another identity the API server's TokenReview vouched for
    ANONYMOUS = "Anonymous"  # authentication off


@dataclass(frozen=True)
class Caller:
    kind: CallerKind
    # The ServiceAccount's namespace; "" for a user outside any namespace.
    namespace: str
    # The ServiceAccount's name, or the user name TokenReview returned.
    name: str
    # The API key used (its resource's name), when the caller came with one.
    api_key: str | None = None
    # The groups TokenReview returned (for an API key: its ServiceAccount's groups);
    # asked about in SubjectAccessReviews, so group RoleBindings work.
    groups: tuple[str, ...] = ()

    @property
    def identity(self) -> str:
        """One string naming the caller, as metrics and limits label it."""
        if self.kind is CallerKind.SERVICE_ACCOUNT:
            return f"system:serviceaccount:{self.namespace}:{self.name}"
        return self.name


ANONYMOUS: Final = Caller(CallerKind.ANONYMOUS, "", "anonymous")
CALLER_KEY: Final = web.RequestKey("openmodel.caller", Caller)


def caller_of(request: web.Request) -> Caller:
    """The caller authentication stored on `request`; ANONYMOUS when none did."""
    found = request.get(CALLER_KEY)
    return found if isinstance(found, Caller) else ANONYMOUS
