"""The operator's Prometheus metrics: names, labels, validation, forgetting, serving."""

from __future__ import annotations

import math
import re
import urllib.request
import uuid

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from openmodel import telemetry
from openmodel.telemetry import Telemetry, metrics_port, start_metrics_server


@pytest.fixture
def tm() -> Telemetry:
    return Telemetry.create(CollectorRegistry())


def value(tm: Telemetry, metric: str, /, **labels: str) -> float | None:
    return tm.registry.get_sample_value(metric, labels)


def series(tm: Telemetry, family: str) -> set[tuple[tuple[str, str], ...]]:
    text = generate_latest(tm.registry).decode()
    out = set()
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            out |= {tuple(sorted(s.labels.items())) for s in fam.samples}
    return out


def test_reconcile_results_exist_at_zero_before_any_pass(tm):
    for result in ("ok", "error", "rejected"):
        assert value(tm, "openmodel_reconcile_total", result=result) == 0.0
    assert value(tm, "openmodel_reconcile_duration_seconds_count") == 0.0


def test_record_reconcile_counts_by_result_and_observes_duration(tm):
    tm.record_reconcile("ok", 0.02, asked_by="spec")
    tm.record_reconcile("ok", 0.3, asked_by="spec")
    tm.record_reconcile("rejected", 0.004, asked_by="spec")
    assert value(tm, "openmodel_reconcile_total", result="ok") == 2.0
    assert value(tm, "openmodel_reconcile_total", result="rejected") == 1.0
    assert value(tm, "openmodel_reconcile_total", result="error") == 0.0
    assert value(tm, "openmodel_reconcile_duration_seconds_count") == 3.0
    assert value(tm, "openmodel_reconcile_duration_seconds_sum") == pytest.approx(0.324)
    assert value(tm, "openmodel_reconcile_duration_seconds_bucket", le="0.005") == 1.0
    assert value(tm, "openmodel_reconcile_duration_seconds_bucket", le="0.025") == 2.0
    assert value(tm, "openmodel_reconcile_duration_seconds_bucket", le="+Inf") == 3.0


def test_passes_the_resync_swept_are_counted_apart_and_in_the_total(tm):
    tm.record_reconcile("ok", 0.01, asked_by="spec")
    tm.record_reconcile("ok", 0.01, asked_by="sweep")
    tm.record_reconcile("error", 0.01, asked_by="sweep")
    assert value(tm, "openmodel_resync_passes_total") == 2.0
    assert value(tm, "openmodel_reconcile_total", result="ok") == 2.0
    assert value(tm, "openmodel_reconcile_total", result="error") == 1.0


def test_every_pass_is_counted_by_who_asked_and_the_old_readers_still_match(tm):
    for asker in ("spec", "child", "sweep", "retry", "resolver", "retry"):
        tm.record_reconcile("ok", 0.01, asked_by=asker)
    assert value(tm, "openmodel_reconcile_passes_total", asked_by="retry") == 2.0
    assert value(tm, "openmodel_reconcile_passes_total", asked_by="resolver") == 1.0
    assert value(tm, "openmodel_resync_passes_total") == 1.0
    # What tests/e2e/test_property_spec_fuzz.py and perf/bench_reconcile read.
    text = generate_latest(tm.registry).decode()
    found = re.findall(r'^openmodel_reconcile_total\{result="[a-z]+"\} (\S+)$', text, re.M)
    assert sorted(float(v) for v in found) == [0.0, 0.0, 6.0]
    assert re.findall(r"^openmodel_resync_passes_total (\S+)$", text, re.M) == ["1.0"]


def test_an_unknown_asker_is_refused(tm):
    with pytest.raises(ValueError, match="asked for by one of"):
        tm.record_reconcile("ok", 0.1, asked_by="events")
    assert value(tm, "openmodel_reconcile_total", result="ok") == 0.0


def test_the_queue_askers_are_the_telemetry_askers():
    from openmodel.controller.queue import Asker

    assert {a.value for a in Asker} == set(telemetry.ASKERS)


@pytest.mark.parametrize("bad", ["OK", "success", ""])
def test_unknown_reconcile_result_is_refused_not_a_new_series(tm, bad):
    with pytest.raises(ValueError, match="ok"):
        tm.record_reconcile(bad, 0.1, asked_by="spec")
    assert series(tm, "openmodel_reconcile") == {
        (("result", r),) for r in ("ok", "error", "rejected")
    }


@pytest.mark.parametrize("seconds", [-0.1, math.nan])
def test_negative_or_nan_duration_is_refused(tm, seconds):
    with pytest.raises(ValueError, match="duration"):
        tm.record_reconcile("ok", seconds, asked_by="spec")
    assert value(tm, "openmodel_reconcile_total", result="ok") == 0.0


def test_scaling_decisions_are_counted_per_model_deployment_and_direction(tm):
    tm.record_scaling("team-a", "llama", "up")
    tm.record_scaling("team-a", "llama", "up")
    tm.record_scaling("team-a", "llama", "hold")
    tm.record_scaling("team-b", "llama", "down")
    name = "openmodel_scaling_decisions_total"
    assert value(tm, name, namespace="team-a", name="llama", direction="up") == 2.0
    assert value(tm, name, namespace="team-a", name="llama", direction="hold") == 1.0
    assert value(tm, name, namespace="team-a", name="llama", direction="down") is None
    assert value(tm, name, namespace="team-b", name="llama", direction="down") == 1.0


def test_unknown_scaling_direction_is_refused(tm):
    with pytest.raises(ValueError, match="direction"):
        tm.record_scaling("ns", "md", "sideways")
    assert series(tm, "openmodel_scaling_decisions") == set()


def test_observe_queue_sets_both_gauges(tm):
    tm.observe_queue("team-a", "llama", 7.5, 3)
    assert value(tm, "openmodel_queue_depth", namespace="team-a", name="llama") == 7.5
    assert value(tm, "openmodel_desired_replicas", namespace="team-a", name="llama") == 3.0
    tm.observe_queue("team-a", "llama", 0.0, 1)
    assert value(tm, "openmodel_queue_depth", namespace="team-a", name="llama") == 0.0
    assert value(tm, "openmodel_desired_replicas", namespace="team-a", name="llama") == 1.0


@pytest.mark.parametrize("unknown", [None, math.nan])
def test_no_reading_removes_the_queue_series_instead_of_reporting_zero(tm, unknown):
    tm.observe_queue("team-a", "llama", 12.0, 4)
    tm.observe_queue("team-a", "llama", unknown, 4)
    assert value(tm, "openmodel_queue_depth", namespace="team-a", name="llama") is None
    assert value(tm, "openmodel_desired_replicas", namespace="team-a", name="llama") == 4.0


def test_negative_desired_replicas_is_refused(tm):
    with pytest.raises(ValueError, match="desired"):
        tm.observe_queue("ns", "md", 1.0, -1)


def test_forget_drops_only_that_model_deployments_series(tm):
    for ns, name in (("team-a", "llama"), ("team-a", "mistral"), ("team-b", "llama")):
        tm.record_scaling(ns, name, "up")
        tm.record_scaling(ns, name, "hold")
        tm.observe_queue(ns, name, 2.0, 2)
    tm.record_reconcile("ok", 0.1, asked_by="spec")

    tm.forget("team-a", "llama")

    for family in ("openmodel_queue_depth", "openmodel_desired_replicas"):
        assert series(tm, family) == {
            (("name", "mistral"), ("namespace", "team-a")),
            (("name", "llama"), ("namespace", "team-b")),
        }, family
    left = {
        (dict(s)["namespace"], dict(s)["name"]) for s in series(tm, "openmodel_scaling_decisions")
    }
    assert left == {("team-a", "mistral"), ("team-b", "llama")}
    # Operator-wide metrics are untouched.
    assert value(tm, "openmodel_reconcile_total", result="ok") == 1.0
    # Forgetting twice, or something never seen, is harmless.
    tm.forget("team-a", "llama")
    tm.forget("nowhere", "nothing")


def test_metrics_server_serves_the_registry_over_http(tm):
    tm.record_reconcile("error", 0.5, asked_by="spec")
    tm.observe_queue("team-a", "llama", 3.0, 2)
    server, thread = start_metrics_server(0, addr="127.0.0.1", registry=tm.registry)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert 'openmodel_reconcile_total{result="error"} 1.0' in body
    assert 'openmodel_queue_depth{name="llama",namespace="team-a"} 3.0' in body
    assert "# TYPE openmodel_reconcile_duration_seconds histogram" in body


def test_module_functions_write_to_the_default_registry():
    # A unique name keeps this independent of anything else in the process.
    name = f"md-{uuid.uuid4().hex[:8]}"
    before = REGISTRY.get_sample_value("openmodel_reconcile_total", {"result": "rejected"})
    telemetry.record_reconcile("rejected", 0.01, asked_by="spec")
    telemetry.record_scaling("ns", name, "down")
    telemetry.observe_queue("ns", name, 1.0, 1)
    after = REGISTRY.get_sample_value("openmodel_reconcile_total", {"result": "rejected"})
    assert after == (before or 0.0) + 1.0
    labels = {"namespace": "ns", "name": name}
    assert REGISTRY.get_sample_value("openmodel_queue_depth", labels) == 1.0
    assert (
        REGISTRY.get_sample_value(
            "openmodel_scaling_decisions_total", {**labels, "direction": "down"}
        )
        == 1.0
    )
    telemetry.forget("ns", name)
    assert REGISTRY.get_sample_value("openmodel_queue_depth", labels) is None
    assert REGISTRY.get_sample_value("openmodel_desired_replicas", labels) is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 9090),
        ({"OPENMODEL_METRICS_PORT": "9100"}, 9100),
        ({"OPENMODEL_METRICS_PORT": "0"}, None),
    ],
)
def test_metrics_port_from_environment(environ, expected):
    assert metrics_port(environ) == expected


@pytest.mark.parametrize("raw", ["http", "-1", "70000"])
def test_bad_metrics_port_is_refused_with_the_variable_name(raw):
    with pytest.raises(ValueError, match="OPENMODEL_METRICS_PORT"):
        metrics_port({"OPENMODEL_METRICS_PORT": raw})
