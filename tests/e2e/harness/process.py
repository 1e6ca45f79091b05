"""Supervision of the control plane's processes.

Each component runs in its own process group with stdout/stderr in its own log
file. Nothing outlives the Python process that owns it: components started
with ``owned=True`` get SIGKILL from the kernel if this process dies
(PR_SET_PDEATHSIG), are stopped by an ``atexit`` hook, and SIGTERM/SIGHUP are
turned into KeyboardInterrupt so that pytest's teardown (and ``finally``
blocks) run. ``python -m perf.cluster up`` starts components with ``owned=False`` so
they keep running after it exits; ``stop_detached`` ends them later by pid.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

LOG_TAIL_LINES = 30
_PR_SET_PDEATHSIG = 1


class ComponentError(RuntimeError):
    """A component failed to start, became unhealthy or died; carries its log tail."""

    def __init__(self, name: str, problem: str, log_path: Path | None) -> None:
        self.name = name
        self.problem = problem
        self.log_path = log_path
        tail = read_tail(log_path) if log_path else ""
        where = f"\n--- last {LOG_TAIL_LINES} lines of {log_path} ---\n{tail}" if log_path else ""
        super().__init__(f"{name}: {problem}{where}")


def read_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Component:
    """One supervised process: a name, its command line and its log file."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, *, stop_timeout: float = 5.0
    ) -> None:
        self.name = name
        self.stop_timeout = stop_timeout
        self.argv = list(argv)
        self.log_path = log_path
        self.log_offset = 0  # where this run's output starts in a reused log file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._process.pid

    def start(
        self,
        *,
        owned: bool = True,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        """Start the process in a new process group, logging to ``log_path``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.log_offset = log.tell()
            log.write(f"### {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                self._process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if owned else None,
                    env=env,
                    pass_fds=pass_fds,
                )
            except OSError as error:
                raise ComponentError(
                    self.name, f"cannot execute {self.argv[0]}: {error}", self.log_path
                ) from error
        if owned:
            _register(self)

    def log_since_start(self) -> str:
        """This run's log output (the file may hold earlier runs)."""
        with self.log_path.open("rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode(errors="replace")

    def returncode(self) -> int | None:
        """None while running, else the exit status."""
        return None if self._process is None else self._process.poll()

    def raise_if_exited(self) -> None:
        code = self.returncode()
        if code is not None:
            raise ComponentError(self.name, f"exited with status {code}", self.log_path)

    def terminate(self) -> None:
        """Send SIGTERM to the whole process group (no wait)."""
        if self._process is not None:
            _signal_group(self._process.pid, signal.SIGTERM)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the group, SIGKILL it after ``timeout`` seconds (default: the
        component's own stop timeout), reap the child."""
        timeout = self.stop_timeout if timeout is None else timeout
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        # Anything the component forked is in the same group.
        _signal_group(process.pid, signal.SIGKILL)
        _unregister(self)

    def __repr__(self) -> str:
        pid = self._process.pid if self._process else None
        return f"Component({self.name!r}, pid={pid}, rc={self.returncode()})"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_owned: list[Component] = []
_owned_lock = threading.Lock()
_hooks_installed = False


def _register(component: Component) -> None:
    global _hooks_installed
    with _owned_lock:
        _owned.append(component)
        if not _hooks_installed:
            atexit.register(stop_all_owned)
            _install_signal_handlers()
            _hooks_installed = True


def _unregister(component: Component) -> None:
    with _owned_lock, contextlib.suppress(ValueError):
        _owned.remove(component)


def stop_all_owned() -> None:
    """Kill every component this process still owns (atexit hook; also safe to call)."""
    with _owned_lock:
        remaining = list(reversed(_owned))
    for component in remaining:
        component.terminate()
    for component in remaining:
        component.stop(timeout=max(3.0, component.stop_timeout))


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


def _install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so teardown code runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_interrupt)


def process_matches(pid: int, executable: str, *, by_name: bool = False) -> bool:
    """True when ``pid`` runs ``executable`` (guards against recycled pids);
    ``by_name`` compares only the file name."""
    try:
        program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    if by_name:
        return Path(program).name == executable
    return program == executable


def stop_detached(pid: int, executable: str, timeout: float = 10.0) -> bool:
    """Stop a process started with ``owned=False`` (and its group). False if it was gone."""
    if not process_matches(pid, executable):
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_matches(pid, executable) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(pid, signal.SIGKILL)
    return True


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
