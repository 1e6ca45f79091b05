"""The weights cache with real components (docs/api.md, Weights cache): the download Job
runs the real downloader (`python -m openmodel.weights.download`, on `huggingface_hub`)
in a pod on a process node, against the local Hub stand-in (tests/fake_hub.py, listening
on this machine's own address, which a pod's network namespace reaches as its node's);
then the real vLLM starts from the cache with `HF_HUB_OFFLINE=1` and answers, and a
second replica on the other process node starts from the same cache without a second
download. Failures in real pods: a 404 repo, a 401 gated repo, a claim too small for the
checkpoint (a real ENOSPC), and a connection dropped mid-file (resumed with `Range`),
each reaching `status.cache` and the `Degraded` condition with its cause, no engine
started against a partial cache.

The cache claims are bound to hostPath volumes (harness.k8s.bind_cache_volume): one
directory of this machine that pods on both process nodes mount, standing in for the
ReadWriteMany volume (NFS, EFS, CephFS) a cluster would give a `-cache-rwx` claim.

An operator of its own serves e2e-weights-* namespaces with a platform config that sends
the download pods to the process nodes (`cache.downloadNodeSelector` and
`cache.downloadTolerations`: they carry the GPU taint) and the downloads to the
stand-in (`cache.hubEndpoint`). The failure cases' engines ask for KWOK GPUs: only their
downloader is real. vLLM starts twice in this module (one ModelDeployment, scaled from 1
to 2 replicas once its cache is Ready, so both engines load at once), ~30 s and ~3 GiB
each.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fake_hub
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness import (
    Cluster,
    NotYet,
    create_namespace,
    delete_namespace,
    describe_namespace,
    wait_for,
)
from harness.k8s import bind_cache_volume, pod_ip
from harness.netpol import host_addresses
from harness.nodepool import RUNTIME_LABEL
from openmodel_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    WEIGHTS_NAMESPACE_PREFIX,
    OperatorProcess,
    condition,
    create_md,
    get_md,
    platform_config,
    start_operator,
)
from real_engine.cluster_objects import ready_pods
from real_engine.cpu import CPU_ARGS, CPU_ENV, START_TIMEOUT

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine]

TINY_REPO = "acme/tiny"
GATED_REPO = "acme/gated"
ROOMY_REPO = "acme/roomy"  # larger than the claim it is fetched into
FLAKY_REPO = "acme/flaky"  # the stand-in drops the first GET of each file mid-body
GATED_TOKEN = "hf_e2e_gated"
MiB = 2**20
# Above huggingface_hub's 10 MiB read size, and cut after two of its pieces: the resume
# asks for the rest from the last whole piece (`Range: bytes=20971520-`).
FLAKY_FILE_BYTES = 24 * MiB
FLAKY_DROP_AFTER = 22 * MiB
ROOMY_FILE_BYTES = 4 * MiB
TMPFS_SIZE = "1m"
DOWNLOAD_TIMEOUT = 90.0
SERVED = "tiny"
# Sizing reads no config.json here (the operator's resolver is off): the tiny model's
# shape, as real_engine/tiny_model.py builds it.
TINY_MODEL_INFO = {
    "parametersBillions": 0.0001,
    "layers": 1,
    "attentionHeads": 2,
    "kvHeads": 2,
    "headDim": 32,
    "intermediateSize": 128,
    "maxContextLength": 4096,
}


def pod_reachable_address() -> str:
    """This machine's own (non-loopback) address: a process-node pod reaches it through
    its veth as its node's address, which NetworkPolicy always lets through."""
    found = [a for a in host_addresses() if not a.startswith("127.")]
    if not found:
        pytest.fail("this machine has no non-loopback IPv4 address for pods to reach")
    return found[0]


@pytest.fixture(scope="module")
def hub(tiny_model: Path) -> Iterator[fake_hub.FakeHub]:
    server = fake_hub.FakeHub().start(pod_reachable_address())
    server.add_repo(TINY_REPO, {p.name: p.read_bytes() for p in sorted(tiny_model.iterdir())})
    config = (tiny_model / "config.json").read_bytes()
    for repo, size, token in ((GATED_REPO, MiB, GATED_TOKEN), (ROOMY_REPO, ROOMY_FILE_BYTES, None)):
        server.add_repo(repo, {"config.json": config, "model.safetensors": os.urandom(size)}, token)
    server.add_repo(
        FLAKY_REPO,
        {"config.json": config, "model.safetensors": os.urandom(FLAKY_FILE_BYTES)},
        drop_after=FLAKY_DROP_AFTER,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def weights_operator(
    cluster: Cluster, crd: None, hub: fake_hub.FakeHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    cluster.require_process_nodes()
    workdir = tmp_path_factory.mktemp("weights-operator")
    config_path = workdir / "weights-platform.yaml"
    cache = {
        "hubEndpoint": hub.url,
        # Any tag of the operator's image stands for the repository's venv on a process node.
        "downloaderImage": "openmodel/operator:e2e",
        "downloadNodeSelector": {RUNTIME_LABEL: "process"},
        "downloadTolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "downloadBackoffLimit": 1,
    }
    config_path.write_text(yaml.safe_dump({**platform_config(), "cache": cache}))
    op = start_operator(
        cluster.kubeconfig,
        workdir,
        extra_env={
            "OPENMODEL_NAMESPACES": f"{WEIGHTS_NAMESPACE_PREFIX}-*",
            "OPENMODEL_CONFIG": str(config_path),
        },
        name="operator-weights",
    )
    yield op
    op.stop()


@pytest.fixture
def ns(api_client: client.ApiClient) -> Iterator[str]:
    name = create_namespace(api_client, WEIGHTS_NAMESPACE_PREFIX)
    yield name
    delete_namespace(api_client, name)


@pytest.fixture
def cache_volume(api_client: client.ApiClient, ns: str) -> Iterator[Callable[[str, Path], None]]:
    """Binds a hostPath volume at a directory to a ModelDeployment's own cache claim;
    the volumes are deleted after the test."""
    made: list[str] = []

    def bind(md_name: str, path: Path) -> None:
        made.append(bind_cache_volume(api_client, ns, f"{md_name}-cache-rwx", "1Gi", path))

    yield bind
    for volume in made:
        with contextlib.suppress(ApiException):
            client.CoreV1Api(api_client).delete_persistent_volume(volume)


def cached_md(namespace: str, name: str, model: str, gpu: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": model,
            "engine": "vllm",
            "gpu": {"type": gpu, "count": 1},
            "maxModelLen": 1024,
            "modelInfo": TINY_MODEL_INFO,
            "cache": {"size": "1Gi"},
            **spec,
        },
    }


def cache_status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    status = (get_md(api, namespace, name) or {}).get("status") or {}
    return dict(status.get("cache") or {})


def from_pods(entries: list[fake_hub.Logged], repo: str) -> list[fake_hub.Logged]:
    """The requests for `repo` that came from a pod (not the test or the operator)."""
    local = {"127.0.0.1", *host_addresses()}
    return [e for e in entries if f"/{repo}/" in e.path and e.remote not in local]


def pod_downloads(hub: fake_hub.FakeHub, repo: str, name: str) -> list[fake_hub.Logged]:
    """GETs of a file's body that came from a pod."""
    return from_pods(hub.downloads(name), repo)


def download_pods(core: client.CoreV1Api, namespace: str, name: str) -> list[client.V1Pod]:
    selector = f"openmodel.dev/weights-for={name}"
    return list(core.list_namespaced_pod(namespace, label_selector=selector).items)


def assert_ran_on_a_process_node(api: client.ApiClient, pod: client.V1Pod) -> None:
    node = client.CoreV1Api(api).read_node(pod.spec.node_name)
    assert node.metadata.labels[RUNTIME_LABEL] == "process", pod.spec.node_name
    status = pod.status.container_statuses[0]
    terminated = status.state.terminated
    container = status.container_id or (terminated.container_id if terminated else None)
    assert str(container).startswith("process://"), status  # a real process ran


def completion(pod: client.V1Pod) -> dict[str, Any]:
    body = json.dumps({"model": SERVED, "prompt": "the model", "max_tokens": 4}).encode()
    request = urllib.request.Request(
        f"http://{pod_ip(pod)}:8000/v1/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def ready_cache(api: client.ApiClient, namespace: str, name: str) -> Callable[[], Any]:
    """status.cache once Ready; an engine Deployment seen before is an error unless its
    download Job had completed (read after the Deployments: a Job's completion stays)."""
    apps, batch = client.AppsV1Api(api), client.BatchV1Api(api)

    def check() -> dict[str, Any] | NotYet:
        engines = apps.list_namespaced_deployment(namespace).items
        jobs = batch.list_namespaced_job(namespace).items
        if engines:
            assert jobs and all(j.status.succeeded for j in jobs), "an engine before its weights"
        cache = cache_status(api, namespace, name)
        assert cache.get("phase") != "Failed", cache
        return cache if cache.get("phase") == "Ready" else NotYet(cache)

    return check


def test_downloaded_once_then_two_vllm_replicas_start_offline_from_the_cache(
    api_client: client.ApiClient,
    weights_operator: OperatorProcess,
    hub: fake_hub.FakeHub,
    ns: str,
    cache_volume: Callable[[str, Path], None],
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(api_client)
    batch = client.BatchV1Api(api_client)
    name = "tiny"
    cache_volume(name, tmp_path / "cache")

    def explain() -> str:
        return f"{describe_namespace(api_client, ns)}\n{weights_operator.log_tail()}"

    create_md(api_client, cached_md(ns, name, TINY_REPO, "nvidia-a10g", servedModelName=SERVED,
                                    args=CPU_ARGS, env=CPU_ENV, replicas=1))  # fmt: skip

    cache = wait_for(ready_cache(api_client, ns, name), DOWNLOAD_TIMEOUT, explain)
    repo = hub.repos[TINY_REPO]
    assert cache["revision"] == repo.sha, cache
    assert cache["bytesTotal"] == sum(len(data) for data in repo.files.values()), cache
    (job,) = batch.list_namespaced_job(ns).items
    assert job.status.succeeded == 1, job.status
    (downloader,) = download_pods(core, ns, name)
    assert_ran_on_a_process_node(api_client, downloader)
    snapshot = tmp_path / "cache" / "hub" / "models--acme--tiny" / "snapshots" / repo.sha
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(repo.files)

    def ready(count: int) -> Any:
        def check() -> list[client.V1Pod] | NotYet:
            pods = ready_pods(core, ns, name)
            return pods if len(pods) == count else NotYet([p.metadata.name for p in pods])

        return check

    # The scale-out, a spec edit once the cache is Ready, asks for no second download;
    # made now, while the first replica loads, both engines load at once.
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, {"spec": {"replicas": 2}}
    )
    first, second = wait_for(ready(2), START_TIMEOUT, explain)
    assert {first.spec.node_name, second.spec.node_name} == {"process-a10g-0", "process-a10g-1"}
    for pod in (first, second):
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["HF_HUB_OFFLINE"] == "1"
        assert completion(pod)["choices"][0]["text"]

    # One download of each file, by the download pod; nothing asked by the engines.
    for file in repo.files:
        fetched = pod_downloads(hub, TINY_REPO, file)
        assert [(e.remote, e.status) for e in fetched] == [(downloader.status.pod_ip, 200)], file
    engines = {pod_ip(first), pod_ip(second)}
    assert [e for e in hub.log if e.remote in engines] == []
    assert len(batch.list_namespaced_job(ns).items) == 1


def failed_cache(api: client.ApiClient, namespace: str, name: str, explain: Any) -> dict[str, Any]:
    """status.cache once Failed, with the Degraded condition; never an engine before it."""
    apps = client.AppsV1Api(api)

    def failed() -> dict[str, Any] | NotYet:
        assert apps.list_namespaced_deployment(namespace).items == [], "an engine started"
        cache = cache_status(api, namespace, name)
        return cache if cache.get("phase") == "Failed" else NotYet(cache)

    cache = wait_for(failed, DOWNLOAD_TIMEOUT, explain)
    degraded = condition(get_md(api, namespace, name), "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == cache["reason"], degraded
    assert apps.list_namespaced_deployment(namespace).items == []
    return cache


@contextlib.contextmanager
def small_filesystem(size: str) -> Iterator[Path]:
    """A tmpfs of `size` (a claim's volume that fills up: ENOSPC, as on a real disk)."""
    path = Path(tempfile.mkdtemp(prefix="openmodel-small-cache-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


@pytest.mark.parametrize(
    ("model", "reason", "says"),
    [
        ("acme/absent", "DownloadNotFound", "404"),
        (GATED_REPO, "DownloadUnauthorized", "401"),
        (ROOMY_REPO, "DownloadOutOfSpace", "no space left"),
    ],
)
def test_a_download_that_cannot_succeed_says_why_and_starts_no_engine(
    api_client: client.ApiClient,
    weights_operator: OperatorProcess,
    hub: fake_hub.FakeHub,
    ns: str,
    cache_volume: Callable[[str, Path], None],
    tmp_path: Path,
    model: str,
    reason: str,
    says: str,
) -> None:
    name = "broken"
    core = client.CoreV1Api(api_client)

    def explain() -> str:
        return f"{describe_namespace(api_client, ns)}\n{weights_operator.log_tail()}"

    with contextlib.ExitStack() as stack:
        volume = tmp_path / "cache"
        if model == ROOMY_REPO:
            volume = stack.enter_context(small_filesystem(TMPFS_SIZE))
        cache_volume(name, volume)
        create_md(api_client, cached_md(ns, name, model, "nvidia-l4"))
        cache = failed_cache(api_client, ns, name, explain)
        assert cache["reason"] == reason, cache
        assert says in cache["message"] and cache["job"] in cache["message"], cache
        (pod,) = download_pods(core, ns, name)  # failed at once: no retry
        assert_ran_on_a_process_node(api_client, pod)
        assert pod.status.phase == "Failed"
        if model == GATED_REPO:
            refused = [e.status for e in from_pods(hub.log, GATED_REPO) if "/resolve/" in e.path]
            assert refused and set(refused) == {401}, refused


def test_a_connection_dropped_mid_file_is_resumed_then_the_engine_starts(
    api_client: client.ApiClient,
    weights_operator: OperatorProcess,
    hub: fake_hub.FakeHub,
    ns: str,
    cache_volume: Callable[[str, Path], None],
    tmp_path: Path,
) -> None:
    name = "flaky"
    apps = client.AppsV1Api(api_client)
    cache_volume(name, tmp_path / "cache")

    def explain() -> str:
        return f"{describe_namespace(api_client, ns)}\n{weights_operator.log_tail()}"

    create_md(api_client, cached_md(ns, name, FLAKY_REPO, "nvidia-l4"))

    cache = wait_for(ready_cache(api_client, ns, name), DOWNLOAD_TIMEOUT, explain)
    fetched = pod_downloads(hub, FLAKY_REPO, "model.safetensors")
    # The first GET cut off mid-body, then the rest from the last whole 10 MiB piece.
    assert [(e.range, e.status) for e in fetched] == [
        (None, 200),
        (f"bytes={2 * 10 * MiB}-", 206),
    ], fetched
    assert fetched[0].body_bytes == FLAKY_DROP_AFTER
    assert fetched[1].body_bytes == FLAKY_FILE_BYTES - 2 * 10 * MiB
    assert cache["bytesTotal"] == FLAKY_FILE_BYTES + len(hub.repos[FLAKY_REPO].files["config.json"])
    blob = (
        tmp_path
        / "cache"
        / "hub"
        / "models--acme--flaky"
        / "snapshots"
        / hub.repos[FLAKY_REPO].sha
        / "model.safetensors"
    )
    assert blob.read_bytes() == hub.repos[FLAKY_REPO].files["model.safetensors"]
    # One pod: the resume happened inside it, not by a retry of the Job.
    assert len(download_pods(client.CoreV1Api(api_client), ns, name)) == 1
    wait_for(
        lambda: apps.list_namespaced_deployment(ns).items or NotYet("no Deployment"),
        60,
        explain,
    )
