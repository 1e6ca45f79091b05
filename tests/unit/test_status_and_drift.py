"""Status is rebuilt from observations; drift detection follows apply semantics."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from openmodel.config import PlatformConfig
from openmodel.engines import parse_model_deployment
from openmodel.problems import Problem
from openmodel.reconcile.drift import holds, object_holds
from openmodel.reconcile.pod_failures import LOG_LINE_LIMIT, engine_failure, engine_failure_message
from openmodel.reconcile.render import render_children
from openmodel.reconcile.status import Observation, build_status, needs_write


def deployment(spec_replicas: int, ready: int, updated: int, gen: int = 2, seen: int = 2) -> Any:
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": spec_replicas},
        "status": {
            "observedGeneration": seen,
            "replicas": spec_replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = {
        "generation": 5,
        "name": "m",
        "label_selector": "openmodel.dev/model-deployment=m",
        "endpoint": "http://m.ns.svc.cluster.local:8000/v1",
        "desired_replicas": 2,
        "deployment": deployment(2, 2, 2),
    }
    base.update(kw)
    return Observation(**base)


def conditions(update: Any) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in update.status["conditions"]}


def test_ready_when_rolled_out() -> None:
    update = build_status(obs(), None, "T1")
    c = conditions(update)
    assert c["Ready"]["status"] == "True"
    assert c["Progressing"]["status"] == "False"
    assert c["Degraded"]["status"] == "False"
    assert update.status["observedGeneration"] == 5
    assert update.status["readyReplicas"] == 2
    assert all(x["observedGeneration"] == 5 for x in c.values())


def test_not_ready_while_pods_start_or_controller_lags() -> None:
    assert (
        conditions(build_status(obs(deployment=deployment(2, 1, 2)), None, "T"))["Ready"]["status"]
        == "False"
    )
    lagging = deployment(2, 2, 2, gen=3, seen=2)
    c = conditions(build_status(obs(deployment=lagging), None, "T"))
    assert c["Ready"]["status"] == "False"
    assert c["Progressing"]["status"] == "True"


def test_unschedulable_quotes_scheduler() -> None:
    pod = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/10 nodes are available: 4 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    }
    c = conditions(build_status(obs(deployment=deployment(1, 0, 1), pods=[pod]), None, "T"))
    assert c["Degraded"]["status"] == "True"
    assert c["Degraded"]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in c["Degraded"]["message"]


def test_spec_problem_keeps_running_children_ready() -> None:
    problem = Problem("UnknownAccelerator", "spec.gpu.type: unknown accelerator 'x'")
    c = conditions(build_status(obs(problem=problem), None, "T"))
    assert c["Degraded"]["reason"] == "UnknownAccelerator"
    assert c["Ready"]["status"] == "True"  # the last good version still serves
    assert c["Progressing"]["reason"] == "SpecRejected"


def test_transition_time_kept_when_status_unchanged_and_no_rewrite() -> None:
    first = build_status(obs(), None, "T1")
    assert {t.condition for t in first.transitions} == {
        "Ready",
        "Progressing",
        "Degraded",
        "Stalled",
        "Reconciling",
    }
    second = build_status(obs(), first.status, "T2")
    assert all(c["lastTransitionTime"] == "T1" for c in second.status["conditions"])
    assert second.transitions == []
    assert not needs_write(second.status, first.status)


def test_foreign_conditions_do_not_force_writes() -> None:
    first = build_status(obs(), None, "T1").status
    observed = dict(first)
    observed["conditions"] = [*first["conditions"], {"type": "ScalingActive", "status": "True"}]
    observed["autoscaler"] = {"queueDepth": 3}
    assert not needs_write(first, observed)


def test_changed_generation_needs_write() -> None:
    first = build_status(obs(), None, "T1").status
    assert needs_write(build_status(obs(generation=6), first, "T2").status, first)


def test_drift_semantics() -> None:
    desired = {"spec": {"args": ["--a", "1"], "env": [{"name": "A", "value": "1"}]}}
    assert holds(
        desired,
        {"spec": {"args": ["--a", "1"], "env": [{"name": "A", "value": "1"}], "defaulted": True}},
    )
    # A removed flag, a hand-edited value and an extra list element are all drift.
    assert not holds(
        desired, {"spec": {"args": ["--a", "1", "--b"], "env": [{"name": "A", "value": "1"}]}}
    )
    assert not holds(
        desired, {"spec": {"args": ["--a", "2"], "env": [{"name": "A", "value": "1"}]}}
    )
    assert not object_holds({"apiVersion": "v1", "kind": "Service", "spec": {}}, None)
    assert object_holds(
        {"apiVersion": "v1", "kind": "Service", "spec": {"x": 1}}, {"spec": {"x": 1, "y": 2}}
    )
    # An empty list we set is stored as no key; rules someone added to it are drift.
    assert holds({"spec": {"egress": []}}, {"spec": {"policyTypes": ["Egress"]}})
    assert not holds({"spec": {"egress": []}}, {"spec": {"egress": [{}]}})


def test_own_writes_recognise_only_their_exact_echo() -> None:
    from openmodel.reconcile.reconciler import OwnWrites

    writes = OwnWrites()
    writes.record(
        "Deployment", {"metadata": {"namespace": "ns", "name": "m", "resourceVersion": "42"}}
    )
    assert writes.is_echo("Deployment", "ns", "m", "42")
    assert not writes.is_echo("Deployment", "ns", "m", "43")  # someone else's edit
    assert not writes.is_echo("Service", "ns", "m", "42")
    assert not writes.is_echo("Deployment", "ns", "m", None)
    writes.forget("Deployment", "ns", "m")
    assert not writes.is_echo("Deployment", "ns", "m", "42")


# -- a failing engine becomes Degraded -------------------------------------------------


def engine_pod(name: str = "m-7d9-abc", **container: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"name": "engine", "ready": False, "restartCount": 0}
    status.update(container)
    return {
        "metadata": {"name": name},
        "status": {"phase": "Running", "containerStatuses": [status]},
    }


def crashed(exit_code: int = 2, restarts: int = 3, log: str = "", reason: str = "Error") -> Any:
    """A container in CrashLoopBackOff: the crash is in lastState."""
    return engine_pod(
        restartCount=restarts,
        state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        lastState={"terminated": {"exitCode": exit_code, "reason": reason, "message": log}},
    )


VLLM_USAGE_ERROR = (
    "INFO 11-20 10:00:01 api_server.py:1 vLLM API server version 0.31.0\n"
    "usage: vllm serve [model_tag] [options]\n"
    "vllm serve: error: unrecognized arguments: --bogus\n"
    "\n"
)


def test_crash_loop_names_pod_container_exit_code_restarts_and_last_log_line() -> None:
    message = (
        "1 pod(s) failing: pod m-7d9-abc container engine exited with code 2 (restarts: 3); "
        'last log line: "vllm serve: error: unrecognized arguments: --bogus"'
    )
    assert engine_failure([crashed(log=VLLM_USAGE_ERROR)]) == Problem("EngineCrashLoop", message)
    assert engine_failure_message([crashed(log=VLLM_USAGE_ERROR)]) == message
    assert engine_failure_message([]) is None


def test_a_container_terminated_right_now_counts_even_before_a_restart() -> None:
    pod = engine_pod(state={"terminated": {"exitCode": 1, "reason": "Error", "message": "boom"}})
    message = engine_failure_message([pod])
    assert message == (
        "1 pod(s) failing: pod m-7d9-abc container engine exited with code 1 (restarts: 0); "
        'last log line: "boom"'
    )


def test_crash_without_a_log_and_with_a_telling_reason() -> None:
    message = engine_failure_message([crashed(exit_code=137, reason="OOMKilled")])
    assert message == (
        "1 pod(s) failing: pod m-7d9-abc container engine exited with code 137 "
        "(OOMKilled, restarts: 3)"
    )


def test_a_clean_exit_in_back_off_is_a_crash_loop_too() -> None:
    # vLLM 0.32 exits 0 when its engine core dies (seen: a worker killed by SIGILL).
    message = engine_failure_message([crashed(exit_code=0, restarts=2)])
    assert message == (
        "1 pod(s) failing: pod m-7d9-abc container engine exited with code 0 (restarts: 2)"
    )
    # A clean exit that is already restarting (running, loading again) is not one.
    restarting = engine_pod(
        restartCount=1,
        state={"running": {"startedAt": "2026-12-01T00:00:00Z"}},
        lastState={"terminated": {"exitCode": 0, "reason": "Completed"}},
    )
    assert engine_failure_message([restarting]) is None


def test_last_log_line_is_stripped_and_clipped() -> None:
    long_line = "   RuntimeError: " + "x" * 1000 + "   "
    message = engine_failure_message([crashed(log=f"first\n{long_line}\n  \n")])
    assert message is not None
    quoted = message.split('last log line: "', 1)[1].removesuffix('"')
    assert quoted.startswith("RuntimeError: x")
    assert len(quoted) == LOG_LINE_LIMIT == 300
    assert quoted.endswith("\u2026")


# Real vLLM 0.32 log tails, as the kubelet keeps them (the last 2048 bytes), from
# `vllm serve` with an unknown flag and with a directory that holds no model.
DATA = Path(__file__).resolve().parent / "data"
VLLM_UNKNOWN_FLAG = (DATA / "vllm-0.32-unknown-flag.log").read_text()
VLLM_NOT_A_MODEL = (DATA / "vllm-0.32-not-a-model.log").read_text()
TRACEBACK = (
    "INFO 11-20 10:00:01 [loader.py:12] Loading weights\n"
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3.12/site-packages/vllm/worker.py", line 40, in load\n'
    '    raise RuntimeError("boom")\n'
    "RuntimeError: boom\n"
)


def quoted_line(log: str) -> str:
    message = engine_failure_message([crashed(log=log)])
    assert message is not None
    return message.split('last log line: "', 1)[1].removesuffix('"')


@pytest.mark.parametrize(
    ("log", "line"),
    [
        (VLLM_UNKNOWN_FLAG, "vllm: error: unrecognized arguments: --no-such-flag"),
        # The last line is pydantic's link, and the one above it `[type=value_error, ...]`.
        (
            VLLM_NOT_A_MODEL,
            "Value error, Invalid repository ID or local directory specified: '/models/x/model'.",
        ),
        (TRACEBACK, "RuntimeError: boom"),
        # No line looks like an error: the last one is still the best there is.
        ("INFO starting\nKilled\n\n", "Killed"),
        # A word merely containing "error" is not an error: the last line wins.
        ("terrorist detection off\nerrors=0 warnings=0\nexiting now\n", "exiting now"),
    ],
    ids=["vllm-unknown-flag", "vllm-not-a-model", "traceback", "no-error-word", "not-a-word"],
)
def test_the_quoted_line_is_the_last_that_names_an_error(log: str, line: str) -> None:
    assert quoted_line(log) == line


def test_the_real_not_a_model_tail_ends_with_lines_that_name_no_problem() -> None:
    # What the choice has to skip, so the test above keeps meaning what it says.
    last, before = VLLM_NOT_A_MODEL.rstrip("\n").splitlines()[:-3:-1]
    assert (
        last == "    For further information visit https://errors.pydantic.dev/2.14/v/value_error"
    )
    assert before.startswith(" [type=value_error, input_value=ArgsKwargs(")


@pytest.mark.parametrize(
    "line",
    [
        "    For further information visit https://errors.pydantic.dev/2.14/v/value_error",
        "  https://docs.vllm.ai/en/latest/usage/troubleshooting.html#error",
    ],
)
def test_links_are_not_quoted_even_when_they_say_error(line: str) -> None:
    assert quoted_line(f"ValueError: bad config\n{line}\n") == "ValueError: bad config"


@pytest.mark.parametrize(
    "line",
    ["error: x", "ERROR 11-20 [core.py:1] x", "Value error, x", "ValueError: x",
     "torch.OutOfMemoryError: x", "java.lang.IllegalStateException: x"],
)  # fmt: skip
def test_what_counts_as_an_error_line(line: str) -> None:
    assert quoted_line(f"{line}\nINFO shutting down\n") == line


def test_a_long_error_line_above_the_last_is_clipped_too() -> None:
    quoted = quoted_line("ValueError: " + "y" * 1000 + "\n    For further information visit x\n")
    assert quoted.startswith("ValueError: y")
    assert len(quoted) == LOG_LINE_LIMIT
    assert quoted.endswith("\u2026")


@pytest.mark.parametrize(
    "reason",
    [
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "InvalidImageName",
    ],
)
def test_waiting_reasons_that_never_resolve_are_a_start_failure(reason: str) -> None:
    pod = engine_pod(state={"waiting": {"reason": reason, "message": 'image "vllm/x" not found'}})
    assert engine_failure([pod]) == Problem(
        "EngineStartFailed",
        f'1 pod(s) failing: pod m-7d9-abc container engine cannot start: {reason}: image "vllm/x"'
        " not found",
    )


@pytest.mark.parametrize(
    "pod",
    [
        engine_pod(state={"running": {}}),  # loading weights
        engine_pod(state={"waiting": {"reason": "ContainerCreating"}}),
        engine_pod(state={"waiting": {"reason": "PodInitializing"}}),
        # A clean exit is not a crash.
        engine_pod(restartCount=2, lastState={"terminated": {"exitCode": 0}}),
        engine_pod(state={"terminated": {"exitCode": 0, "reason": "Completed"}}),
        # Crashed once, but ready again: serving.
        engine_pod(
            ready=True, restartCount=1, state={"running": {}},
            lastState={"terminated": {"exitCode": 1, "reason": "Error"}},
        ),
        # lastState without a restart is not (a).
        engine_pod(restartCount=0, lastState={"terminated": {"exitCode": 1}}),
        {"metadata": {"name": "m-pending"}, "status": {"phase": "Pending"}},
    ],
    ids=[
        "running", "creating", "initializing", "clean-last-exit", "clean-exit",
        "ready-after-crash", "no-restart", "no-container-status",
    ],
)  # fmt: skip
def test_starting_or_serving_containers_are_not_failing(pod: Any) -> None:
    assert engine_failure([pod]) is None


def test_deleted_and_finished_pods_are_ignored() -> None:
    deleting = crashed()
    deleting["metadata"]["deletionTimestamp"] = "2025-11-20T10:00:00Z"
    evicted = crashed()
    evicted["status"].update(phase="Failed", reason="Evicted")
    assert engine_failure([deleting, evicted]) is None


def test_the_count_is_of_pods_and_the_first_pod_by_name_is_named() -> None:
    b = crashed(log="b failed")
    b["metadata"]["name"] = "m-b"
    b["status"]["containerStatuses"].append(b["status"]["containerStatuses"][0] | {"name": "x"})
    a = engine_pod("m-a", state={"waiting": {"reason": "ImagePullBackOff", "message": "nope"}})
    fine = engine_pod("m-0", ready=True, state={"running": {}})
    failure = engine_failure([b, fine, a])
    assert failure == Problem(
        "EngineStartFailed",
        "2 pod(s) failing: pod m-a container engine cannot start: ImagePullBackOff: nope",
    )


def test_engine_failure_is_degraded_until_the_pod_is_ready() -> None:
    first = build_status(
        obs(deployment=deployment(1, 0, 1), desired_replicas=1, pods=[crashed(log="bad flag")]),
        None,
        "T1",
    )
    c = conditions(first)
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", "EngineCrashLoop")
    assert 'last log line: "bad flag"' in c["Degraded"]["message"]
    assert c["Ready"]["reason"] == "WaitingForPods"
    assert first.status["reason"] == "EngineCrashLoop"
    healed = engine_pod(ready=True, restartCount=3, state={"running": {}})
    second = build_status(
        obs(desired_replicas=1, deployment=deployment(1, 1, 1), pods=[healed]), first.status, "T2"
    )
    c = conditions(second)
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("False", "AsExpected")
    assert second.status["reason"] == "Ready"


def test_spec_problems_and_unschedulable_outrank_a_failing_engine() -> None:
    pending = {
        "metadata": {"name": "m-p"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available"},
            ],
        },
    }  # fmt: skip
    pods = [crashed(), pending]
    c = conditions(build_status(obs(pods=pods), None, "T"))
    assert c["Degraded"]["reason"] == "Unschedulable"
    problem = Problem("InvalidTensorParallelSize", "spec.gpu.count: 3 does not divide 32 heads")
    c = conditions(build_status(obs(pods=pods, problem=problem), None, "T"))
    assert c["Degraded"]["reason"] == "InvalidTensorParallelSize"


def test_a_crash_loop_rewrites_status_only_when_what_it_quotes_changes() -> None:
    def status_for(pod: Any, before: Any) -> Any:
        observed = obs(deployment=deployment(1, 0, 1), desired_replicas=1, pods=[pod])
        return build_status(observed, before, "T").status

    first = status_for(crashed(restarts=3, log="bad flag"), None)
    # Pod events between restarts (probes, back-off messages) change nothing we quote.
    again = crashed(restarts=3, log="bad flag")
    again["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = "back-off 1m20s"
    assert not needs_write(status_for(again, first), first)
    assert needs_write(status_for(crashed(restarts=4, log="bad flag"), first), first)
    assert needs_write(status_for(crashed(restarts=3, log="other"), first), first)


# -- status.reason: the STATUS column of `kubectl get md` --------------------------------


def test_reason_is_degraded_reason_when_degraded_else_ready_reason() -> None:
    assert build_status(obs(), None, "T").status["reason"] == "Ready"
    waiting = obs(deployment=deployment(2, 1, 2))
    assert build_status(waiting, None, "T").status["reason"] == "WaitingForPods"
    # Refused before anything was deployed: Ready says NotDeployed, the column says why.
    refused = obs(
        deployment=None,
        desired_replicas=None,
        problem=Problem("InvalidTensorParallelSize", "spec.gpu.count: 3"),
    )
    update = build_status(refused, None, "T")
    assert conditions(update)["Ready"]["reason"] == "NotDeployed"
    assert update.status["reason"] == "InvalidTensorParallelSize"


def test_a_status_written_before_reason_existed_is_rewritten_once() -> None:
    current = build_status(obs(), None, "T1").status
    older = {k: v for k, v in current.items() if k != "reason"}
    assert needs_write(current, older)
    assert not needs_write(build_status(obs(), current, "T2").status, current)


CRD = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "crds" / "modeldeployment.yaml").read_text()
)
VERSION = CRD["spec"]["versions"][0]


def test_every_status_key_the_operator_writes_is_in_the_crd_schema() -> None:
    # An undeclared key would be pruned by the API server, and needs_write would then
    # see it missing on every pass: a status write per pass, forever.
    status = build_status(obs(gpu="2x nvidia-h100-80gb", sizing={"fits": True}), None, "T").status
    declared = VERSION["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(status) <= set(declared)
    assert declared["reason"]["type"] == "string"


def test_the_status_printer_column_reads_status_reason() -> None:
    columns = {c["name"]: c for c in VERSION["additionalPrinterColumns"]}
    assert columns["Status"] == {"name": "Status", "type": "string", "jsonPath": ".status.reason"}


# -- the rendered Deployment, once applied ----------------------------------------------


def rendered_deployment() -> dict[str, Any]:
    md = parse_model_deployment(
        {
            "apiVersion": "openmodel.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ns", "uid": "u"},
            "spec": {"model": "org/model", "gpu": {"type": "nvidia-l4", "count": 1}},
        }
    )
    return render_children(md, PlatformConfig(), 1, 1).deployment


def test_the_applied_deployment_is_held_with_the_servers_defaults() -> None:
    desired = rendered_deployment()
    echoed = copy.deepcopy(desired)
    pod = echoed["spec"]["template"]["spec"]
    pod.update(restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default-scheduler")
    pod["containers"][0].update(
        terminationMessagePath="/dev/termination-log", imagePullPolicy="IfNotPresent"
    )
    assert object_holds(desired, echoed)
    # A Deployment the previous operator version applied lacks the new fields, and a
    # hand edit changes them: either way it is re-applied.
    older = copy.deepcopy(echoed)
    del older["spec"]["template"]["spec"]["automountServiceAccountToken"]
    assert not object_holds(desired, older)
    older = copy.deepcopy(echoed)
    del older["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"]
    assert not object_holds(desired, older)
    older = copy.deepcopy(echoed)
    older["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] = "File"
    assert not object_holds(desired, older)
