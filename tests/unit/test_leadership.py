"""Leadership by the Lease's validity on the local monotonic clock (kube/leadership.py),
and the write guard every API write passes (kube/calls.py `GuardedApiClient`).

The clock is injected: validity is arithmetic on the time read just before an attempt's
first request, whatever happens after it. The e2e test of the whole (a replica whose API
calls hang past its Lease, another taking over) is tests/e2e/test_leader_stall.py.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import threading
import time
from typing import Any

import pytest
import urllib3
from fake_api_server import FakeApiServer
from kubernetes import client

from openmodel.config import PlatformConfig
from openmodel.engines import ENGINES
from openmodel.kube import calls as kube
from openmodel.kube.leadership import (
    RENEW_DEADLINE_SECONDS,
    RETRY_PERIOD_SECONDS,
    Leadership,
    LeaseTiming,
    NotLeader,
)
from openmodel.reconcile.reconciler import Reconciler

LEASE = LeaseTiming().lease_seconds


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Elector:
    """Answers each attempt with `held`; or, with `hang` set, blocks until it is cleared."""

    identity = "me-1"

    def __init__(self) -> None:
        self.held = True
        self.attempts = 0
        self.hung = 0
        self.hang = threading.Event()
        self.released = threading.Event()

    def try_acquire_or_renew(self) -> bool:
        self.attempts += 1
        if self.hang.is_set():
            self.hung += 1
            self.released.wait(30)
        return self.held


def leadership(clock: Clock) -> tuple[Leadership, list[str]]:
    elected: list[str] = []
    lead = Leadership(Elector(), clock=clock)
    lead.when_elected(lambda: elected.append(f"elected at {clock.now}"))
    return lead, elected


def test_the_timing_is_client_gos_and_its_order_is_enforced() -> None:
    assert (LEASE, RENEW_DEADLINE_SECONDS, RETRY_PERIOD_SECONDS) == (15, 10, 2)
    with pytest.raises(ValueError):
        LeaseTiming(lease_seconds=10, renew_deadline_seconds=10)
    with pytest.raises(ValueError):
        LeaseTiming(retry_period_seconds=10)


def test_without_leader_election_this_replica_always_writes() -> None:
    lead = Leadership()
    assert lead.is_leader()
    lead.check()
    assert lead.write_window() == math.inf


def test_no_write_before_the_first_attempt_holds() -> None:
    lead, elected = leadership(Clock())
    assert not lead.is_leader()
    with pytest.raises(NotLeader):
        lead.check()
    with pytest.raises(NotLeader):
        lead.write_window()
    assert elected == []


def test_valid_until_the_time_before_the_request_plus_the_renew_deadline() -> None:
    clock = Clock(1000.0)
    lead, elected = leadership(clock)
    # Read before the request; the answer came 0.8 s later: validity counts from before.
    clock.now = 1000.8
    lead.attempted(started=1000.0, held=True)
    assert elected == ["elected at 1000.8"]
    clock.now = 1000.0 + RENEW_DEADLINE_SECONDS - 0.001
    assert lead.is_leader()
    # A write sent now may take until the Lease expires by this clock, no longer.
    assert lead.write_window() == pytest.approx(LEASE - RENEW_DEADLINE_SECONDS + 0.001)
    clock.now = 1000.0 + RENEW_DEADLINE_SECONDS
    assert not lead.is_leader()
    with pytest.raises(NotLeader):
        lead.write_window()


def test_each_renewal_moves_the_deadline_and_elects_once() -> None:
    clock = Clock(0.0)
    lead, elected = leadership(clock)
    for started in (0.0, 2.0, 4.0, 6.0):
        clock.now = started + 0.01
        lead.attempted(started, held=True)
    clock.now = 15.99
    assert lead.is_leader()  # 6 + 10
    clock.now = 16.0
    assert not lead.is_leader()
    assert elected == ["elected at 0.01"]


def test_a_renewal_that_hangs_extends_nothing_and_the_lapse_is_told_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(0.0)
    lead, elected = leadership(clock)
    lead.attempted(0.0, held=True)
    # The next attempt starts at 2 s and hangs: nothing is settled, time passes.
    for now in (5.0, 9.99):
        clock.now = now
        lead.notice_lapse()
        assert lead.is_leader()
    caplog.set_level(logging.INFO, "openmodel.kube.leadership")
    for now in (10.0, 12.0, 14.0):
        clock.now = now
        lead.notice_lapse()
        assert not lead.is_leader()
    lapses = [r for r in caplog.records if "not renewed" in r.getMessage()]
    assert len(lapses) == 1 and lapses[0].levelno == logging.WARNING
    # It answers at last, 13 s after it was sent: no validity from it (2 + 10 < 15).
    clock.now = 15.0
    lead.attempted(2.0, held=True)
    assert not lead.is_leader()
    # The next one holds again: elected anew (someone may have led meanwhile).
    clock.now = 17.1
    lead.attempted(17.0, held=True)
    assert lead.is_leader()
    assert elected == ["elected at 0.0", "elected at 17.1"]


def test_another_holder_ends_the_hold_at_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(0.0)
    lead, _ = leadership(clock)
    lead.attempted(0.0, held=True)
    caplog.set_level(logging.WARNING, "openmodel.kube.leadership")
    clock.now = 2.0
    lead.attempted(2.0, held=False)
    assert not lead.is_leader()
    assert any("another replica holds" in r.getMessage() for r in caplog.records)


def test_the_renewer_lapses_while_an_attempt_hangs_and_sends_no_other() -> None:
    """The real task, with short timings: an attempt hangs; the hold ends by its deadline
    while that attempt is still out, and no other attempt is sent meanwhile."""
    timing = LeaseTiming(lease_seconds=0.9, renew_deadline_seconds=0.6, retry_period_seconds=0.1)
    elector = Elector()
    lead = Leadership(elector, timing=timing)

    async def scenario() -> tuple[float, int]:
        task = asyncio.create_task(lead.run_forever())
        try:
            while not lead.is_leader():
                await asyncio.sleep(0.01)
            elector.hang.set()
            hung_from = time.monotonic()
            while lead.is_leader():
                assert time.monotonic() < hung_from + 5, "a hung attempt kept the hold"
                await asyncio.sleep(0.01)
            lapsed_after = time.monotonic() - hung_from
            await asyncio.sleep(0.3)  # three retry periods with the attempt still out
            return lapsed_after, elector.hung
        finally:
            elector.released.set()
            task.cancel()

    lapsed_after, hung = asyncio.run(scenario())
    # By the deadline of the last renewal that answered (started before the hang); the
    # slack is the test's own polling, well under what another renewal would add.
    assert lapsed_after < timing.renew_deadline_seconds + 0.3, lapsed_after
    assert hung == 1


# -- the write guard of the API client ---------------------------------------------------


class Transport:
    """Stands in for the client's HTTP layer: records (method, timeout), answers 200 {}."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.fail = fail

    def request(self, method: str, url: str, **kw: Any) -> Any:
        self.sent.append((method, kw.get("_request_timeout")))
        if self.fail is not None:
            raise self.fail

        class Answer:
            status = 200

            def read(self) -> bytes:
                return b"{}"

        return Answer()


def guarded(lead: Leadership, transport: Transport) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:1"
    api = kube.GuardedApiClient(configuration, lead.write_window)
    api.rest_client = transport
    return api


def test_a_write_is_asked_for_just_before_it_leaves_and_refused_without_a_request() -> None:
    clock = Clock(0.0)
    lead, _ = leadership(clock)
    lead.attempted(0.0, held=True)
    transport = Transport()
    api = guarded(lead, transport)
    clock.now = 4.0
    kube.call(api, "PATCH", "/api/v1/namespaces/a/services/b", body={})
    # Given up when the Lease expires by this clock: 15 - 4 s from now.
    assert transport.sent == [("PATCH", pytest.approx(LEASE - 4.0))]
    clock.now = 11.0
    with pytest.raises(NotLeader):
        kube.call(api, "POST", "/api/v1/namespaces/a/events", body={})
    with pytest.raises(NotLeader):
        kube.apply(api, {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "a",
                   "name": "b"}})  # fmt: skip
    # Reads are never refused, nor cut short.
    kube.call(api, "GET", "/api/v1/namespaces/a/services/b")
    assert transport.sent[1:] == [("GET", 30.0)]


def test_a_write_that_times_out_after_the_hold_lapsed_is_the_refusal_not_an_api_error() -> None:
    clock = Clock(0.0)
    lead, _ = leadership(clock)
    lead.attempted(0.0, held=True)
    transport = Transport(urllib3.exceptions.ReadTimeoutError(None, "/x", "read timed out"))  # type: ignore[arg-type]
    api = guarded(lead, transport)
    clock.now = 9.0

    def hangs_past_the_deadline(method: str, url: str, **kw: Any) -> Any:
        clock.now = 9.0 + kw["_request_timeout"]
        return Transport.request(transport, method, url, **kw)

    transport.request = hangs_past_the_deadline  # type: ignore[method-assign]
    with pytest.raises(NotLeader):
        kube.call(api, "PATCH", "/api/v1/namespaces/a/services/b", body={})
    # Still the leader when it timed out: an API failure, as it was.
    lead.attempted(20.0, held=True)
    clock.now = 21.0
    transport.request = Transport.request.__get__(transport)  # type: ignore[method-assign]
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        kube.call(api, "PATCH", "/api/v1/namespaces/a/services/b", body={})


# -- a pass that outlives the hold ---------------------------------------------------------

MD = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {
        "name": "m",
        "namespace": "team-a",
        "uid": "uid-m",
        "generation": 1,
        "resourceVersion": "7",
    },
    "spec": {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "engine": "vllm",
        "gpu": {"type": "nvidia-l4", "count": 1},
        "replicas": 1,
    },
}


def test_a_pass_stops_quietly_at_the_first_write_after_the_hold_lapsed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each write asks (as the guarded client does) and takes 6 s: the hold lapses after
    the second write; the pass ends there, no error, nothing more written."""
    api = FakeApiServer().install(monkeypatch)
    clock = Clock(0.0)
    lead, _ = leadership(clock)
    lead.attempted(0.0, held=True)
    for verb in ("create", "apply"):
        real = getattr(api, verb)

        def slow_write(*args: Any, _real: Any = real, **kw: Any) -> Any:
            lead.write_window()
            clock.now += 6.0
            return _real(*args, **kw)

        monkeypatch.setattr(kube, verb, slow_write)
    r = Reconciler(object(), PlatformConfig(), is_leader=lead.is_leader)  # type: ignore[arg-type]
    r.cache.observe("ModelDeployment", copy.deepcopy(MD))
    caplog.set_level(logging.INFO)
    assert r.reconcile_by_name("team-a", "m") is None
    assert len(api.applied) == 2, api.calls
    assert [x for x in caplog.records if x.levelno >= logging.WARNING] == []
    assert any("no longer the leader" in x.getMessage() for x in caplog.records)
    # Not the leader: the next pass does not start.
    api.calls.clear()
    assert r.reconcile_by_name("team-a", "m") is None
    assert api.calls == []


def test_the_adapter_loop_asks_before_each_request_to_an_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from openmodel.adapters import loop as adapters_loop
    from openmodel.adapters.engine_api import EngineAnswer

    sent: list[str] = []

    async def loaded(session: object, api: object, base_url: str) -> frozenset[str]:
        return frozenset({"old"})

    async def load(
        session: object, api: object, base_url: str, name: str, path: str
    ) -> EngineAnswer:
        sent.append(f"load {name}")
        return EngineAnswer(ok=True, status=200, message="")

    async def unload(session: object, api: object, base_url: str, name: str) -> EngineAnswer:
        sent.append(f"unload {name}")
        return EngineAnswer(ok=True, status=200, message="")

    monkeypatch.setattr(adapters_loop, "loaded_adapters", loaded)
    monkeypatch.setattr(adapters_loop, "load_adapter", load)
    monkeypatch.setattr(adapters_loop, "unload_adapter", unload)
    clock = Clock(0.0)
    lead, _ = leadership(clock)
    loop = adapters_loop.AdapterLoop(object(), PlatformConfig(), leadership=lead)  # type: ignore[arg-type]
    body = {"metadata": {"namespace": "ns", "name": "m"}}

    def serve() -> object:
        runtime_api = next(
            e.adapters.runtime_api
            for e in ENGINES.values()
            if e.adapters and e.adapters.runtime_api
        )
        return asyncio.run(
            loop._serve_pod(None, runtime_api, body, "p", "http://x", {"new": "/a/new"})  # type: ignore[arg-type]
        )

    with pytest.raises(NotLeader):
        serve()
    assert sent == []
    lead.attempted(0.0, held=True)
    serve()
    assert sent == ["load new", "unload old"]


def test_an_autoscaler_cycle_refused_a_write_stops_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from openmodel.autoscaler.loop import AutoscalerLoop
    from openmodel.kube.cache import ObjectCache

    cache = ObjectCache()
    md = copy.deepcopy(MD)
    md["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 2, "targetQueueDepth": 1}
    cache.observe("ModelDeployment", md)
    cache.observe(
        "Deployment",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "namespace": "team-a",
                "name": "m",
                "resourceVersion": "3",
                "labels": {"openmodel.dev/model-deployment": "m"},
            },
            "spec": {"replicas": 1},
        },
    )
    loop = AutoscalerLoop(object(), PlatformConfig(), cache=cache, namespaces=[])  # type: ignore[arg-type]
    tried: list[str] = []

    async def refused(*args: Any, **kw: Any) -> None:
        tried.append("scale_one")
        raise NotLeader("me-1")

    loop.scale_one = refused  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    with pytest.raises(NotLeader):
        asyncio.run(loop.cycle(None))  # type: ignore[arg-type]
    assert tried == ["scale_one"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
