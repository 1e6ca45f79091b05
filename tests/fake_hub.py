"""A local stand-in for the Hugging Face Hub's HTTP API: the routes the operator's
resolver uses, serving config.json files from tests/unit/data/hf-configs, and the
download routes `huggingface_hub` (2.4.0) uses, serving whole repos a test adds.

The only stand-in in the config.json and weights tests (README): everything else is the
real operator, control plane and Hub client. Repos:
- every `org--name.json` file there as `org/name`, plus `acme/house-model-72b` (a
  fine-tune no catalogue knows: Qwen2.5-72B-Instruct-AWQ's config);
- `acme/private` answers 401, `acme/absent` 404, `acme/slow` after SLOW_SECONDS;
- file repos (`add_repo`): `GET /api/models/{repo}[/revision/{rev}]` (sha, siblings),
  `GET /api/models/{repo}/tree/{rev}[/{path}]` (the recursive listing `snapshot_download`
  reads: type, path, size, oid, lfs), and `HEAD`/`GET /{repo}/resolve/{rev}/{file}` with
  the headers `hf_hub_download` checks (`X-Repo-Commit`, `ETag`: the sha256 of an LFS
  file, the git blob sha1 of another; `Content-Length`; `Accept-Ranges`) and `Range:
  bytes=N-` (its resume) or `bytes=N-M` answered 206. Errors carry the Hub's `X-Error-Code`:
  `RepoNotFound` (404), `RevisionNotFound` (404), `EntryNotFound` (404) and, for a gated
  repo without the token it wants, `GatedRepo` (401) on file downloads (its listing
  stays public, as on the Hub).
Knobs: `bandwidth` (bytes per second for file bodies), `drop_after` (bytes after which
the first GET of each file is cut off mid-body, to exercise resume; per repo too).
Started in a thread with its own event loop (`FakeHub.start()`), so a test can use it
from synchronous code; `requests` records the paths asked for, `log` every request with
its method, Range, the body bytes sent and the client's address. `start(host)` listens
on that address (the e2e tests give it one a pod's network namespace reaches).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

CONFIGS = Path(__file__).resolve().parent / "unit" / "data" / "hf-configs"
UNAUTHORIZED_REPO = "acme/private"
MISSING_REPO = "acme/absent"
SLOW_REPO = "acme/slow"
FINE_TUNE_REPO = "acme/house-model-72b"
SLOW_SECONDS = 30.0
# The fine-tune answers after this long, so a test sees SizingPending before the verdict.
FINE_TUNE_DELAY_SECONDS = 1.5


def _configs() -> dict[str, dict[str, Any]]:
    out = {p.stem.replace("--", "/"): json.loads(p.read_text()) for p in CONFIGS.glob("*.json")}
    out[FINE_TUNE_REPO] = out["Qwen/Qwen2.5-72B-Instruct-AWQ"]
    return out


def sha_of(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


# Files at least this large are stored with LFS on the Hub (their ETag is the sha256).
LFS_THRESHOLD = 10 * 1024
CHUNK = 64 * 1024


def _etag(data: bytes) -> str:
    if len(data) >= LFS_THRESHOLD:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class RepoFiles:
    """A file repo at one commit."""

    files: dict[str, bytes]
    sha: str
    token: str | None = None  # gated: downloads need `Authorization: Bearer <token>`
    drop_after: int | None = None  # this repo's own `drop_after` (else the Hub's)
    # Hashed once: a checkpoint of a GiB takes seconds to hash.
    etags: dict[str, str] = field(default_factory=dict)

    def etag(self, name: str) -> str:
        if name not in self.etags:
            self.etags[name] = _etag(self.files[name])
        return self.etags[name]

    def entry(self, name: str) -> dict[str, Any]:
        data = self.files[name]
        item: dict[str, Any] = {
            "type": "file", "path": name, "size": len(data), "oid": self.etag(name)
        }  # fmt: skip
        if len(data) >= LFS_THRESHOLD:
            item["lfs"] = {"oid": self.etag(name), "size": len(data), "pointerSize": 134}
        return item


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int = 0
    remote: str | None = None  # the client's address (a pod's, the operator's)


@dataclass
class _Drops:
    after: int | None = None
    done: set[str] = field(default_factory=set)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of `bytes=N-` (hf_hub_download's resume) or `bytes=N-M` (a
    reader of the safetensors header); None: the whole file."""
    if not header or not header.startswith("bytes="):
        return None
    first = header.removeprefix("bytes=").split(",")[0]
    start, _, end = first.partition("-")
    if not start:
        return None
    return int(start), min(int(end), size - 1) if end else size - 1


class FakeHub:
    def __init__(self, bandwidth: float | None = None, drop_after: int | None = None) -> None:
        self.configs = _configs()
        self.repos: dict[str, RepoFiles] = {}
        self.requests: list[str] = []
        self.log: list[Logged] = []
        self.bandwidth = bandwidth
        self._drops = _Drops(drop_after)
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    async def _gate(self, repo: str) -> None:
        if repo == UNAUTHORIZED_REPO:
            raise web.HTTPUnauthorized(text="Invalid credentials")
        if repo == SLOW_REPO:
            await asyncio.sleep(SLOW_SECONDS)
        if repo == FINE_TUNE_REPO:
            await asyncio.sleep(FINE_TUNE_DELAY_SECONDS)
        if repo not in self.configs:
            raise web.HTTPNotFound(text="Repository not found")

    def add_repo(
        self,
        repo: str,
        files: dict[str, bytes],
        token: str | None = None,
        drop_after: int | None = None,
    ) -> RepoFiles:
        """Serve `files` as `repo` at one commit; with `token`, a gated repo; with
        `drop_after`, the first GET of each of its files is cut off after that many bytes."""
        etags = {name: _etag(files[name]) for name in sorted(files)}
        digest = hashlib.sha1(repo.encode() + json.dumps(etags).encode()).hexdigest()
        self.repos[repo] = RepoFiles(dict(files), digest, token, drop_after, etags)
        return self.repos[repo]

    def downloads(self, name: str) -> list[Logged]:
        """The GETs of a file's body (any repo, any revision)."""
        return [
            e for e in self.log if e.method == "GET" and "/resolve/" in e.path
            and e.path.endswith("/" + name)
        ]  # fmt: skip

    def _record(self, request: web.Request, status: int, sent: int = 0) -> None:
        self.log.append(Logged(request.method, request.path, request.headers.get("Range"),
                               status, sent, request.remote))  # fmt: skip

    def _files_repo(self, request: web.Request) -> RepoFiles | None:
        return self.repos.get(f"{request.match_info['org']}/{request.match_info['name']}")

    def _error(self, request: web.Request, status: int, code: str, text: str) -> web.Response:
        self._record(request, status)
        headers = {"X-Error-Code": code, "X-Error-Message": text}
        repo = self._files_repo(request)
        if repo is not None and code == "EntryNotFound":
            headers["X-Repo-Commit"] = repo.sha
        return web.Response(status=status, text=text, headers=headers)

    def _revision_error(self, request: web.Request, repo: RepoFiles) -> web.Response | None:
        # No revision in the path (`GET /api/models/{repo}`): the default branch.
        if request.match_info.get("rev", "main") not in ("main", repo.sha):
            return self._error(request, 404, "RevisionNotFound", "Invalid rev id")
        return None

    async def model_info(self, request: web.Request) -> web.Response:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests.append(request.path)
        files = self.repos.get(repo)
        if files is not None:
            refused = self._revision_error(request, files)
            if refused is not None:
                return refused
            self._record(request, 200)
            siblings = [{"rfilename": name} for name in sorted(files.files)]
            return web.json_response({"id": repo, "sha": files.sha, "siblings": siblings})
        if repo == MISSING_REPO or (repo not in self.configs and repo not in (
            UNAUTHORIZED_REPO, SLOW_REPO
        )):  # fmt: skip
            return self._error(request, 404, "RepoNotFound", "Repository not found")
        await self._gate(repo)
        siblings = [{"rfilename": "config.json"}, {"rfilename": "tokenizer.json"}]
        return web.json_response({"id": repo, "sha": sha_of(repo), "siblings": siblings})

    async def tree(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        repo = self._files_repo(request)
        if repo is None:
            return self._error(request, 404, "RepoNotFound", "Repository not found")
        refused = self._revision_error(request, repo)
        if refused is not None:
            return refused
        prefix = request.match_info.get("path", "")
        recursive = request.query.get("recursive", "").lower() == "true"
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for name in sorted(repo.files):
            if prefix and not name.startswith(prefix.rstrip("/") + "/"):
                continue
            rest = name[len(prefix.rstrip("/") + "/") :] if prefix else name
            if "/" in rest and not recursive:
                folder = (prefix.rstrip("/") + "/" if prefix else "") + rest.split("/", 1)[0]
                if folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "path": folder, "oid": sha_of(folder)})
                continue
            entries.append(repo.entry(name))
        self._record(request, 200)
        return web.json_response(entries)

    async def file(self, request: web.Request) -> web.StreamResponse:
        """HEAD or GET of one file of a file repo, with the Hub's headers and Range."""
        self.requests.append(request.path)
        repo = self._files_repo(request)
        assert repo is not None
        refused = self._revision_error(request, repo)
        if refused is not None:
            return refused
        if repo.token is not None and request.headers.get("Authorization") != (
            f"Bearer {repo.token}"
        ):
            return self._error(
                request, 401, "GatedRepo",
                "Access to model is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )  # fmt: skip
        name = request.match_info["file"]
        if name not in repo.files:
            return self._error(request, 404, "EntryNotFound", "Entry not found")
        data = repo.files[name]
        headers = {
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{repo.etag(name)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        asked = _byte_range(request.headers.get("Range"), len(data))
        status = 200 if asked is None else 206
        start, last = asked or (0, len(data) - 1)
        if asked is not None:
            headers["Content-Range"] = f"bytes {start}-{last}/{len(data)}"
        headers["Content-Length"] = str(last + 1 - start)
        if request.method == "HEAD":
            self._record(request, status)
            return web.Response(status=status, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        sent = 0
        loop = asyncio.get_running_loop()
        began = loop.time()
        body = data[start : last + 1]
        dropped = f"{request.match_info['org']}/{request.match_info['name']}/{name}"
        after = repo.drop_after if repo.drop_after is not None else self._drops.after
        cut = after if dropped not in self._drops.done else None
        while sent < len(body):
            chunk = body[sent : sent + CHUNK]
            if cut is not None and sent + len(chunk) > cut:
                chunk = chunk[: max(0, cut - sent)]
                await response.write(chunk)
                sent += len(chunk)
                self._drops.done.add(dropped)
                self._record(request, status, sent)
                # The connection goes mid-body: the client sees fewer bytes than announced.
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(chunk)
            sent += len(chunk)
            if self.bandwidth:
                # Paced against the body's start, so the rate is the stated one (not less
                # by the time each write takes) whenever the client keeps up.
                due = began + sent / self.bandwidth
                await asyncio.sleep(max(0.0, due - loop.time()))
        await response.write_eof()
        self._record(request, status, sent)
        return response

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        if self._files_repo(request) is not None:
            return await self.file(request)
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests.append(request.path)
        if repo not in self.configs:
            raise web.HTTPNotFound(text="Repository not found")
        if request.match_info["file"] != "config.json" or request.match_info["rev"] != sha_of(repo):
            raise web.HTTPNotFound(text="Entry not found")
        return web.json_response(self.configs[repo])

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self.model_info)
        app.router.add_get("/api/models/{org}/{name}", self.model_info)
        app.router.add_get("/api/models/{org}/{name}/tree/{rev}", self.tree)
        app.router.add_get("/api/models/{org}/{name}/tree/{rev}/{path:.+}", self.tree)
        # add_get also answers HEAD (hf_hub_download's metadata request).
        app.router.add_get("/{org}/{name}/resolve/{rev}/{file:.+}", self.resolve)
        return app

    def start(self, host: str = "127.0.0.1") -> FakeHub:
        ready = threading.Event()

        async def serve() -> None:
            self._runner = web.AppRunner(self._app())
            await self._runner.setup()
            site = web.TCPSite(self._runner, host, 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://{host}:{port}"
            ready.set()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-hub", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Hub did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(10)
