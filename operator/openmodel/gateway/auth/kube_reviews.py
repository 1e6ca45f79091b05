"""The two questions the gateway asks the API server, TokenReview
(authentication.k8s.io/v1) and SubjectAccessReview (authorization.k8s.io/v1), each one
request with the review timeout and no retry, in a thread pool as large as the number of
reviews allowed in flight. Anything but a 2xx answer in time is `ReviewUnavailable`;
nothing about the request (the token above all) goes into the message or the log.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.config.gateway_auth import GatewayAuthConfig
from openmodel.gateway.auth.access_review import AccessQuestion
from openmodel.gateway.auth.token_review import ReviewUnavailable, TokenVerdict
from openmodel.kube import calls as kube

log = logging.getLogger(__name__)

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


class KubeReviews:
    def __init__(self, api: client.ApiClient, config: GatewayAuthConfig) -> None:
        self._api = api
        self._timeout = config.review_timeout_seconds
        self._pool = ThreadPoolExecutor(
            max_workers=config.max_concurrent_reviews, thread_name_prefix="review"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _create(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._post, path, body)
        except ApiException as e:
            log.warning("gateway: %s failed: HTTP %s %s", what, e.status, e.reason)
            raise ReviewUnavailable(f"{what}: HTTP {e.status}") from None
        except Exception as e:  # timeouts, refused connections, TLS errors
            log.warning("gateway: %s failed: %s", what, type(e).__name__)
            raise ReviewUnavailable(f"{what}: {type(e).__name__}") from None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return kube.call_once(self._api, "POST", path, body=body, timeout=self._timeout)

    async def review_token(self, token: str, audiences: tuple[str, ...]) -> TokenVerdict:
        spec: dict[str, Any] = {"token": token}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        answer = (await self._create(TOKEN_REVIEWS, body, "TokenReview")).get("status") or {}
        user = answer.get("user") or {}
        if audiences and not set(answer.get("audiences") or []) & set(audiences):
            return TokenVerdict(False)
        return TokenVerdict(
            authenticated=bool(answer.get("authenticated")),
            username=str(user.get("username") or ""),
            groups=tuple(str(g) for g in user.get("groups") or []),
        )

    async def review_access(self, asked: AccessQuestion) -> bool:
        answer = await self._create(ACCESS_REVIEWS, asked.body(), "SubjectAccessReview")
        status = answer.get("status") or {}
        return bool(status.get("allowed")) and not status.get("denied")
