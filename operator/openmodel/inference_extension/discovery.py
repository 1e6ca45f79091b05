"""Does the API server serve the two resources the Inference Extension children need?

Asked through API discovery (`GET /apis/<group>/<version>`, readable by every
authenticated client), at most once per `ttl` seconds: the answer is cached, so a
reconcile pass normally costs no request. A failed discovery request keeps the last
answer and is retried after `retry` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.inference_extension.render import (
    POOL_API_VERSION,
    ROUTE_API_VERSION,
)
from openmodel.kube import calls as kube

log = logging.getLogger(__name__)

# (group/version, plural) the operator applies.
REQUIRED: Sequence[tuple[str, str]] = (
    (POOL_API_VERSION, "inferencepools"),
    (ROUTE_API_VERSION, "httproutes"),
)

Probe = Callable[[str], frozenset[str] | None]


def api_resources(api: client.ApiClient) -> Probe:
    """group/version -> the plural names it serves, or None when it is not served."""

    def probe(group_version: str) -> frozenset[str] | None:
        try:
            found = kube.call(api, "GET", f"/apis/{group_version}", timeout=10.0)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return frozenset(str(r.get("name")) for r in found.get("resources") or [])

    return probe


def describe(group_version: str, plural: str) -> str:
    group, version = group_version.split("/")
    return f"{plural}.{group}/{version}"


class CrdDiscovery:
    def __init__(
        self,
        probe: Probe,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = 60.0,
        retry: float = 5.0,
        required: Sequence[tuple[str, str]] = REQUIRED,
    ) -> None:
        """`required`: the (group/version, plural) resources asked for; the Inference
        Extension's by default (the reconciler asks the same way for LeaderWorkerSets)."""
        self._required = tuple(required)
        self._probe = probe
        self._clock = clock
        self._ttl = ttl
        self._retry = retry
        self._lock = threading.Lock()
        self._missing: tuple[str, ...] = tuple(describe(gv, p) for gv, p in self._required)
        self._next_check: float | None = None

    def missing(self) -> tuple[str, ...]:
        """The required resources not served (`plural.group/version`); empty: all are."""
        with self._lock:
            now = self._clock()
            if self._next_check is None or now >= self._next_check:
                self._refresh(now)
            return self._missing

    def invalidate(self) -> None:
        """Ask again on the next call (an apply just found a resource gone)."""
        with self._lock:
            self._next_check = None

    def _refresh(self, now: float) -> None:
        try:
            missing = []
            for group_version, plural in self._required:
                served = self._probe(group_version)
                if served is None or plural not in served:
                    missing.append(describe(group_version, plural))
        except (ApiException, urllib3.exceptions.HTTPError) as e:
            log.warning("API discovery of %s failed: %s", ", ".join(self._missing), e)
            self._next_check = now + self._retry
            return
        if tuple(missing) != self._missing:
            wanted = ", ".join(describe(gv, p) for gv, p in self._required)
            log.info("of %s, not served: %s", wanted, ", ".join(missing) or "none")
        self._missing = tuple(missing)
        self._next_check = now + self._ttl
