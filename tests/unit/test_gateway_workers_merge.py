"""`gateway.workers`: the pod's /demand and /metrics merged from its workers', the share
each worker takes (hold queue, limits), the setting's checks, the supervisor's restart
rule. The processes themselves: tests/e2e/test_gateway_workers.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from openmodel.config import ConfigError, GatewayConfig, parse_config
from openmodel.config.gateway_limits import GatewayLimitsConfig, Limits, TenantLimits
from openmodel.gateway.__main__ import parse_args
from openmodel.gateway.caller import ANONYMOUS
from openmodel.gateway.limits.limiter import Admission, Limiter, Refusal
from openmodel.gateway.limits.replicas import ReplicaCount
from openmodel.gateway.workers.merge import DemandMerger, MergeError, merge_metrics
from openmodel.gateway.workers.role import SupervisorContact, WorkerRole
from openmodel.gateway.workers.supervisor import MAX_RESTARTS, Supervisor, WorkerGaveUp


def entry(name: str, held: int, in_flight: int, idle: float, ns: str = "team") -> dict[str, Any]:
    return {"namespace": ns, "name": name, "held": held, "inFlight": in_flight,
            "idleSeconds": idle}  # fmt: skip


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in doc["models"]}


# --- /demand ---


def test_demand_sums_counts_and_takes_the_latest_request_over_the_workers() -> None:
    merged = DemandMerger().merge(
        [
            {"models": [entry("a", 3, 1, 40.0), entry("b", 0, 2, 5.0)]},
            {"models": [entry("a", 2, 0, 7.5), entry("c", 1, 0, 1.0)]},
        ],
        now=1000.0,
    )
    models = by_name(merged)
    assert [m["name"] for m in merged["models"]] == ["a", "b", "c"]
    assert (models["a"]["held"], models["a"]["inFlight"], models["a"]["idleSeconds"]) == (5, 1, 7.5)
    assert (models["b"]["held"], models["b"]["inFlight"], models["b"]["idleSeconds"]) == (0, 2, 5.0)
    assert models["c"]["held"] == 1
    assert set(merged) == {"models"}  # the shape a single gateway serves


def test_one_worker_merges_to_its_own_document() -> None:
    doc = {"models": [entry("a", 4, 2, 3.25), entry("b", 0, 0, 12.0, ns="other")]}
    assert DemandMerger().merge([doc], now=50.0) == {
        "models": sorted(doc["models"], key=lambda m: (m["namespace"], m["name"]))
    }


def test_a_restarted_worker_does_not_take_the_pods_last_request_with_it() -> None:
    merger = DemandMerger()
    merger.merge([{"models": [entry("a", 0, 0, 2.0)]}, {"models": [entry("a", 0, 0, 90.0)]}],
                 now=100.0)  # fmt: skip
    # Worker 0 died; its replacement is idle since its start, later than the last request.
    later = merger.merge(
        [{"models": [entry("a", 0, 0, 30.0)]}, {"models": [entry("a", 0, 0, 120.0)]}], now=130.0
    )
    assert by_name(later)["a"]["idleSeconds"] == 30.0
    # Only worker 1 answers (the other is between processes): the last request seen stays.
    alone = merger.merge([{"models": [entry("a", 0, 0, 125.0)]}], now=135.0)
    assert by_name(alone)["a"]["idleSeconds"] == 35.0


def test_a_model_no_worker_reports_any_more_is_forgotten() -> None:
    merger = DemandMerger()
    merger.merge([{"models": [entry("a", 0, 0, 1.0), entry("gone", 1, 0, 1.0)]}], now=10.0)
    assert [
        m["name"] for m in merger.merge([{"models": [entry("a", 0, 0, 2.0)]}], 11.0)["models"]
    ] == ["a"]
    merger.merge([{"models": [entry("gone", 0, 0, 500.0)]}], now=12.0)
    # Back (a new ModelDeployment of that name): idle as its workers say, not as before.
    assert (
        by_name(merger.merge([{"models": [entry("gone", 0, 0, 500.0)]}], 12.0))["gone"][
            "idleSeconds"
        ]
        == 500.0
    )


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"models": "x"},
        {"models": [{"namespace": "a", "name": "b"}]},
        {"models": [entry("a", 0, 0, 1.0) | {"held": "lots"}]},
        {"models": [None]},
    ],
)
def test_a_document_that_is_not_a_workers_demand_is_refused(doc: Any) -> None:
    with pytest.raises(MergeError):
        DemandMerger().merge([{"models": []}, doc], now=1.0)


# --- /metrics ---


def worker_metrics(requests: int, held: float) -> str:
    r = CollectorRegistry()
    c = Counter("gw_requests", "Requests.", ["model", "code"], registry=r)
    c.labels("m", "200").inc(requests)
    g = Gauge("gw_held", "Held.", ["model"], registry=r)
    g.labels("m").set(held)
    h = Histogram("gw_latency_seconds", "Latency.", ["model"], buckets=(0.1, 1.0), registry=r)
    for _ in range(requests):
        h.labels("m").observe(0.5)
    return generate_latest(r).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_carry_a_worker_label_and_add_up_to_the_pod() -> None:
    own = CollectorRegistry()
    Counter("gw_worker_restarts", "Restarts.", registry=own).inc(2)
    text = merge_metrics({0: worker_metrics(3, 1), 1: worker_metrics(4, 2)}, own=own).decode()
    got = samples(text)
    counts = {dict(labels)["worker"]: v for (name, labels), v in got.items()
              if name == "gw_requests_total"}  # fmt: skip
    assert counts == {"0": 3.0, "1": 4.0}
    held = sum(v for (name, _), v in got.items() if name == "gw_held")
    assert held == 3.0
    buckets = {
        (dict(labels)["worker"], dict(labels)["le"]): v
        for (name, labels), v in got.items()
        if name == "gw_latency_seconds_bucket"
    }
    assert buckets[("0", "1.0")] == 3.0 and buckets[("1", "1.0")] == 4.0
    assert got[("gw_worker_restarts_total", ())] == 2.0
    # One HELP/TYPE per family, its samples together (the text format requires it).
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    assert types.index("gw_requests_total") < types.index("gw_held")


def test_a_worker_that_sends_garbage_is_refused_by_name() -> None:
    with pytest.raises(MergeError, match="worker 1"):
        merge_metrics({0: worker_metrics(1, 0), 1: "not { metrics"})


# --- the share a worker takes ---

SOCKET = Path("/nonexistent/worker.sock")


def test_a_worker_holds_its_share_of_the_pods_hold_queue() -> None:
    config = GatewayConfig(hold_queue_length=256)
    assert WorkerRole(0, 1, socket=SOCKET, started=0.0).share(config) == config
    assert WorkerRole(1, 2, socket=SOCKET, started=0.0).share(config).hold_queue_length == 128
    # Rounded up: the pod holds at least what is configured.
    assert WorkerRole(0, 3, socket=SOCKET, started=0.0).share(config).hold_queue_length == 86
    assert WorkerRole(0, 4, socket=SOCKET, started=0.0).share(
        GatewayConfig(hold_queue_length=1)
    ) == (GatewayConfig(hold_queue_length=1))


def admit_all(lim: Limiter, n: int) -> int:
    accepted = 0
    for _ in range(n):
        result = lim.admit(ANONYMOUS, 1)
        if isinstance(result, Admission):
            result.finish(1)
            accepted += 1
        else:
            assert isinstance(result, Refusal)
    return accepted


def test_each_worker_of_each_replica_enforces_limit_over_replicas_times_workers() -> None:
    cfg = GatewayLimitsConfig(defaults=TenantLimits(Limits(requests_per_minute=12)))
    for replicas, workers, share in ((1, 1, 12), (1, 2, 6), (2, 2, 3), (3, 2, 2)):
        count = ReplicaCount.of(replicas, workers)
        lim = Limiter(cfg, replicas=lambda count=count: count.current)  # type: ignore[misc]
        assert admit_all(lim, 20) == share, (replicas, workers)


def test_the_followed_replica_count_is_multiplied_by_the_workers_per_pod() -> None:
    count = ReplicaCount.of(1, 3)
    assert count.current == 3
    ready = {"metadata": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    seen: list[int] = []

    def list_pods() -> list[dict[str, Any]]:
        seen.append(count.current)
        return [ready, ready]

    async def scenario() -> None:
        task = asyncio.create_task(count.follow(list_pods, poll_seconds=0))
        while len(seen) < 2:
            await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert seen[:2] == [3, 6]


# --- the setting ---


def test_workers_default_to_one_and_must_be_a_whole_number_of_at_least_one() -> None:
    assert parse_config({}).gateway.workers == 1
    assert parse_config({"gateway": {"workers": 4}}).gateway.workers == 4
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(ConfigError, match=r"gateway\.workers"):
            parse_config({"gateway": {"workers": bad}})


def test_the_worker_flags_come_together_and_name_a_worker_of_the_pod() -> None:
    args = parse_args(["--worker", "1/2", "--worker-socket", "/tmp/w.sock", "--parent-fd", "3",
                       "--started", "1700000000.5"])  # fmt: skip
    assert args.worker == (1, 2)
    assert parse_args([]).worker is None
    rest = ["--worker-socket", "s", "--parent-fd", "3", "--started", "1.0"]
    for bad in (["--worker", "2/2", *rest], ["--worker", "x", *rest], ["--worker", "0/2"],
                ["--worker", "0/2", *rest[:4]]):  # fmt: skip
        with pytest.raises(SystemExit):
            parse_args(bad)


# --- the supervisor's restart rule ---


def test_restarts_beyond_the_limit_in_the_window_or_a_config_error_stop_the_pod() -> None:
    supervisor = Supervisor(count=2, worker_argv=[], host="127.0.0.1", metrics_port=0)
    with pytest.raises(WorkerGaveUp) as refused:
        supervisor._count_restart(2)
    assert refused.value.code == 2
    for _ in range(MAX_RESTARTS):
        supervisor._count_restart(-9)
    with pytest.raises(WorkerGaveUp) as storm:
        supervisor._count_restart(1)
    assert storm.value.code == 1
    # Restarts older than the window do not count.
    calm = Supervisor(count=2, worker_argv=[], host="127.0.0.1", metrics_port=0)
    calm._restarts.extend([time.monotonic() - 3600] * 10)
    calm._count_restart(1)
    assert len(calm._restarts) == 1


def test_every_worker_dates_itself_from_the_pods_start() -> None:
    role = WorkerRole(1, 2, socket=SOCKET, started=1000.0)
    # A worker restarted 30 s after the pod started: its monotonic start is 30 s back.
    assert role.started_monotonic(now_wall=1030.0, now_monotonic=500.0) == 470.0
    # A wall clock set back never dates the start after now.
    assert role.started_monotonic(now_wall=990.0, now_monotonic=500.0) == 500.0


def test_a_worker_stops_once_its_supervisor_has_gone_silent() -> None:
    contact = SupervisorContact()
    assert not contact.silent(now=1000.0, silence_s=60)  # never asked: nothing to miss yet
    contact.asked(now=1000.0)
    assert not contact.silent(now=1060.0, silence_s=60)
    assert contact.silent(now=1060.5, silence_s=60)

    async def scenario() -> bool:
        stop = asyncio.Event()
        watch = SupervisorContact()
        watch.asked()
        watchdog = asyncio.create_task(watch.stop_when_silent(stop, silence_s=0.05))
        await asyncio.wait_for(stop.wait(), 5)
        await watchdog
        return stop.is_set()

    assert asyncio.run(scenario())
