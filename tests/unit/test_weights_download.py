"""The downloader (`openmodel.weights.download`) and the fake Hub's download routes,
in-process: the real `huggingface_hub` client against tests/fake_hub.py, so the stand-in
answers as the library expects (the contract), and the downloader's files, progress,
resume and failure causes come from the library's own behaviour and exceptions."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fake_hub
import pytest
from huggingface_hub import constants, snapshot_download

from openmodel.weights import download
from openmodel.weights.render import (
    EXIT_INCOMPLETE,
    EXIT_NOT_FOUND,
    EXIT_OUT_OF_SPACE,
    EXIT_UNAUTHORIZED,
)

REPO = "acme/tiny-llm"
GATED = "acme/gated-llm"
TOKEN = "hf_secret"
WEIGHTS = os.urandom(300 * 1024)  # LFS-sized: its ETag is the sha256
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "tokenizer.json": b'{"version": "1.0"}',
    "model.safetensors": WEIGHTS,
    "pytorch_model.bin": os.urandom(20 * 1024),  # the same weights, pickled: not fetched
    "original/consolidated.00.pth": os.urandom(12 * 1024),  # never loaded
    "README.md": b"# tiny",
}
ALLOW = ("*.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.txt")
WANTED = ["config.json", "model.safetensors", "tokenizer.json"]


@pytest.fixture
def hub() -> Iterator[fake_hub.FakeHub]:
    server = fake_hub.FakeHub().start()
    server.add_repo(REPO, FILES)
    server.add_repo(GATED, FILES, token=TOKEN)
    yield server
    server.stop()


def request(repo: str = REPO, **kw: object) -> download.Request:
    fields: dict[str, object] = {
        "repo": repo,
        "revision": "main",
        "commit": None,
        "allow": ALLOW,
        "ignore": ("original/*",),
    }
    fields.update(kw)
    return download.Request(**fields)  # type: ignore[arg-type]


def snapshot(cache: Path, repo: str, commit: str) -> Path:
    return download.repo_folder(cache, repo) / "snapshots" / commit


def test_the_real_snapshot_download_reads_the_fake_hub(
    hub: fake_hub.FakeHub, tmp_path: Path
) -> None:
    path = Path(snapshot_download(REPO, cache_dir=tmp_path, endpoint=hub.url, token=False))
    assert path.name == hub.repos[REPO].sha
    assert (path / "model.safetensors").read_bytes() == WEIGHTS
    assert (path / "original" / "consolidated.00.pth").is_file()
    blob = (
        download.repo_folder(tmp_path, REPO) / "blobs" / hub.repos[REPO].etag("model.safetensors")
    )
    assert blob.is_file()  # the sha256 ETag names the blob, as on the Hub


def test_the_downloader_fetches_only_what_the_engine_loads_and_reports_progress(
    hub: fake_hub.FakeHub, tmp_path: Path
) -> None:
    out = io.StringIO()
    result = download.fetch(request(), tmp_path, endpoint=hub.url, out=out)
    commit = hub.repos[REPO].sha
    assert result == download.Result(
        revision=commit, bytes=sum(len(FILES[n]) for n in WANTED), files=3
    )
    folder = snapshot(tmp_path, REPO, commit)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == WANTED
    # The branch points at the commit, so an engine offline finds this snapshot.
    assert (download.repo_folder(tmp_path, REPO) / "refs" / "main").read_text() == commit
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"bytesDone": 0, "bytesTotal": result.bytes, "revision": commit}
    for name in ("pytorch_model.bin", "consolidated.00.pth", "README.md"):
        assert hub.downloads(name) == [], name
    assert len(hub.downloads("model.safetensors")) == 1


def test_a_second_run_fetches_nothing_again(hub: fake_hub.FakeHub, tmp_path: Path) -> None:
    download.fetch(request(), tmp_path, endpoint=hub.url, out=io.StringIO())
    download.fetch(request(), tmp_path, endpoint=hub.url, out=io.StringIO())
    assert len(hub.downloads("model.safetensors")) == 1
    assert len(hub.downloads("config.json")) == 1


def test_a_pinned_commit_is_fetched_and_the_branch_written(
    hub: fake_hub.FakeHub, tmp_path: Path
) -> None:
    commit = hub.repos[REPO].sha
    result = download.fetch(request(commit=commit), tmp_path, endpoint=hub.url, out=io.StringIO())
    assert result.revision == commit
    assert (download.repo_folder(tmp_path, REPO) / "refs" / "main").read_text() == commit
    # With the commit given, the branch was never asked for.
    assert not any(e.path.endswith("/revision/main") for e in hub.log)


def test_a_connection_dropped_mid_file_is_resumed_with_a_range(tmp_path: Path) -> None:
    # huggingface_hub reads a body in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces and resumes from
    # the last whole piece it wrote: a drop inside the first piece starts the file again
    # (measured here), a drop past it resumes with `Range`.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    big = os.urandom(chunk + 2 * 1024 * 1024)
    server = fake_hub.FakeHub(drop_after=chunk + 512 * 1024).start()
    try:
        server.add_repo(REPO, {**FILES, "model.safetensors": big})
        result = download.fetch(request(), tmp_path, endpoint=server.url, out=io.StringIO())
        path = snapshot(tmp_path, REPO, result.revision) / "model.safetensors"
        assert path.read_bytes() == big
        gets = server.downloads("model.safetensors")
        assert [(g.range, g.body_bytes) for g in gets] == [
            (None, chunk + 512 * 1024),
            (f"bytes={chunk}-", len(big) - chunk),
        ]
    finally:
        server.stop()


def test_a_gated_repo_without_its_token_is_unauthorized(
    hub: fake_hub.FakeHub, tmp_path: Path
) -> None:
    with pytest.raises(Exception) as raised:
        download.fetch(request(GATED), tmp_path, endpoint=hub.url, out=io.StringIO())
    failure = download.classify(raised.value, request(GATED))
    assert type(raised.value).__name__ == "GatedRepoError"
    assert (failure.code, failure.reason) == (EXIT_UNAUTHORIZED, "DownloadUnauthorized")
    assert "spec.hfTokenSecretRef" in failure.message
    # With it, the same download works.
    result = download.fetch(request(GATED), tmp_path, endpoint=hub.url, token=TOKEN,
                            out=io.StringIO())  # fmt: skip
    assert result.files == 3


def test_a_private_repo_answering_401_is_unauthorized(
    hub: fake_hub.FakeHub, tmp_path: Path
) -> None:
    with pytest.raises(Exception) as raised:
        download.fetch(request(fake_hub.UNAUTHORIZED_REPO), tmp_path, endpoint=hub.url)
    failure = download.classify(raised.value, request(fake_hub.UNAUTHORIZED_REPO))
    assert failure.code == EXIT_UNAUTHORIZED


@pytest.mark.parametrize(
    ("repo", "revision", "error"),
    [
        (fake_hub.MISSING_REPO, "main", "RepositoryNotFoundError"),
        (REPO, "no-such-branch", "RevisionNotFoundError"),
    ],
)
def test_a_missing_repo_or_revision_is_not_found(
    hub: fake_hub.FakeHub, tmp_path: Path, repo: str, revision: str, error: str
) -> None:
    req = request(repo, revision=revision)
    with pytest.raises(Exception) as raised:
        download.fetch(req, tmp_path, endpoint=hub.url, out=io.StringIO())
    assert type(raised.value).__name__ == error
    failure = download.classify(raised.value, req)
    assert (failure.code, failure.reason) == (EXIT_NOT_FOUND, "DownloadNotFound")


def test_a_full_disk_is_out_of_space_and_anything_else_is_retried() -> None:
    full = download.classify(OSError(errno.ENOSPC, "No space left on device"), request())
    assert (full.code, full.reason) == (EXIT_OUT_OF_SPACE, "DownloadOutOfSpace")
    other = download.classify(ConnectionError("reset by peer"), request())
    assert (other.code, other.reason) == (1, "DownloadFailed")


def test_verify_only_checks_a_filled_claim_and_refuses_an_empty_one(
    hub: fake_hub.FakeHub, tmp_path: Path
) -> None:
    req = request(verify_only=True)
    with pytest.raises(Exception) as raised:
        download.fetch(req, tmp_path, endpoint=hub.url)
    assert download.classify(raised.value, req).code == EXIT_INCOMPLETE
    filled = download.fetch(request(), tmp_path, endpoint=hub.url, out=io.StringIO())
    served = len(hub.log)
    checked = download.fetch(req, tmp_path, endpoint=hub.url)
    assert (checked.revision, checked.files) == (filled.revision, 3)
    assert len(hub.log) == served  # nothing asked of the Hub


def test_main_writes_the_result_and_exits_with_the_cause(
    hub: fake_hub.FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    message = tmp_path / "termination-log"
    monkeypatch.setenv("OPENMODEL_TERMINATION_LOG", str(message))
    args = ["--repo", REPO, "--allow", "*.json", "--allow", "*.safetensors"]
    out = io.StringIO()
    assert download.main(args, out=out) == 0
    result = json.loads(message.read_text())
    assert result["phase"] == "Ready" and result["revision"] == hub.repos[REPO].sha
    assert json.loads(out.getvalue().splitlines()[-1]) == result
    assert download.main(["--repo", GATED, "--allow", "*.json"], out=io.StringIO()) == 10
    failed = json.loads(message.read_text())
    assert failed["reason"] == "DownloadUnauthorized"


def test_stale_partial_files_are_removed(tmp_path: Path) -> None:
    blobs = download.repo_folder(tmp_path, REPO) / "blobs"
    blobs.mkdir(parents=True)
    old, new = blobs / "a.1234.incomplete", blobs / "b.5678.incomplete"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1000.0, 1000.0))
    assert download.remove_stale_incomplete(tmp_path, now=1000.0 + 7200, older_than=3600) == 1
    assert not old.exists() and new.exists()


def test_pickled_weights_only_without_safetensors() -> None:
    sizes = {"model.safetensors": 1, "pytorch_model.bin": 1, "config.json": 1}
    assert download.choose_files(sizes, ALLOW, ()) == ["config.json", "model.safetensors"]
    del sizes["model.safetensors"]
    assert download.choose_files(sizes, ALLOW, ()) == ["config.json", "pytorch_model.bin"]


def test_the_module_runs_as_the_jobs_command(hub: fake_hub.FakeHub, tmp_path: Path) -> None:
    """`python -m openmodel.weights.download`, as the Job's container runs it: its exit
    code is what the Job's podFailurePolicy reads."""
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "home"),
        "HF_ENDPOINT": hub.url,
        "OPENMODEL_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    env.pop("HF_TOKEN", None)
    env.pop("HF_HUB_CACHE", None)
    command = [sys.executable, "-m", "openmodel.weights.download", "--allow", "*.json"]
    done = subprocess.run([*command, "--repo", REPO], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "termination-log").read_text())["phase"] == "Ready"
    gated = subprocess.run([*command, "--repo", GATED], env=env, capture_output=True, timeout=60)
    assert gated.returncode == EXIT_UNAUTHORIZED, gated.stderr.decode()[-2000:]
