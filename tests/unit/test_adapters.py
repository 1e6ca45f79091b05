"""The adapter loop's pure parts: what a pod must load or unload, the back-off for
refused loads, and the status built from what the engines list."""

from __future__ import annotations

from openmodel.adapters.plan import BACKOFF_MAX, FailureLog, pod_actions
from openmodel.adapters.status import PodReport, adapters_status
from openmodel.kube.status_writer import loop_status_changed as status_changed

DECLARED = {"a1": "/models/tiny/adapters/a1", "a2": "/models/tiny/adapters/a2"}
POD = ("ns", "md", "pod-0")


def test_missing_adapters_are_loaded_and_undeclared_ones_unloaded() -> None:
    actions = pod_actions(DECLARED, frozenset({"a2", "old"}), POD, FailureLog(), now=0.0)
    assert actions.load == (("a1", "/models/tiny/adapters/a1"),)
    assert actions.unload == ("old",)
    settled = pod_actions(DECLARED, frozenset(DECLARED), POD, FailureLog(), now=0.0)
    assert settled.load == () and settled.unload == ()


def test_a_refused_load_backs_off_doubling_and_retries_at_once_on_a_new_path() -> None:
    log = FailureLog()
    key = (*POD, "a1")
    delays = []
    now = 0.0
    for _ in range(8):
        failure = log.record(key, DECLARED["a1"], "HTTP 500: rank too big", now)
        delays.append(failure.retry_at - now)
        assert not log.may_try(key, DECLARED["a1"], now + delays[-1] - 0.01)
        now = failure.retry_at
        assert log.may_try(key, DECLARED["a1"], now)
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0] and max(delays) == BACKOFF_MAX
    # Backing off: not loaded this poll.
    log.record(key, DECLARED["a1"], "HTTP 500", 100.0)
    assert pod_actions(DECLARED, frozenset(), POD, log, now=100.5).load == (
        ("a2", "/models/tiny/adapters/a2"),
    )
    # The user fixed the path: try at once.
    fixed = {**DECLARED, "a1": "/models/tiny/adapters/a1-fixed"}
    assert ("a1", "/models/tiny/adapters/a1-fixed") in pod_actions(
        fixed, frozenset(), POD, log, now=100.5
    ).load
    assert log.last_error("ns", "md", "a1") == "HTTP 500"
    log.forget_pods_except("ns", "md", set())
    assert log.last_error("ns", "md", "a1") is None


def test_status_counts_what_each_engine_lists() -> None:
    reports = [
        PodReport("p0", frozenset({"a1", "a2"})),
        PodReport("p1", frozenset({"a1"})),
        PodReport("p2", None),  # its /v1/models could not be read
    ]
    status = adapters_status(["a1", "a2"], reports, {}, generation=3)
    assert status["adapters"] == [
        {"name": "a1", "loadedPods": 2, "readyPods": 3},
        {"name": "a2", "loadedPods": 1, "readyPods": 3},
    ]
    assert status["adaptersReady"] == "0/2"
    cond = status["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "AdapterMissing")
    assert cond["message"].startswith("adapter a1 loaded on 2/3 ready pod(s)")
    assert cond["observedGeneration"] == 3


def test_status_names_the_refused_adapter_and_its_error() -> None:
    reports = [PodReport("p0", frozenset({"a1"}))]
    errors = {"a2": "HTTP 500: LoRA rank 64 is greater than max_lora_rank 16."}
    status = adapters_status(["a1", "a2"], reports, errors, generation=1)
    cond = status["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "AdapterFailed")
    assert "a2" in cond["message"] and "max_lora_rank" in cond["message"]
    assert status["adapters"][1]["lastError"] == errors["a2"]
    assert status["adaptersReady"] == "1/2"


def test_all_loaded_no_pods_and_none_declared() -> None:
    ok = adapters_status(["a1"], [PodReport("p0", frozenset({"a1"}))], {}, generation=1)
    assert ok["conditions"][0]["reason"] == "AllLoaded" and ok["adaptersReady"] == "1/1"
    idle = adapters_status(["a1"], [], {}, generation=1)
    assert idle["conditions"][0]["reason"] == "NoReadyPods"
    assert idle["conditions"][0]["status"] == "False"
    none = adapters_status([], [], {}, generation=1)
    assert none["conditions"][0]["status"] == "True" and none["adapters"] == []


def test_status_is_rewritten_only_when_it_changes() -> None:
    status = adapters_status(["a1"], [PodReport("p0", frozenset({"a1"}))], {}, generation=1)
    observed = {
        "adapters": status["adapters"],
        "adaptersReady": status["adaptersReady"],
        "conditions": [{**status["conditions"][0], "lastTransitionTime": "t"}],
        "readyReplicas": 1,  # the reconciler's: not compared
    }
    assert not status_changed(status, observed)
    assert status_changed(status, {**observed, "adaptersReady": "0/1"})
    assert status_changed(status, {})


def test_a_tgi_pod_serves_the_adapters_it_started_with() -> None:
    from openmodel.engines import ENGINES

    tgi_adapters = ENGINES["tgi"].started_adapters

    pod = {
        "spec": {
            "containers": [
                {
                    "name": "engine",
                    "env": [{"name": "LORA_ADAPTERS", "value": "a1=org/a1,a2=/m/a2"}],
                }
            ]
        }
    }
    assert tgi_adapters(pod) == {"a1", "a2"}
    assert tgi_adapters({"spec": {"containers": [{"name": "engine"}]}}) == frozenset()
