"""vllm_cli_check.py run as one server per vLLM environment for the whole session.

Each check of a command line used to be a process of its own, and ~8 of its ~9 s went
to importing vLLM. The server (`vllm_cli_check.py --serve`) imports vLLM once and forks
a child per check, so every check still starts from the same state, the one just after
the import, and reports on its own: its report and its stderr in its own directory.
"""

from __future__ import annotations

import atexit
import functools
import json
import select
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .env import CLI_CHECK_SCRIPT
from .fixtures import engine_env


@dataclass(frozen=True)
class CheckRun:
    """One check: the child's exit code, its report (JSON text, empty if none), its
    stderr (vLLM's logs)."""

    exit_code: int
    report: str
    stderr: str


class CliChecker:
    """A running `vllm_cli_check.py --serve`; one check at a time."""

    def __init__(self, vllm_python: Path) -> None:
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115  (kept open by the server)
            prefix="openmodel-vllm-cli-check-", suffix=".log", delete=False
        )
        self.log_path = Path(log.name)
        self._process = subprocess.Popen(
            [str(vllm_python), str(CLI_CHECK_SCRIPT), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=engine_env(),
            start_new_session=True,
        )
        log.close()
        self._lock = threading.Lock()

    def check(
        self, container: dict[str, Any], workdir: Path, parse_only: bool, timeout: float
    ) -> CheckRun:
        """Check `container` in `workdir` (where the report and stderr are written)."""
        request = {"container": container, "parse_only": parse_only, "workdir": str(workdir)}
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        with self._lock:
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
            answered, _, _ = select.select([stdout], [], [], timeout)
            if not answered:
                self.close()
                raise TimeoutError(f"vllm_cli_check.py --serve: no answer in {timeout} s")
            line = stdout.readline()
        if not line:
            tail = self.log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"vllm_cli_check.py --serve exited; its log's tail:\n{tail}")
        report, stderr = workdir / "report.json", workdir / "stderr.log"
        return CheckRun(
            exit_code=int(json.loads(line)["exit"]),
            report=report.read_text() if report.is_file() else "",
            stderr=stderr.read_text(errors="replace") if stderr.is_file() else "",
        )

    def close(self) -> None:
        """EOF ends the server; killed if it does not end at once."""
        if self._process.poll() is not None:
            return
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@functools.cache
def shared_checker(vllm_python: Path) -> CliChecker:
    """The session's server for this vLLM environment, started on first use."""
    checker = CliChecker(vllm_python)
    atexit.register(checker.close)
    return checker
