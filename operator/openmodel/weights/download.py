"""The weights downloader: the one process of the download Job's pod.

    python -m openmodel.weights.download --repo org/name --revision main \\
        [--commit SHA] --allow '*.safetensors' … [--ignore 'original/*'] \\
        [--adapter org/adapter …] [--verify-only]

It fills the Hugging Face cache under `$HF_HOME/hub` (the claim's mount) with the files
an engine loads, through `huggingface_hub` (the Hub's own client: its resume of a dropped
connection with `Range`, ETag checks, auth with `HF_TOKEN`, revisions and cache layout,
which the engines read back offline). Files already complete in the cache are not
fetched again, so a retried Job, or another ModelDeployment's Job on a shared claim,
fetches only what is missing. `--verify-only` (a ReadOnlyMany claim filled beforehand)
fetches nothing and checks that the snapshot is complete.

Output, for the operator (weights/state.py): every few seconds one JSON line on stdout,
`{"bytesDone": …, "bytesTotal": …, "revision": …}`; at the end one JSON line with the
result (`{"phase": "Ready", "revision", "bytes", "files"}`) or the failure
(`{"phase": "Failed", "reason", "message"}`), also written to the termination message
file. The exit code names a cause no retry can fix (render.PERMANENT_EXIT_CODES), so the
Job's podFailurePolicy fails it at once; anything else exits 1 and the Job retries.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from huggingface_hub import HfApi, get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

from openmodel.weights.render import (
    EXIT_INCOMPLETE,
    EXIT_NOT_FOUND,
    EXIT_OUT_OF_SPACE,
    EXIT_UNAUTHORIZED,
)

EXIT_RETRY = 1
TERMINATION_LOG = "/dev/termination-log"
PROGRESS_SECONDS = 5.0
# A pod killed mid-file leaves a process-unique `*.incomplete` file that nothing will
# ever finish; older than this, it is removed at start.
STALE_INCOMPLETE_SECONDS = 3600.0
# Pickled and older formats, fetched only when the revision has no safetensors.
_LEGACY_WEIGHTS = (".bin", ".pt", ".pth")


class DownloadError(Exception):
    """A failure with its exit code and one line for the condition's message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Request:
    repo: str
    revision: str
    commit: str | None
    allow: tuple[str, ...]
    ignore: tuple[str, ...]
    adapters: tuple[str, ...] = ()
    verify_only: bool = False


@dataclass(frozen=True)
class Result:
    revision: str  # the commit fetched
    bytes: int
    files: int


def repo_folder(cache_dir: Path, repo: str) -> Path:
    return cache_dir / ("models--" + repo.replace("/", "--"))


def choose_files(sizes: dict[str, int], allow: Sequence[str], ignore: Sequence[str]) -> list[str]:
    """The files to fetch: matched by `allow`, not by `ignore`; pickled weights only when
    the revision has no safetensors (a repo often ships both)."""
    # fnmatch, as huggingface_hub matches its allow/ignore patterns (`*` crosses `/`).
    chosen = [
        name
        for name in sorted(sizes)
        if any(fnmatch.fnmatch(name, p) for p in allow)
        and not any(fnmatch.fnmatch(name, p) for p in ignore)
    ]
    if any(name.endswith(".safetensors") for name in chosen):
        chosen = [name for name in chosen if not name.endswith(_LEGACY_WEIGHTS)]
    return chosen


def bytes_on_disk(folder: Path, commit: str, files: Iterable[str]) -> int:
    """Bytes of `files` complete in the snapshot, plus what is being written now."""
    snapshot = folder / "snapshots" / commit
    done = 0
    for name in files:
        try:
            done += (snapshot / name).stat().st_size
        except OSError:
            continue
    blobs = folder / "blobs"
    if blobs.is_dir():
        for partial in blobs.glob("*.incomplete"):
            try:
                done += partial.stat().st_size
            except OSError:
                continue
    return done


def remove_stale_incomplete(cache_dir: Path, now: float, older_than: float) -> int:
    removed = 0
    for partial in cache_dir.glob("models--*/blobs/*.incomplete"):
        try:
            if now - partial.stat().st_mtime > older_than:
                partial.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def write_ref(folder: Path, revision: str, commit: str) -> None:
    """`refs/<revision>` -> the commit fetched, so an engine asked for the branch or tag
    finds this snapshot offline (snapshot_download writes it only when it resolved the
    branch itself, not when given the commit the resolver pinned)."""
    if revision == commit:
        return
    ref = folder / "refs" / revision
    if ref.is_file() and ref.read_text() == commit:
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    tmp.write_text(commit)
    tmp.replace(ref)


class Progress:
    """Prints the bytes on disk every `every` seconds, in a thread, until stopped."""

    def __init__(self, measure: Callable[[], int], total: int, commit: str, out: TextIO,
                 every: float) -> None:  # fmt: skip
        self.measure, self.total, self.commit, self.out, self.every = (
            measure, total, commit, out, every,
        )  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def print_once(self) -> None:
        line = {"bytesDone": min(self.measure(), self.total), "bytesTotal": self.total,
                "revision": self.commit}  # fmt: skip
        print(json.dumps(line), file=self.out, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.print_once()

    def __enter__(self) -> Progress:
        self.print_once()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def fetch(
    request: Request,
    cache_dir: Path,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    out: TextIO = sys.stdout,
    progress_seconds: float = PROGRESS_SECONDS,
) -> Result:
    """Fill (or with verify_only, check) the cache; raises the library's errors."""
    folder = repo_folder(cache_dir, request.repo)
    if request.verify_only:
        return _verify(request, cache_dir, folder)
    api = HfApi(endpoint=endpoint, token=token or False)
    commit = request.commit or api.repo_info(request.repo, revision=request.revision).sha
    if commit is None:
        raise DownloadError(
            EXIT_RETRY, DOWNLOAD_FAILED, f"the Hub named no commit for {request.repo}"
        )
    tree = api.list_repo_tree(request.repo, revision=commit, recursive=True)
    sizes = {f.path: int(f.size) for f in tree if isinstance(f, RepoFile)}
    files = choose_files(sizes, request.allow, request.ignore)
    if not files:
        raise DownloadError(
            EXIT_NOT_FOUND,
            "DownloadNotFound",
            f"{request.repo}@{commit} has none of the files the engine loads "
            f"({', '.join(request.allow)})",
        )
    total = sum(sizes[name] for name in files)
    with Progress(lambda: bytes_on_disk(folder, commit, files), total, commit, out,
                  progress_seconds):  # fmt: skip
        snapshot_download(
            request.repo,
            revision=commit,
            cache_dir=cache_dir,
            allow_patterns=files,
            endpoint=endpoint,
            token=token or False,
        )
    write_ref(folder, request.revision, commit)
    for adapter in request.adapters:
        snapshot_download(adapter, cache_dir=cache_dir, endpoint=endpoint, token=token or False)
    return Result(revision=commit, bytes=total, files=len(files))


def _verify(request: Request, cache_dir: Path, folder: Path) -> Result:
    """A claim filled beforehand: the files a download would have chosen (from the tree
    listing the cache keeps of the commit) are all in its snapshot. Nothing is asked of
    the Hub (`local_files_only`)."""
    revision = request.commit or request.revision
    try:
        tree = get_cached_repo_tree(request.repo, revision=revision, cache_dir=cache_dir)
    except CachedRepoTreeNotFoundError as e:
        raise LocalEntryNotFoundError(str(e)) from e
    sizes = {f.path: int(f.size) for f in tree}
    files = choose_files(sizes, request.allow, request.ignore)
    path = Path(
        snapshot_download(
            request.repo,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=files,
            local_files_only=True,
        )
    )
    return Result(revision=path.name, bytes=sum(sizes[name] for name in files), files=len(files))


DOWNLOAD_FAILED = "DownloadFailed"


def classify(error: BaseException, request: Request) -> DownloadError:
    """The exit code, reason and message of a failure (the library's own exceptions)."""
    what = f"{request.repo}@{request.commit or request.revision}"
    if isinstance(error, DownloadError):
        return error
    status = _status(error)
    if isinstance(error, GatedRepoError) or status in (401, 403):
        return DownloadError(
            EXIT_UNAUTHORIZED,
            "DownloadUnauthorized",
            f"{status or 401} for {what}: the repo is gated or private (the Hub answers 401 "
            "also for a repo it will not show): set spec.hfTokenSecretRef to a token with "
            "access",
        )
    if isinstance(error, RevisionNotFoundError):
        return DownloadError(EXIT_NOT_FOUND, "DownloadNotFound", f"revision not found: {what}")
    if isinstance(error, RepositoryNotFoundError) or (
        isinstance(error, RemoteEntryNotFoundError) or status == 404
    ):
        return DownloadError(
            EXIT_NOT_FOUND, "DownloadNotFound", f"404 for {what}: {_first_line(error)}"
        )
    if isinstance(error, LocalEntryNotFoundError) and request.verify_only:
        return DownloadError(
            EXIT_INCOMPLETE,
            "CacheIncomplete",
            f"the claim holds no complete snapshot of {what}: fill it before using it ReadOnlyMany",
        )
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return DownloadError(
            EXIT_OUT_OF_SPACE,
            "DownloadOutOfSpace",
            f"no space left on the cache claim while fetching {what}: raise spec.cache.size",
        )
    return DownloadError(
        EXIT_RETRY, DOWNLOAD_FAILED, f"{type(error).__name__}: {_first_line(error)}"
    )


def _status(error: BaseException) -> int | None:
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        return int(error.response.status_code)
    return None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _parse(argv: Sequence[str]) -> Request:
    parser = argparse.ArgumentParser(prog="python -m openmodel.weights.download")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--revision", default="main")
    parser.add_argument("--commit")
    parser.add_argument("--allow", action="append", default=[])
    parser.add_argument("--ignore", action="append", default=[])
    parser.add_argument("--adapter", action="append", default=[])
    parser.add_argument("--verify-only", action="store_true")
    ns = parser.parse_args(argv)
    return Request(
        repo=ns.repo,
        revision=ns.revision,
        commit=ns.commit,
        allow=tuple(ns.allow),
        ignore=tuple(ns.ignore),
        adapters=tuple(ns.adapter),
        verify_only=ns.verify_only,
    )


def hub_cache_dir(env: os._Environ[str] | dict[str, str]) -> Path:
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    return Path(env.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    request = _parse(sys.argv[1:] if argv is None else argv)
    env = os.environ
    cache_dir = hub_cache_dir(env)
    termination_log = Path(env.get("OPENMODEL_TERMINATION_LOG", TERMINATION_LOG))
    outcome: dict[str, Any]
    code = 0
    try:
        if not request.verify_only:
            cache_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_incomplete(cache_dir, time.time(), STALE_INCOMPLETE_SECONDS)
        result = fetch(
            request, cache_dir, endpoint=env.get("HF_ENDPOINT"), token=env.get("HF_TOKEN"), out=out
        )
        outcome = {"phase": "Ready", "revision": result.revision, "bytes": result.bytes,
                   "files": result.files}  # fmt: skip
    except Exception as e:  # every failure is reported with its cause, then the exit code
        failure = classify(e, request)
        code = failure.code
        outcome = {"phase": "Failed", "reason": failure.reason, "message": failure.message}
    line = json.dumps(outcome)
    print(line, file=out, flush=True)
    with contextlib.suppress(OSError):  # outside a pod the stdout line is the record
        termination_log.write_text(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
