"""The weights cache (docs/api.md, Weights cache): the claim and download Job rendered
field by field, where a download stands read from its Job and pods, and the reconcile
pass that holds the engine back until the cache is complete."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fake_api_server import FakeApiServer
from kubernetes.client.exceptions import ApiException

from openmodel.api import SpecError
from openmodel.config import PlatformConfig, parse_config
from openmodel.engines import parse_model_deployment
from openmodel.kube import calls as kube
from openmodel.model_resolver.state import ModelRef, Resolved
from openmodel.reconcile.plan import make_plan
from openmodel.reconcile.reconciler import Reconciler
from openmodel.reconcile.render import render_children
from openmodel.sizing.checkpoint import read_checkpoint
from openmodel.weights import state
from openmodel.weights.render import (
    EXIT_NOT_FOUND,
    EXIT_UNAUTHORIZED,
    PERMANENT_EXIT_CODES,
    WEIGHTS_FOR_LABEL,
    cache_plan,
    quantity_bytes,
)

BODY: dict[str, Any] = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {
        "name": "m",
        "namespace": "team-a",
        "uid": "u-1",
        "generation": 1,
        "resourceVersion": "7",
    },
    "spec": {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "gpu": {"type": "nvidia-l4", "count": 1},
        "cache": {"size": "40Gi"},
    },
}


def md_with(**spec: Any) -> Any:
    body = copy.deepcopy(BODY)
    body["spec"].update(spec)
    return parse_model_deployment(body)


def render(md: Any, config: PlatformConfig | None = None, commit: str | None = None) -> Any:
    return render_children(md, config or PlatformConfig(), 1, 1, commit=commit)


def engine_container(children: Any) -> dict[str, Any]:
    return children.deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def job_container(children: Any) -> dict[str, Any]:
    return children.download_job["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


# -- rendering -----------------------------------------------------------------------


def test_a_repo_model_with_a_cache_gets_a_download_job_and_an_offline_engine() -> None:
    children = render(md_with(hfTokenSecretRef={"name": "hf", "key": "tok"}))
    job = children.download_job
    assert job["kind"] == "Job" and job["metadata"]["name"].startswith("m-weights-")
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    c = job_container(children)
    assert c["command"] == ["python", "-m", "openmodel.weights.download"]
    assert c["args"][:4] == ["--repo", "Qwen/Qwen2.5-7B-Instruct", "--revision", "main"]
    assert "--allow" in c["args"] and "*.safetensors" in c["args"]
    assert c["args"][c["args"].index("--ignore") + 1] == "original/*"
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_HOME"]["value"] == "/cache"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "tok"}}
    assert env["HF_HUB_DISABLE_TELEMETRY"]["value"] == "1"
    assert "HF_ENDPOINT" not in env  # the library's default Hub
    pod = job["spec"]["template"]
    # Never taken for an engine pod: not the owner label, its own.
    assert pod["metadata"]["labels"] == {
        WEIGHTS_FOR_LABEL: "m",
        "app.kubernetes.io/name": "openmodel-weights",
        "app.kubernetes.io/managed-by": "openmodel",
    }
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["volumes"] == [
        {"name": "cache", "persistentVolumeClaim": {"claimName": "m-cache-rwx"}}
    ]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == list(PERMANENT_EXIT_CODES)
    assert job["spec"]["activeDeadlineSeconds"] == 21600
    assert job["spec"]["backoffLimit"] == 3
    engine = engine_container(children)
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in engine["env"]
    assert {"name": "hf-cache", "mountPath": "/root/.cache/huggingface"} in engine["volumeMounts"]
    assert "strategy" not in children.deployment["spec"]  # RollingUpdate, the default


def test_the_job_name_follows_what_the_download_depends_on_and_nothing_else() -> None:
    name = render(md_with()).download_job["metadata"]["name"]
    assert render(md_with(maxModelLen=4096)).download_job["metadata"]["name"] == name
    assert render(md_with(replicas=3)).download_job["metadata"]["name"] == name
    for changed in (
        md_with(args=["--revision", "v2"]),
        md_with(model="Qwen/Qwen2.5-14B-Instruct"),
        md_with(hfTokenSecretRef={"name": "hf"}),
        md_with(cache={"size": "40Gi", "claimName": "shared"}),
    ):
        assert render(changed).download_job["metadata"]["name"] != name
    assert render(md_with(), commit="a" * 40).download_job["metadata"]["name"] != name
    long = copy.deepcopy(BODY)
    long["metadata"]["name"] = "m" * 63
    job_name = render(parse_model_deployment(long)).download_job["metadata"]["name"]
    assert len(job_name) <= 63


def test_the_revision_comes_from_args_and_the_resolver_pins_the_commit() -> None:
    c = job_container(render(md_with(args=["--revision=v2"]), commit="c" * 40))
    assert c["args"][2:6] == ["--revision", "v2", "--commit", "c" * 40]


@pytest.mark.parametrize(
    "spec",
    [
        {"model": "s3://bucket/llama"},  # streamed by the engine
        {"model": "pvc://weights/llama"},  # on its claim already
        {"engine": "llamacpp", "ggufFile": "q-Q4_K_M.gguf"},  # llama-server fetches its own
    ],
)
def test_no_download_where_the_engine_does_not_load_a_snapshot(spec: dict[str, Any]) -> None:
    children = render(md_with(**spec))
    assert children.download_job is None
    assert children.pvc is not None  # the cache is still there for the engine's own use
    offline = any(e["name"] == "HF_HUB_OFFLINE" for e in engine_container(children)["env"])
    # Offline only where the weights are local anyway (a claim: privacy/, issue 27).
    assert offline == str(spec.get("model", "")).startswith("pvc://")


def test_claims_per_access_mode_and_platform_defaults() -> None:
    config = parse_config({"cache": {"accessMode": "ReadWriteOnce", "storageClassName": "nfs"}})
    children = render(md_with(), config)
    assert children.pvc["metadata"]["name"] == "m-cache"  # the name claims always had
    assert children.pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert children.pvc["spec"]["storageClassName"] == "nfs"
    # A surge pod on another node could never attach a ReadWriteOnce claim.
    assert children.deployment["spec"]["strategy"] == {"type": "Recreate"}
    stated = render(md_with(cache={"size": "1Ti", "storageClassName": "efs"}), config)
    assert stated.pvc["spec"]["storageClassName"] == "efs"


def test_the_download_pod_goes_where_the_platform_places_it() -> None:
    default = render(md_with()).download_job["spec"]["template"]["spec"]
    # By default on any untainted node: the download needs no GPU.
    assert "nodeSelector" not in default and "tolerations" not in default
    config = parse_config({"cache": {
        "downloadNodeSelector": {"pool": "download", "zone": "a"},
        "downloadTolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "pool", "operator": "Equal", "value": "download"},
        ],
    }})  # fmt: skip
    pod = render(md_with(), config).download_job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "download", "zone": "a"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "pool", "operator": "Equal", "value": "download"},
    ]
    # A Job's pod template cannot change: another placement is another Job.
    assert render(md_with(), config).cache.job_name != render(md_with()).cache.job_name


@pytest.mark.parametrize(
    ("cache", "names"),
    [
        ({"downloadNodeSelector": ["pool"]}, "cache.downloadNodeSelector"),
        ({"downloadNodeSelector": {"pool": 1}}, "cache.downloadNodeSelector"),
        ({"downloadTolerations": {"key": "x"}}, "cache.downloadTolerations must be a list"),
        ({"downloadTolerations": [{"operator": "Exists"}]}, "downloadTolerations[0].key"),
        ({"downloadTolerations": [{"key": "x", "operator": "In"}]}, "[0].operator"),
        ({"downloadTolerations": [{"key": "x", "value": "y"}]}, "[0].value"),
        ({"downloadTolerations": [{"key": "x", "effect": "Never"}]}, "[0].effect"),
        ({"downloadTolerations": [{"key": "x", "seconds": 1}]}, "unknown key(s) seconds"),
    ],
)
def test_a_malformed_download_placement_is_refused_naming_the_key(
    cache: dict[str, Any], names: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(names)):
        parse_config({"cache": cache})


def test_a_named_claim_is_used_never_made() -> None:
    children = render(md_with(cache={"size": "40Gi", "claimName": "shared-qwen"}))
    assert children.pvc is None
    assert job_container(children)["volumeMounts"] == [{"name": "cache", "mountPath": "/cache"}]
    volumes = children.deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "shared-qwen"}} in volumes


def test_a_read_only_many_claim_is_checked_not_filled_and_mounted_read_only() -> None:
    children = render(
        md_with(cache={"size": "40Gi", "accessMode": "ReadOnlyMany", "claimName": "filled"})
    )
    c = job_container(children)
    assert "--verify-only" in c["args"]
    assert c["volumeMounts"] == [{"name": "cache", "mountPath": "/cache", "readOnly": True}]
    engine = engine_container(children)
    assert {
        "name": "hf-cache",
        "mountPath": "/root/.cache/huggingface",
        "readOnly": True,
    } in engine["volumeMounts"]


def test_read_write_once_with_more_than_one_replica_is_refused_naming_the_field() -> None:
    with pytest.raises(SpecError) as stated:
        md_with(replicas=2, cache={"size": "40Gi", "accessMode": "ReadWriteOnce"})
    assert stated.value.field == "spec.cache.accessMode"
    assert "ReadWriteMany" in stated.value.message and "ReadOnlyMany" in stated.value.message
    # From the platform default the operator refuses it (the CRD cannot see the config).
    config = parse_config({"cache": {"accessMode": "ReadWriteOnce"}})
    md = md_with(autoscaling={"minReplicas": 0, "maxReplicas": 2})
    with pytest.raises(SpecError) as defaulted:
        cache_plan(md, config)
    assert defaulted.value.reason == "CacheAccessMode"
    assert "platform default" in defaulted.value.field


def test_read_only_many_needs_a_claim_name() -> None:
    with pytest.raises(SpecError) as refused:
        md_with(cache={"size": "40Gi", "accessMode": "ReadOnlyMany"})
    assert refused.value.field == "spec.cache.claimName"


def test_quantities() -> None:
    assert quantity_bytes("40Gi") == 40 * 2**30
    assert quantity_bytes("1.5T") == 1_500_000_000_000
    assert quantity_bytes("1000") == 1000


CONFIGS = Path(__file__).resolve().parent / "data" / "hf-configs"
AWQ_72B = "Qwen/Qwen2.5-72B-Instruct-AWQ"


def resolved(total_size: int) -> Resolved:
    """The resolver's answer for a checkpoint whose safetensors index says `total_size`."""
    config = json.loads((CONFIGS / "Qwen--Qwen2.5-72B-Instruct-AWQ.json").read_text())
    index = {"metadata": {"total_size": total_size}}
    return Resolved(ModelRef(AWQ_72B), "f" * 40, read_checkpoint(config, AWQ_72B, index))


def test_sizing_refuses_a_cache_smaller_than_the_checkpoint() -> None:
    spec = {"model": AWQ_72B, "quantization": "awq", "gpu": {"type": "nvidia-h100-80gb"}}
    small = md_with(**spec, cache={"size": "30Gi"})
    with pytest.raises(SpecError) as refused:
        make_plan(small, PlatformConfig(), None, model_config=resolved(41 * 2**30))
    assert refused.value.reason == "CacheTooSmall"
    assert refused.value.field == "spec.cache.size"
    assert "41.0 GiB" in refused.value.message and "total_size" in refused.value.message
    fits = make_plan(
        md_with(**spec, cache={"size": "50Gi"}), PlatformConfig(), None,
        model_config=resolved(41 * 2**30),
    )  # fmt: skip
    # The commit the resolver read config.json at is what the Job fetches.
    assert "f" * 40 in job_container(fits.children)["args"]


# -- where a download stands ---------------------------------------------------------


def plan() -> Any:
    p = cache_plan(md_with(), PlatformConfig())
    assert p is not None and p.job_name is not None
    return p


def job(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": plan().job_name},
        "status": {
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": f"{r} happened"}
                for t, r in conditions
            ]
        },
    }


def pod(phase: str, exit_code: int | None = None, message: str = "", created: str = "1") -> Any:
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [
            {
                "name": "download",
                "state": {"terminated": {"exitCode": exit_code, "message": message}},
            }
        ]
    return {"metadata": {"name": f"p-{created}", "creationTimestamp": created}, "status": status}


def test_no_job_yet_is_pending() -> None:
    s = state.observe(plan(), None)
    assert s.phase == state.PENDING and s.progress == "Pending"
    assert s.status()["job"] == plan().job_name


def test_a_running_download_reports_its_bytes() -> None:
    line = json.dumps({"bytesDone": 3 * 2**30, "bytesTotal": 12 * 2**30, "revision": "abc"})
    s = state.observe(plan(), job(), [pod("Running")], line)
    assert s.phase == state.DOWNLOADING
    assert (s.bytes_done, s.bytes_total, s.revision) == (3 * 2**30, 12 * 2**30, "abc")
    assert s.progress == "Downloading 25% of 12.0 GiB"
    assert state.running_pod([pod("Pending"), pod("Running", created="2")]) == "p-2"


def test_a_complete_download_is_ready_with_the_commit_it_fetched() -> None:
    result = json.dumps({"phase": "Ready", "revision": "c" * 40, "bytes": 1234, "files": 7})
    s = state.observe(plan(), job(("Complete", "Completed")), [pod("Succeeded", 0, result)])
    assert (s.phase, s.revision, s.bytes_total) == (state.READY, "c" * 40, 1234)
    # Kept from status afterwards: no pod read on every pass.
    assert not state.needs_pods(job(("Complete", "Completed")), s.status(), plan().job_name)
    assert state.needs_pods(job(("Complete", "Completed")), None, plan().job_name)
    again = state.observe(plan(), job(("Complete", "Completed")), [], None, s.status())
    assert again.revision == "c" * 40


@pytest.mark.parametrize(
    ("exit_code", "reason"),
    [
        (EXIT_UNAUTHORIZED, "DownloadUnauthorized"),
        (EXIT_NOT_FOUND, "DownloadNotFound"),
        (12, "DownloadOutOfSpace"),
        (13, "CacheIncomplete"),
        (1, "DownloadFailed"),
    ],
)
def test_a_failed_download_names_its_cause_with_the_downloaders_line(
    exit_code: int, reason: str
) -> None:
    said = json.dumps({"phase": "Failed", "reason": reason, "message": "401 for acme/x@main"})
    s = state.observe(
        plan(),
        job(("Failed", "PodFailurePolicy")),
        [pod("Failed", 1, "earlier", created="1"), pod("Failed", exit_code, said, created="2")],
    )
    assert (s.phase, s.reason) == (state.FAILED, reason)
    assert s.message == f"download Job {plan().job_name} failed: 401 for acme/x@main"
    assert s.progress == f"Failed: {reason}"


def test_a_download_out_of_time_is_a_timeout() -> None:
    s = state.observe(plan(), job(("Failed", "DeadlineExceeded")), [pod("Failed", 137)])
    assert s.reason == "DownloadTimeout"


# -- the pass: the engine waits for its weights -----------------------------------------


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApiServer:
    fake = FakeApiServer().install(monkeypatch)
    fake.objects[("ModelDeployment", "team-a", "m")] = copy.deepcopy(BODY)
    return fake


def reconciler() -> Reconciler:
    r = Reconciler(object(), PlatformConfig(), clock=lambda: "2026-12-05T00:00:00Z")  # type: ignore[arg-type]
    r.cache.observe("ModelDeployment", copy.deepcopy(BODY))
    return r


def status(api: FakeApiServer) -> dict[str, Any]:
    return api.objects[("ModelDeployment", "team-a", "m")]["status"]  # type: ignore[no-any-return]


def conditions(api: FakeApiServer) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status(api)["conditions"]}


def the_job(api: FakeApiServer) -> dict[str, Any]:
    (found,) = [o for (k, _, _), o in api.objects.items() if k == "Job"]
    return found


def job_moves(r: Reconciler, api: FakeApiServer, **job_status: Any) -> None:
    """The Job controller writes the Job's status; the watch delivers it."""
    found = the_job(api)
    found["status"] = job_status
    found["metadata"]["resourceVersion"] = str(int(found["metadata"]["resourceVersion"]) + 1)
    r.cache.observe("Job", copy.deepcopy(found))
    md = api.objects[("ModelDeployment", "team-a", "m")]
    r.cache.observe("ModelDeployment", copy.deepcopy(md))


def test_the_engine_starts_only_once_the_download_completes(
    api: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pods: list[Any] = []
    monkeypatch.setattr(kube, "list_objects", lambda *a, **k: pods)
    progress = json.dumps({"bytesDone": 5, "bytesTotal": 10, "revision": "abc"})
    monkeypatch.setattr(kube, "log_tail", lambda *a, **k: progress)
    r = reconciler()
    r.reconcile_by_name("team-a", "m")
    # No engine Deployment yet: its Service may wait. The policies first (the engine
    # pods' and the download pods').
    applied = [k for k in api.applied if k != "Event"]
    assert applied == ["NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim", "Job", "Service"]
    assert conditions(api)["Ready"] == ("False", "DownloadingWeights")
    assert conditions(api)["Degraded"] == ("False", "AsExpected")
    assert status(api)["cache"]["phase"] == "Pending"

    pods[:] = [pod("Running")]
    job_moves(r, api, active=1)
    r.reconcile_by_name("team-a", "m")
    assert not [k for k in api.objects if k[0] == "Deployment"]
    assert status(api)["cache"]["progress"] == "Downloading 50% of 10 B"
    assert any(e["reason"] == "DownloadStarted" for e in api.events)

    result = json.dumps({"phase": "Ready", "revision": "c" * 40, "bytes": 10, "files": 3})
    pods[:] = [pod("Succeeded", 0, result)]
    job_moves(r, api, succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    r.reconcile_by_name("team-a", "m")
    deployment = api.objects[("Deployment", "team-a", "m")]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in env
    assert status(api)["cache"] == {
        "phase": "Ready",
        "claimName": "m-cache-rwx",
        "progress": "Ready",
        "job": the_job(api)["metadata"]["name"],
        "bytesDone": 10,
        "bytesTotal": 10,
        "revision": "c" * 40,
    }
    assert any(e["reason"] == "DownloadComplete" for e in api.events)


def test_a_progress_line_the_api_server_cannot_give_leaves_the_bytes_unknown(
    api: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pods/log goes through the kubelet: one the API server cannot reach (or a missing
    right) must not fail the pass, only hide the bytes."""
    pods: list[Any] = [pod("Running")]
    monkeypatch.setattr(kube, "list_objects", lambda *a, **k: pods)

    def unreachable(*a: Any, **k: Any) -> str:
        raise ApiException(status=500, reason="dial tcp 127.63.0.12:10250: connection refused")

    monkeypatch.setattr(kube, "log_tail", unreachable)
    r = reconciler()
    r.reconcile_by_name("team-a", "m")
    job_moves(r, api, active=1)
    r.reconcile_by_name("team-a", "m")
    cache = status(api)["cache"]
    assert cache["phase"] == "Downloading" and "bytesDone" not in cache, cache
    assert cache["progress"] == "Downloading"
    assert conditions(api)["Degraded"] == ("False", "AsExpected")


def test_a_failed_download_is_degraded_and_starts_no_engine(
    api: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    said = json.dumps({"phase": "Failed", "reason": "DownloadUnauthorized", "message": "401"})
    monkeypatch.setattr(kube, "list_objects", lambda *a, **k: [pod("Failed", 10, said)])
    r = reconciler()
    r.reconcile_by_name("team-a", "m")
    job_moves(r, api, failed=1, conditions=[{"type": "Failed", "status": "True",
                                             "reason": "PodFailurePolicy"}])  # fmt: skip
    r.reconcile_by_name("team-a", "m")
    assert conditions(api)["Degraded"] == ("True", "DownloadUnauthorized")
    assert status(api)["reason"] == "DownloadUnauthorized"
    assert not [k for k in api.objects if k[0] == "Deployment"]
    assert any(e["reason"] == "DownloadUnauthorized" and e["type"] == "Warning" for e in api.events)


def test_a_download_pod_that_cannot_be_placed_is_degraded_with_the_schedulers_words(
    api: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = pod("Pending")
    stuck["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
        }
    ]
    monkeypatch.setattr(kube, "list_objects", lambda *a, **k: [stuck])
    r = reconciler()
    r.reconcile_by_name("team-a", "m")
    job_moves(r, api, active=1)
    r.reconcile_by_name("team-a", "m")
    assert conditions(api)["Degraded"] == ("True", "DownloadUnschedulable")
    degraded = next(c for c in status(api)["conditions"] if c["type"] == "Degraded")
    assert "unbound immediate PersistentVolumeClaims" in degraded["message"]
    assert not [k for k in api.objects if k[0] == "Deployment"]


def test_the_old_read_write_once_claim_is_named_once_the_engine_moved_off_it(
    api: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade: `m-cache` (ReadWriteOnce, made by an earlier version) stays mounted
    until the engine runs from the new `m-cache-rwx`; then it is named for deletion (the
    operator holds no delete right), never orphaned."""
    old_claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "m-cache",
            "namespace": "team-a",
            "resourceVersion": "3",
            "labels": {"openmodel.dev/model-deployment": "m"},
            "ownerReferences": [{"uid": "u-1", "controller": True}],
        },
        "spec": {"accessModes": ["ReadWriteOnce"]},
    }
    result = json.dumps({"phase": "Ready", "revision": "c" * 40, "bytes": 10, "files": 3})
    monkeypatch.setattr(kube, "list_objects", lambda *a, **k: [pod("Succeeded", 0, result)])
    r = reconciler()
    r.cache.observe("PersistentVolumeClaim", old_claim)
    r.reconcile_by_name("team-a", "m")
    job_moves(r, api, succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    r.reconcile_by_name("team-a", "m")
    deployment = api.objects[("Deployment", "team-a", "m")]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "m-cache-rwx"}} in volumes
    # Not rolled out yet: the old claim may still be mounted by an old pod.
    assert "supersededClaims" not in status(api)["cache"]
    deployment["metadata"]["generation"] = 2
    deployment["status"] = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
                            "readyReplicas": 1}  # fmt: skip
    r.cache.observe("Deployment", copy.deepcopy(deployment))
    r.reconcile_by_name("team-a", "m")
    assert status(api)["cache"]["supersededClaims"] == ["m-cache"]
    assert any(
        e["reason"] == "CacheClaimSuperseded" and "m-cache" in e["message"] for e in api.events
    )
