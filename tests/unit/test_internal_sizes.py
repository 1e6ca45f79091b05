"""openmodel_internal_entries: the operator's map sizes, read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from openmodel.map_sizes import entries
from openmodel.reconcile.reconciler import OwnWrites
from openmodel.telemetry import Telemetry


def exported(t: Telemetry) -> dict[str, float]:
    out = {}
    for family in t.registry.collect():
        if family.name == "openmodel_internal_entries":
            for sample in family.samples:
                out[sample.labels["map"]] = sample.value
    return out


def test_own_label_sets_follow_forget() -> None:
    t = Telemetry.create(CollectorRegistry())
    assert exported(t) == {
        "telemetry.desired_replicas": 0,
        "telemetry.queue_depth": 0,
        "telemetry.scaling_decisions": 0,
    }
    t.observe_queue("ns", "a", 3.0, 2)
    t.observe_queue("ns", "b", None, 1)
    t.record_scaling("ns", "a", "up")
    t.record_scaling("ns", "a", "hold")
    assert exported(t) == {
        "telemetry.desired_replicas": 2,
        "telemetry.queue_depth": 1,
        "telemetry.scaling_decisions": 2,
    }
    t.forget("ns", "a")
    t.forget("ns", "b")
    assert set(exported(t).values()) == {0}


def test_tracked_sources_are_read_at_each_scrape() -> None:
    t = Telemetry.create(CollectorRegistry())
    held: dict[str, int] = {}
    t.internal_sizes.track("reconciler.locks", lambda: len(held))
    assert exported(t)["reconciler.locks"] == 0
    held.update(a=1, b=2)
    assert exported(t)["reconciler.locks"] == 2


def test_entries_sums_dict_and_set_attributes() -> None:
    writes = OwnWrites()
    assert entries(writes) == 0
    writes.record(
        "Deployment", {"metadata": {"namespace": "a", "name": "x", "resourceVersion": "1"}}
    )
    writes.record("Service", {"metadata": {"namespace": "a", "name": "x", "resourceVersion": "2"}})
    assert entries(writes) == 2
    writes.forget("Deployment", "a", "x")
    assert entries(writes) == 1
