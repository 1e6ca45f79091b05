"""What every script shares: timestamped log lines, the commit being measured, signals
turned into KeyboardInterrupt so that every `finally` stops what was started, and the
end of a work directory."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]


def log(message: str, *, file: TextIO | None = None) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=file or sys.stdout, flush=True)


def git(*argv: str) -> str:
    """A git command's output in the repository ('' when it fails)."""
    done = subprocess.run(
        ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def commit() -> str:
    """The short HEAD commit, noting uncommitted changes to the operator package."""
    dirty = git("status", "--porcelain", "--", "operator/openmodel")
    suffix = " (operator/openmodel with uncommitted changes)" if dirty else ""
    return git("rev-parse", "--short", "HEAD") + suffix


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupt_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread (SIGINT
    too: a shell starts background jobs with SIGINT ignored)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def note(message: str) -> None:
    """A progress line on stderr, for scripts whose stdout is the report alone."""
    log(message, file=sys.stderr)


def remove_or_keep(workdir: Path, keep: bool, say: Callable[[str], None] = log) -> None:
    """A script's work directory at its end: kept, with a line saying where, when asked
    to or when its logs are the evidence of a failure; else removed."""
    if keep:
        say(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
