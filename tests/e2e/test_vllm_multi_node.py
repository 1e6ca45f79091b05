"""The multi-node launch the operator renders for a LeaderWorkerSet group, run by real
vLLM (the 0.32 CPU build): the leader's and the worker's command lines as rendered, the
LWS variables expanded as the kubelet would (`$(LWS_LEADER_ADDRESS)` the leader's address,
`$(LWS_WORKER_INDEX)` the worker's index), parsed by vLLM's own `vllm serve` parser, then
started as two processes on this machine standing for two nodes: the leader (rank 0,
the API server) and the `--headless` worker (rank 1), joined through vLLM's
multiprocessing executor at `--master-addr`, no Ray. A completion through the leader is
computed by both ranks, in both layouts:

- pipeline parallel across the two processes, as rendered (`--pipeline-parallel-size 2`),
  on a 2-layer tiny model (a stage needs a layer);
- tensor parallel across them (`--tensor-parallel-size 2 --pipeline-parallel-size 1` in
  spec.args, which argparse takes over the rendered values), on the 1-layer tiny model.

CPU flags, through spec.args as a user on CPU nodes would pass them (docs/vllm-measured.md):
`--dtype float32` (bf16 picks the AMX attention kernel, which dies of SIGILL here), and
the pipeline layout without `--enforce-eager`: with it (and an explicit KV cache size)
the CPU worker skips its warm-up, the one pass that allocates a later stage's buffer for
the tensors it receives, and the first request fails on that stage.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_vllm_cli_contract import TINY_CONTAINER_PATH, cli_check

from openmodel.cli import plan_document
from openmodel.config import load_config

from harness import NotYet, wait_for
from harness.ports import free_port
from harness.process import Component, read_tail
from real_engine.env import TINY_MODEL_SCRIPT
from real_engine.fixtures import engine_env

pytestmark = pytest.mark.real_engine

LEADER_ADDRESS = "127.0.0.1"

GROUP_MD: dict[str, Any] = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "tiny", "namespace": "default"},
    "spec": {
        "model": "pvc://tiny/model",
        "engine": "vllm",
        "gpu": {"type": "nvidia-l4", "count": 1, "nodes": 2},
        "servedModelName": "tiny",
        "maxModelLen": 1024,
        "args": ["--dtype", "float32"],
    },
}

# Per layout: the model's layers, and what spec.args adds (see the module docstring).
LAYOUTS: dict[str, tuple[int, list[str]]] = {
    "pipeline": (2, []),
    "tensor": (1, ["--enforce-eager", "--tensor-parallel-size", "2",
                   "--pipeline-parallel-size", "1"]),
}  # fmt: skip
# How vLLM logs the worker's place in each layout.
WORKER_RANKS = {"pipeline": "PP rank 1, PCP rank 0, TP rank 0",
                "tensor": "PP rank 0, PCP rank 0, TP rank 1"}  # fmt: skip


def group_containers(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The leader's and the worker's engine container, as `openmodel render` prints them."""
    objects = plan_document(body, load_config(None)).children.all()
    (group,) = [o for o in objects if o["kind"] == "LeaderWorkerSet"]
    templates = group["spec"]["leaderWorkerTemplate"]
    leader, worker = (
        templates[t]["spec"]["containers"][0] for t in ("leaderTemplate", "workerTemplate")
    )
    return (
        {"command": leader["command"], "args": leader["args"]},
        {"command": worker["command"], "args": worker["args"]},
    )


def as_the_kubelet_runs_it(
    container: dict[str, Any], model: Path, worker_index: int, port: int | None = None
) -> dict[str, Any]:
    """$(VAR) references expanded as the kubelet expands them from the env LWS sets; the
    claim's mount path replaced by the local model; the leader's port a free one."""
    out = copy.deepcopy(container)
    values = {
        "$(LWS_LEADER_ADDRESS)": LEADER_ADDRESS,
        "$(LWS_WORKER_INDEX)": str(worker_index),
        TINY_CONTAINER_PATH: str(model),
    }
    out["args"] = [values.get(a, a) for a in out["args"]]
    if port is not None:
        args = out["args"]
        args[args.index("--port") + 1] = str(port)
        args[args.index("--host") + 1] = "127.0.0.1"
    return out


def test_the_rendered_group_parses_as_a_multi_node_launch(
    vllm_python: Path, tiny_model: Path, tmp_path: Path
) -> None:
    leader, worker = group_containers(copy.deepcopy(GROUP_MD))
    for index, container in ((0, leader), (1, worker)):
        local = as_the_kubelet_runs_it(container, tiny_model, index)
        (tmp_path / str(index)).mkdir()
        report = cli_check(vllm_python, local, tmp_path / str(index), parse_only=True)
        assert report["parsed"], f"{report['error']}\n{report['_where']}"
        assert (report["nnodes"], report["pipeline_parallel_size"]) == (2, 2), report
        assert report["tensor_parallel_size"] == 1
        assert report["node_rank"] == index
        assert report["master_addr"] == LEADER_ADDRESS
        assert report["headless"] is (index == 1)


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def two_layer_model(vllm_python: Path) -> Iterator[Path]:
    """The tiny model with two decoder layers: one per pipeline stage."""
    root = Path(tempfile.mkdtemp(prefix="openmodel-tiny2-model-"))
    out = root / "models" / "model"
    result = subprocess.run(
        [str(vllm_python), str(TINY_MODEL_SCRIPT), str(out), "--layers", "2"],
        capture_output=True, text=True, timeout=300, env=engine_env(), check=False,
    )  # fmt: skip
    if result.returncode != 0 or not (out / "config.json").is_file():
        pytest.fail(f"tiny_model.py --layers 2 failed ({result.returncode}):\n{result.stderr}")
    yield out
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_leader_and_headless_worker_serve_a_completion_together(
    layout: str,
    vllm_python: Path,
    tiny_model: Path,
    two_layer_model: Path,
    tmp_path: Path,
) -> None:
    layers, layout_args = LAYOUTS[layout]
    model = two_layer_model if layers == 2 else tiny_model
    body = copy.deepcopy(GROUP_MD)
    # A free rendezvous port, through spec.args as a user would.
    body["spec"]["args"] += [*layout_args, "--master-port", str(free_port())]
    leader, worker = group_containers(body)
    port = free_port()
    bin_dir = vllm_python.parent
    processes = []
    for name, container, index, own_port in (
        ("worker", worker, 1, None),
        ("leader", leader, 0, port),
    ):
        local = as_the_kubelet_runs_it(container, model, index, own_port)
        argv = [str(bin_dir / local["command"][0]), *local["command"][1:], *local["args"]]
        process = Component(f"vllm-{name}", argv, tmp_path / f"{name}.log", stop_timeout=20)
        process.start(env=engine_env())
        processes.append(process)
    worker_process, leader_process = processes
    logs = lambda: "\n".join(  # noqa: E731
        f"--- {p.name} ---\n{read_tail(p.log_path, 40)}" for p in processes
    )
    try:

        def healthy() -> bool | NotYet:
            for p in processes:
                p.raise_if_exited()
            return _health(port) or NotYet("no /health yet")

        wait_for(healthy, 240, logs, interval=1.0)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            data=json.dumps({"model": "tiny", "prompt": "hello", "max_tokens": 4}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            reply = json.loads(answer.read())
        assert reply["usage"]["completion_tokens"] == 4, reply
        worker_log = worker_process.log_since_start()
        assert "headless multiproc executor" in worker_log, logs()
        assert f"rank 1 in world size 2 is assigned as DP rank 0, {WORKER_RANKS[layout]}" in (
            worker_log
        ), logs()
        assert "rank 0 in world size 2" in leader_process.log_since_start(), logs()
    finally:
        for p in reversed(processes):
            p.stop()
