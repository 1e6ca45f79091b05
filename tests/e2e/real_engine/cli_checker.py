"""vllm_cli_check.py run as a server per vLLM environment, shared by the session.

Each check of a command line used to be a process of its own, and ~8 of its ~9 s went
to importing vLLM. The server (`vllm_cli_check.py --serve`) imports vLLM once and forks
a child per check, so every check still starts from the same state, the one just after
the import, and reports on its own: its report and its stderr in its own directory.
After IDLE_SECONDS without a check the server is stopped (it holds ~0.9 GiB, and the
modules after the checks start real engines); the next check starts it again.
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

IDLE_SECONDS = 60.0


@dataclass(frozen=True)
class CheckRun:
    """One check: the child's exit code, its report (JSON text, empty if none), its
    stderr (vLLM's logs)."""

    exit_code: int
    report: str
    stderr: str


class CliChecker:
    """`vllm_cli_check.py --serve` for one vLLM environment; one check at a time."""

    def __init__(self, vllm_python: Path) -> None:
        self.vllm_python = vllm_python
        self.log_path = Path(tempfile.mkstemp(prefix="openmodel-vllm-cli-check-", suffix=".log")[1])
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._uses = 0  # which check an idle timer was armed after
        self._idle: threading.Timer | None = None

    def check(
        self, container: dict[str, Any], workdir: Path, parse_only: bool, timeout: float
    ) -> CheckRun:
        """Check `container` in `workdir` (where the report and stderr are written)."""
        request = {"container": container, "parse_only": parse_only, "workdir": str(workdir)}
        with self._lock:
            self._uses += 1
            process = self._running()
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            answered, _, _ = select.select([process.stdout], [], [], timeout)
            if not answered:
                self._stop()
                raise TimeoutError(f"vllm_cli_check.py --serve: no answer in {timeout} s")
            line = process.stdout.readline()
            if not line:
                tail = self.log_path.read_text(errors="replace")[-4000:]
                raise RuntimeError(f"vllm_cli_check.py --serve exited; its log's tail:\n{tail}")
            self._arm_idle_stop()
        report, stderr = workdir / "report.json", workdir / "stderr.log"
        return CheckRun(
            exit_code=int(json.loads(line)["exit"]),
            report=report.read_text() if report.is_file() else "",
            stderr=stderr.read_text(errors="replace") if stderr.is_file() else "",
        )

    def close(self) -> None:
        """Stop the server and remove its log (a failed check has already quoted it)."""
        with self._lock:
            self._stop()
            self.log_path.unlink(missing_ok=True)

    def _running(self) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            with self.log_path.open("a") as log:
                self._process = subprocess.Popen(
                    [str(self.vllm_python), str(CLI_CHECK_SCRIPT), "--serve"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env=engine_env(),
                    start_new_session=True,
                )
        return self._process

    def _arm_idle_stop(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = threading.Timer(IDLE_SECONDS, self._stop_if_idle, args=(self._uses,))
        self._idle.daemon = True
        self._idle.start()

    def _stop_if_idle(self, armed_after: int) -> None:
        with self._lock:
            if self._uses == armed_after:  # no check since this timer was armed
                self._stop()

    def _stop(self) -> None:
        """EOF ends the server; killed if it does not end at once."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@functools.cache
def shared_checker(vllm_python: Path) -> CliChecker:
    """The session's checker for this vLLM environment (its server started on first use)."""
    checker = CliChecker(vllm_python)
    atexit.register(checker.close)
    return checker
