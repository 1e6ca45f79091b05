"""Session fixtures for the real-engine tests: the vLLM CPU environment and the tiny
model it serves. A missing environment fails the tests (it is never a skip): CI
installs it through hack/test.sh, and locally `-m "not real_engine"` deselects them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .env import TINY_MODEL_SCRIPT, VllmEnvMissing
from .env import vllm_env as find_vllm_env


def engine_env() -> dict[str, str]:
    """Env for scripts run with the vLLM environment's python: never the project's
    venv, never the Hub (the only model is the tiny local one)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env["HF_HUB_OFFLINE"] = "1"
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    return env


@pytest.fixture(scope="session")
def vllm_env() -> Path:
    try:
        return find_vllm_env()
    except VllmEnvMissing as e:
        missing = f"{e} (or deselect these tests with -m 'not real_engine')"
    pytest.fail(missing, pytrace=False)  # outside `except`: no chained traceback


@pytest.fixture(scope="session")
def vllm_python(vllm_env: Path) -> Path:
    return vllm_env / "bin" / "python"


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path) -> Iterator[Path]:
    """A tiny random-weight Llama directory (``<tmp>/models/model``), made once; the
    parent directory is what a hostPath PV serves as ``pvc://<claim>/model``."""
    root = Path(tempfile.mkdtemp(prefix="openmodel-tiny-model-"))
    out = root / "models" / "model"
    result = subprocess.run(
        [str(vllm_python), str(TINY_MODEL_SCRIPT), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=engine_env(),
        check=False,
    )
    if result.returncode != 0 or not (out / "config.json").is_file():
        pytest.fail(f"tiny_model.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    yield out
    shutil.rmtree(root, ignore_errors=True)


ADAPTER_SCRIPT = Path(__file__).resolve().parent / "tiny_adapter.py"


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model: Path, vllm_python: Path) -> Path:
    """LoRA adapters for the tiny model beside it (``<tmp>/models/adapters/<name>``, so
    ``pvc://<claim>/adapters/<name>``): a1..a4 (rank 8, different seeds) and `big`
    (rank 64, above the tests' maxRank 16). Made once per session, in one process."""
    out = tiny_model.parent / "adapters"
    adapters = [("a1", 8), ("a2", 8), ("a3", 8), ("a4", 8), ("big", 64)]
    (first, first_rank), rest = adapters[0], adapters[1:]
    also = [
        arg
        for index, (name, rank) in enumerate(rest, start=2)
        for arg in ("--also", str(out / name), str(rank), str(index))
    ]
    done = subprocess.run(
        [str(vllm_python), str(ADAPTER_SCRIPT), str(tiny_model), str(out / first),
         "--rank", str(first_rank), "--seed", "1", *also],
        capture_output=True, text=True, timeout=300, env=engine_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out
