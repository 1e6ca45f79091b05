"""A local stand-in for the Hugging Face Hub's HTTP API: the routes the operator's
resolver uses, serving config.json files from tests/unit/data/hf-configs.

The only stand-in in the config.json tests (README): everything else is the real
operator and control plane. Repos:
- every `org--name.json` file there as `org/name`, plus `acme/house-model-72b` (a
  fine-tune no catalogue knows: Qwen2.5-72B-Instruct-AWQ's config);
- `acme/private` answers 401, `acme/absent` 404, `acme/slow` after SLOW_SECONDS.
Started in a thread with its own event loop (`FakeHub.start()`), so a test can use it
from synchronous code; `requests` records the paths asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
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


class FakeHub:
    def __init__(self) -> None:
        self.configs = _configs()
        self.requests: list[str] = []
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

    async def model_info(self, request: web.Request) -> web.Response:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests.append(request.path)
        await self._gate(repo)
        siblings = [{"rfilename": "config.json"}, {"rfilename": "tokenizer.json"}]
        return web.json_response({"id": repo, "sha": sha_of(repo), "siblings": siblings})

    async def resolve(self, request: web.Request) -> web.Response:
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
        app.router.add_get("/{org}/{name}/resolve/{rev}/{file}", self.resolve)
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
