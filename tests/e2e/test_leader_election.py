"""Only one operator replica scales: the autoscaler's Lease against the real API server."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client

from openmodel.kube.leader import LeaseElector

pytestmark = pytest.mark.cluster


class Clock:
    """An injected clock, so expiry is tested without waiting for it."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def test_one_holder_renewal_and_takeover_after_expiry(
    api_client: client.ApiClient, namespace: str
) -> None:
    clock = Clock()
    a = LeaseElector(api_client, namespace, "openmodel-autoscaler", "a", 15, clock)
    b = LeaseElector(api_client, namespace, "openmodel-autoscaler", "b", 15, clock)
    assert a.try_acquire_or_renew() is True  # creates the Lease
    assert b.try_acquire_or_renew() is False  # held by a, not expired
    clock.now += dt.timedelta(seconds=10)
    assert a.try_acquire_or_renew() is True  # renews
    clock.now += dt.timedelta(seconds=10)
    assert b.try_acquire_or_renew() is False  # renewed 10 s ago: still a's
    clock.now += dt.timedelta(seconds=16)
    assert b.try_acquire_or_renew() is True  # a stopped renewing: b takes over
    assert a.try_acquire_or_renew() is False  # and a stays out
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease(
        "openmodel-autoscaler", namespace
    )
    assert lease.spec.holder_identity == "b"


def test_concurrent_candidates_never_both_win(api_client: client.ApiClient, namespace: str) -> None:
    clock = Clock()
    electors = [
        LeaseElector(api_client, namespace, "openmodel-autoscaler", f"c{i}", 15, clock)
        for i in range(5)
    ]
    with ThreadPoolExecutor(5) as pool:
        won = list(pool.map(lambda e: e.try_acquire_or_renew(), electors))
    assert won.count(True) == 1, won
