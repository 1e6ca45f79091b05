"""The multi-node launch the operator renders for a LeaderWorkerSet group, run by real
vLLM (the 0.32 CPU build): the leader's and the worker's command lines as rendered, the
LWS variables expanded as the kubelet would (`$(LWS_LEADER_ADDRESS)` the leader's address,
`$(LWS_WORKER_INDEX)` the worker's index), parsed by vLLM's own `vllm serve` parser, then
started as two processes on this machine standing for two nodes: the leader (rank 0,
the API server) and the `--headless` worker (rank 1), joined through vLLM's
multiprocessing executor at `--master-addr`, no Ray. A completion through the leader is
computed by both ranks.

The layout is tensor parallel across the two processes (`--tensor-parallel-size 2
--pipeline-parallel-size 1` in spec.args, which argparse takes over the rendered
values): the rendered pipeline parallel
layout (`--pipeline-parallel-size 2`) starts on the CPU build too, both ranks loaded, but
its first request fails inside vLLM (the scheduler's batch queue: `KeyError` on the
request id in `update_from_output`, 0.32 CPU), and the tiny model has one layer.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_vllm_cli_contract import TINY_CONTAINER_PATH, cli_check

from openmodel.cli import plan_document
from openmodel.config import load_config

from harness import NotYet, wait_for
from harness.ports import free_port
from harness.process import Component, read_tail
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
        "args": ["--enforce-eager"],
    },
}


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


def test_leader_and_headless_worker_serve_a_completion_together(
    vllm_python: Path, tiny_model: Path, tmp_path: Path
) -> None:
    body = copy.deepcopy(GROUP_MD)
    master_port = free_port()
    # Tensor parallel over the two processes (see the module docstring), and a free
    # rendezvous port: both through spec.args, as a user would.
    body["spec"]["args"] += [
        "--tensor-parallel-size", "2", "--pipeline-parallel-size", "1",
        "--master-port", str(master_port),
    ]  # fmt: skip
    leader, worker = group_containers(body)
    port = free_port()
    bin_dir = vllm_python.parent
    processes = []
    for name, container, index, own_port in (
        ("worker", worker, 1, None),
        ("leader", leader, 0, port),
    ):
        local = as_the_kubelet_runs_it(container, tiny_model, index, own_port)
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
        assert "rank 1 in world size 2" in worker_log and "TP rank 1" in worker_log, logs()
        assert "rank 0 in world size 2" in leader_process.log_since_start(), logs()
    finally:
        for p in reversed(processes):
            p.stop()
