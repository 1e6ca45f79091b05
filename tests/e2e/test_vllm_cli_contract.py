"""The vLLM command line the operator renders, checked by real vLLM's own parser.

No cluster: each ModelDeployment is rendered with the functions `openmodel render`
uses, and the engine container's command and args go to
real_engine/vllm_cli_check.py, run by the vLLM CPU environment's python. That script
parses them with vLLM's `vllm serve` parser and, for a local model, builds vLLM's model
config (quantization name, max model length, the model's config.json), so a flag vLLM
dropped or renamed fails here instead of in a crash-looping pod. One check server for
the session (real_engine/cli_checker.py) imports vLLM once; each check is a child of it.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from openmodel.cli import plan_document
from openmodel.config import load_config
from openmodel.engines.vllm import VLLM_QUANTIZATIONS

from openmodel_fixtures import EXAMPLES
from real_engine.cli_checker import shared_checker
from real_engine.env import HERE
from real_engine.fixtures import engine_env

pytestmark = pytest.mark.real_engine

CHECK_TIMEOUT_SECONDS = 180
# Where the renderer mounts pvc://tiny/model inside the container.
TINY_CONTAINER_PATH = "/models/tiny/model"

TINY_MD: dict[str, Any] = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "tiny", "namespace": "default"},
    "spec": {
        "model": "pvc://tiny/model",
        "engine": "vllm",
        "gpu": {"type": "nvidia-l4", "count": 1},
        "servedModelName": "tiny",
        "maxModelLen": 1024,
        "args": ["--enforce-eager"],
    },
}


def vllm_examples() -> list[Path]:
    return sorted(
        p
        for p in EXAMPLES.glob("*.yaml")
        if (yaml.safe_load(p.read_text()).get("spec") or {}).get("engine") == "vllm"
    )


def engine_container(body: dict[str, Any]) -> dict[str, Any]:
    """command and args of the engine container, as `openmodel render` prints them."""
    objects = plan_document(body, load_config(None)).children.all()
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert len(deployments) == 1, [o["kind"] for o in objects]
    containers = deployments[0]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, [c["name"] for c in containers]
    return {"command": containers[0]["command"], "args": containers[0]["args"]}


def cli_check(
    vllm_python: Path, container: dict[str, Any], tmp_path: Path, *, parse_only: bool = False
) -> dict[str, Any]:
    """vllm_cli_check.py's report on one container's command line (checked by the
    session's check server, in a child of its own)."""
    run = shared_checker(vllm_python).check(container, tmp_path, parse_only, CHECK_TIMEOUT_SECONDS)
    where = f"container {container}\nstderr tail:\n{run.stderr[-4000:]}"
    assert run.exit_code == 0, f"vllm_cli_check.py exited {run.exit_code}: {where}"
    assert run.report, f"vllm_cli_check.py wrote no report: {where}"
    report: dict[str, Any] = json.loads(run.report)
    report["_where"] = where
    return report


def with_local_model(container: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """The container's args with the PVC mount path replaced by a local directory."""
    out = copy.deepcopy(container)
    hits = [i for i, a in enumerate(out["args"]) if a == TINY_CONTAINER_PATH]
    assert len(hits) == 1, f"expected {TINY_CONTAINER_PATH} once in {out['args']}"
    out["args"][hits[0]] = str(model_dir)
    return out


@pytest.fixture(scope="session")
def tiny_report(
    vllm_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The check of case (a), shared with the quantization test (one vLLM start)."""
    container = engine_container(copy.deepcopy(TINY_MD))
    local = with_local_model(container, tiny_model)
    report = cli_check(vllm_python, local, tmp_path_factory.mktemp("tiny-check"))
    report["_container"] = container
    return report


def test_rendered_tiny_deployment_parses_and_builds_vllm_model_config(
    tiny_report: dict[str, Any], tiny_model: Path
) -> None:
    container, where = tiny_report["_container"], tiny_report["_where"]
    # `vllm serve` with the model as its positional argument (vLLM refuses --model
    # next to it).
    assert container["command"] == ["vllm", "serve"], container
    assert container["args"][0] == TINY_CONTAINER_PATH, container
    assert "--model" not in container["args"], container
    assert tiny_report["parsed"], f"{tiny_report['error']}\n{where}"
    assert tiny_report["model_config_ok"], f"{tiny_report['model_config_error']}\n{where}"
    assert tiny_report["model"] == str(tiny_model)
    assert tiny_report["served_model_name"] == ["tiny"]
    assert tiny_report["max_model_len"] == 1024
    assert tiny_report["tensor_parallel_size"] == 1
    assert tiny_report["quantization"] is None
    assert tiny_report["resolved"]["max_model_len"] == 1024
    assert tiny_report["resolved"]["served_model_name"] == "tiny"


@pytest.mark.parametrize(
    "spec_value", sorted(k for k, v in VLLM_QUANTIZATIONS.items() if v is not None)
)
def test_operator_quantization_is_known_to_vllm(
    tiny_report: dict[str, Any], spec_value: str
) -> None:
    known = tiny_report["known_quantizations"]
    assert known, "vllm_cli_check.py reported no QUANTIZATION_METHODS"
    flag = VLLM_QUANTIZATIONS[spec_value]
    assert flag in known, (
        f"spec.quantization {spec_value!r} renders --quantization {flag!r}, which this "
        f"vLLM does not know; its QUANTIZATION_METHODS: {known}"
    )


def test_unknown_user_flag_is_refused_by_vllm(
    vllm_python: Path, tiny_model: Path, tmp_path: Path
) -> None:
    body = copy.deepcopy(TINY_MD)
    body["spec"]["args"] = ["--enforce-eager", "--no-such-flag"]
    container = with_local_model(engine_container(body), tiny_model)
    assert container["args"][-1] == "--no-such-flag", container
    report = cli_check(vllm_python, container, tmp_path)
    assert not report["parsed"], f"vLLM accepted --no-such-flag\n{report['_where']}"
    assert report["error"] and "--no-such-flag" in report["error"], report["error"]
    assert "unrecognized arguments" in report["error"], report["error"]


@pytest.mark.parametrize("example", vllm_examples(), ids=lambda p: p.name)
def test_vllm_example_parses(vllm_python: Path, example: Path, tmp_path: Path) -> None:
    body = yaml.safe_load(example.read_text())
    container = engine_container(body)
    # Parse only: the examples' models are Hub repos, not on this machine.
    report = cli_check(vllm_python, container, tmp_path, parse_only=True)
    assert report["parsed"], f"{report['error']}\n{report['_where']}"
    # vLLM read back what was rendered.
    args, spec = container["args"], body["spec"]
    assert report["model"] == spec["model"] == args[0]
    assert report["tensor_parallel_size"] == int(flag_value(args, "--tensor-parallel-size"))
    if "--max-model-len" in args:
        assert report["max_model_len"] == int(flag_value(args, "--max-model-len"))
    assert report["quantization"] == VLLM_QUANTIZATIONS[spec.get("quantization", "none")]
    assert report["served_model_name"] == [flag_value(args, "--served-model-name")]


def flag_value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} not exactly once in {args}"
    return args[args.index(flag) + 1]


def test_examples_include_vllm() -> None:
    assert vllm_examples(), f"no example in {EXAMPLES} uses engine vllm"


@pytest.fixture(scope="module")
def tiny_encoders(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """real_engine/tiny_encoder.py's embedder and reranker (`<tmp>/models/...`)."""
    out = tmp_path_factory.mktemp("encoders") / "models"
    done = subprocess.run(
        [str(vllm_python), str(HERE / "tiny_encoder.py"), str(out)],
        capture_output=True, text=True, timeout=300, env=engine_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    ("task", "model_dir", "convert"),
    [("embed", "embedder", "embed"), ("rerank", "reranker", "classify")],
)
def test_rendered_pooling_deployment_builds_vllms_pooling_model_config(
    vllm_python: Path, tiny_encoders: Path, tmp_path: Path, task: str, model_dir: str, convert: str
) -> None:
    body = copy.deepcopy(TINY_MD)
    body["spec"]["task"] = task
    del body["spec"]["maxModelLen"]  # BERT's 512 positions: the engine's own context
    container = with_local_model(engine_container(body), tiny_encoders / model_dir)
    report = cli_check(vllm_python, container, tmp_path)
    where = report["_where"]
    assert report["parsed"], f"{report['error']}\n{where}"
    assert (report["runner"], report["convert"]) == ("pooling", convert), where
    assert report["model_config_ok"], f"{report['model_config_error']}\n{where}"
    resolved = report["resolved"]
    assert (resolved["runner_type"], resolved["convert_type"]) == ("pooling", convert), resolved
    assert resolved["max_model_len"] == 512, resolved
