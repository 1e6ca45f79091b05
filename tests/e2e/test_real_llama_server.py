"""The real llama.cpp `llama-server` in the loop: a llamacpp ModelDeployment whose pod
really runs on a process node (type nvidia-a10g), the command and args exactly as
rendered, with the CPU build of hack/install-llama-server.sh standing for the
ghcr.io/ggml-org/llama.cpp image. The model is a tiny random GGUF file the test writes
with llama.cpp's own gguf-py, on a hostPath PV (`pvc://tiny/tiny.gguf`).

Asserted: Ready from llama-server's own /health, the rendered flags accepted (`-ngl all`
on a build without a GPU, `--kv-unified`, `--alias`, `--metrics`), the OpenAI API on
the pod IP, the simulator's llama.cpp exposition against the real one, and autoscaling
1 -> 2 on the real `llamacpp:requests_deferred` and back.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness import (
    Cluster,
    NotYet,
    describe_namespace,
    wait_for,
)
from harness.process_nodes import llama_server_root, vllm_env_ready
from openmodel_fixtures import GROUP, VERSION, OperatorProcess, condition, create_md, get_md
from real_engine.cluster_objects import (
    engine_namespace,
    model_volume,
    ready_pods,
)
from real_engine.metrics_contract import compare_families, scrape

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine]

NAME = "tiny-llama"
SERVED = "tiny"
PORT = 8080
TINY_GGUF_SCRIPT = Path(__file__).resolve().parent / "real_engine" / "tiny_gguf.py"
HOW_TO_INSTALL = "run `bash hack/install-llama-server.sh` (hack/bootstrap.sh runs it)"


@pytest.fixture(scope="module")
def llama_root() -> Path:
    root = llama_server_root()
    if not vllm_env_ready(root) or not (root / "bin" / "llama-server").is_file():
        pytest.fail(f"llama-server is not built at {root}: {HOW_TO_INSTALL}", pytrace=False)
    return root


@pytest.fixture(scope="module")
def tiny_gguf(llama_root: Path) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="openmodel-tiny-gguf-"))
    out = root / "models" / "tiny.gguf"
    out.parent.mkdir(parents=True)
    python = llama_root / "py" / "bin" / "python"
    done = subprocess.run(
        [str(python), str(TINY_GGUF_SCRIPT), str(llama_root / "gguf-py"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 or not out.is_file():
        pytest.fail(f"tiny_gguf.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    yield out
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def real_namespace(api_client: client.ApiClient, cluster: Cluster) -> Iterator[str]:
    with engine_namespace(api_client, cluster, "e2e-real-llama") as name:
        yield name


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def cmdline(pod: client.V1Pod) -> list[str]:
    pid = int(pod.status.container_statuses[0].container_id.removeprefix("process://"))
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_real_llama_server_serves_and_autoscales_on_its_queue(
    api_client: client.ApiClient,
    real_namespace: str,
    tiny_gguf: Path,
    operator: OperatorProcess,
) -> None:
    ns = real_namespace
    describe = lambda: describe_namespace(api_client, ns)  # noqa: E731
    model = model_volume(api_client, ns, tiny_gguf)
    assert model == "pvc://tiny/tiny.gguf"
    create_md(
        api_client,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": ns},
            "spec": {
                "model": model,
                "engine": "llamacpp",
                "quantization": "gguf",
                "servedModelName": SERVED,
                "gpu": {"type": "nvidia-a10g", "count": 1},
                "maxModelLen": 4096,
                "autoscaling": {
                    "minReplicas": 1,
                    "maxReplicas": 2,
                    "targetQueueDepth": 1,
                    "scaleDownStabilizationSeconds": 5,
                },
            },
        },
    )
    core = client.CoreV1Api(api_client)
    started = time.monotonic()

    def ready() -> client.V1Pod | NotYet:
        md = get_md(api_client, ns, NAME)
        degraded = condition(md, "Degraded")
        if degraded.get("status") == "True":
            raise AssertionError(f"llama-server cannot start: {degraded}")
        pods = ready_pods(core, ns, NAME)
        if condition(md, "Ready").get("status") == "True" and pods:
            return pods[0]
        return NotYet(md.get("status"))

    pod = wait_for(ready, 120, describe, interval=1)
    ready_after = time.monotonic() - started
    argv = cmdline(pod)
    assert argv[0].endswith("llama-server"), argv
    assert argv[argv.index("-m") + 1] == "/models/tiny/tiny.gguf"
    assert argv[argv.index("-ngl") + 1] == "all" and "--kv-unified" in argv, argv
    base = f"http://{pod.status.pod_ip}:{PORT}"
    assert http_json(f"{base}/health") == {"status": "ok"}
    assert [m["id"] for m in http_json(f"{base}/v1/models")["data"]] == [SERVED]
    answer = http_json(
        f"{base}/v1/chat/completions",
        # A random model may sample its end token at once; llama.cpp's ignore_eos keeps going.
        {
            "model": SERVED,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "ignore_eos": True,
        },
    )
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 8
    assert compare_families(scrape(f"{base}/metrics"), "llamacpp") == []

    # 12 clients on 4 slots: 8 deferred at a time, far above the target of 1.
    stop = threading.Event()
    sent = [0]
    peak = [0.0]

    def client_loop() -> None:
        body = {"model": SERVED, "prompt": "the", "max_tokens": 600, "ignore_eos": True}
        deadline = time.monotonic() + 150
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                http_json(f"{base}/v1/completions", body, timeout=30)
                sent[0] += 1
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)

    apps = client.AppsV1Api(api_client)

    def replicas() -> int:
        return int(apps.read_namespaced_deployment(NAME, ns).spec.replicas)

    # Idle, it is at minReplicas: a scale-up seen below is the load's.
    assert replicas() == 1
    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(12)]
    for t in threads:
        t.start()
    try:

        def sample_queue() -> None:
            # The test's own reading of the first pod's queue, taken on every poll of
            # both waits: the autoscaler polls on its own clock and can scale out between
            # two of ours, so the scale-up alone may come before we have seen a queue.
            for line in scrape(f"{base}/metrics").splitlines():
                if line.startswith("llamacpp:requests_deferred "):
                    peak[0] = max(peak[0], float(line.split()[1]))

        def scaled() -> int | NotYet:
            sample_queue()
            r = replicas()
            return r if r == 2 else NotYet(f"replicas {r}, deferred peak {peak[0]}")

        def both_ready() -> bool | NotYet:
            sample_queue()
            return len(ready_pods(core, ns, NAME)) == 2 or NotYet("one ready")

        wait_for(scaled, 40, describe, interval=0.5)
        # Under the same load the new pod starts and serves (a real llama-server on the
        # other process node).
        wait_for(both_ready, 90, describe)
    finally:
        stop.set()
        for t in threads:
            t.join(35)
    assert peak[0] > 0 and sent[0] > 0, (peak, sent)
    # The operator scaled on the queue it read itself, and its Event says how deep it was.
    ups = [
        e.message
        for e in core.list_namespaced_event(ns, field_selector=f"involvedObject.name={NAME}").items
        if e.reason == "ScaleUp"
    ]
    depths = [float(m) for u in ups for m in re.findall(r"queue ([0-9.]+) over", u)]
    assert depths and max(depths) > 0, ups

    def back_to_one() -> bool | NotYet:
        r = replicas()
        return r == 1 or NotYet(f"replicas {r}")

    wait_for(back_to_one, 60, describe)
    print(f"llama-server Ready {ready_after:.1f} s after create; deferred peak {peak[0]:g}")
