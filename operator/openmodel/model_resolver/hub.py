"""The Hugging Face Hub's HTTP API, for the few files sizing reads (aiohttp).

Routes used (the same the Hub's own clients use):
- `GET {endpoint}/api/models/{repo}/revision/{revision}`: the commit `sha` and the
  file list (`siblings[].rfilename`); the revision is pinned to that sha from here on;
- `GET {endpoint}/{repo}/resolve/{sha}/config.json`;
- `GET {endpoint}/{repo}/resolve/{sha}/model.safetensors.index.json` when listed;
- for a single `model.safetensors`: its header only, by two ranged GETs (the 8-byte
  length, then the JSON header), never the weights.
The file list itself says whether the repo is a sentence-transformers one (an embedding
model): `CheckpointFiles.files` keeps the names, nothing more is fetched for it.
401/403 -> ModelConfigUnauthorized, 404 -> ModelConfigNotFound, a request slower than
the timeout -> ModelConfigTimeout, anything else -> ModelConfigUnavailable.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from openmodel.config.model_resolver import ModelResolverConfig
from openmodel.model_resolver.state import (
    NOT_FOUND,
    TIMEOUT,
    UNAUTHORIZED,
    UNAVAILABLE,
    UNSUPPORTED,
    ModelRef,
)

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on a header


class ResolveError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CheckpointFiles:
    """The files sizing reads, as parsed JSON."""

    sha: str
    config: dict[str, Any]
    index: dict[str, Any] | None = None
    headers: tuple[dict[str, Any], ...] = ()
    # The names of the files in the repo (or the directory): what the task is read from
    # beside config.json (sizing.checkpoint.checkpoint_task).
    files: frozenset[str] = frozenset()


def read_token(settings: ModelResolverConfig) -> str | None:
    if settings.token_file is None:
        return None
    try:
        return Path(settings.token_file).read_text().strip() or None
    except OSError as e:
        raise ResolveError(
            UNAUTHORIZED, f"cannot read modelResolver.tokenFile: {e.strerror}"
        ) from None


class HubClient:
    def __init__(self, endpoint: str, settings: ModelResolverConfig) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.settings = settings

    def _headers(self) -> dict[str, str]:
        token = read_token(self.settings)
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _get(
        self, session: aiohttp.ClientSession, url: str, what: str, byte_range: str | None = None
    ) -> bytes:
        headers = self._headers()
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range}"
        try:
            async with session.get(url, headers=headers) as response:
                if response.status in (401, 403):
                    raise ResolveError(UNAUTHORIZED, f"{what}: HTTP {response.status} from {url}")
                if response.status == 404:
                    raise ResolveError(NOT_FOUND, f"{what}: HTTP 404 from {url}")
                if response.status >= 400:
                    raise ResolveError(UNAVAILABLE, f"{what}: HTTP {response.status} from {url}")
                return await response.read()
        except TimeoutError:
            raise ResolveError(
                TIMEOUT, f"{what}: no answer from {url} within {self.settings.timeout_seconds:g} s"
            ) from None
        except aiohttp.ClientError as e:
            raise ResolveError(UNAVAILABLE, f"{what}: {url}: {e}") from None

    async def _json(self, session: aiohttp.ClientSession, url: str, what: str) -> dict[str, Any]:
        body = await self._get(session, url, what)
        try:
            value = json.loads(body)
        except ValueError:
            raise ResolveError(UNSUPPORTED, f"{what} at {url} is not JSON") from None
        if not isinstance(value, dict):
            raise ResolveError(UNSUPPORTED, f"{what} at {url} is not a JSON object")
        return value

    async def fetch(self, ref: ModelRef) -> CheckpointFiles:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
        repo = quote(ref.repo, safe="/")
        async with aiohttp.ClientSession(timeout=timeout) as session:
            info = await self._json(
                session,
                f"{self.endpoint}/api/models/{repo}/revision/{quote(ref.revision, safe='')}",
                "model info",
            )
            sha = str(info.get("sha") or ref.revision)
            files = {
                str(s.get("rfilename")) for s in info.get("siblings") or [] if isinstance(s, dict)
            }
            base = f"{self.endpoint}/{repo}/resolve/{sha}"
            config = await self._json(session, f"{base}/config.json", "config.json")
            index = None
            headers: tuple[dict[str, Any], ...] = ()
            if "model.safetensors.index.json" in files:
                index = await self._json(
                    session, f"{base}/model.safetensors.index.json", "safetensors index"
                )
            elif "model.safetensors" in files:
                headers = (await self._header(session, f"{base}/model.safetensors"),)
            return CheckpointFiles(
                sha=sha, config=config, index=index, headers=headers, files=frozenset(files)
            )

    async def _header(self, session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
        raw = await self._get(session, url, "safetensors header length", "0-7")
        if len(raw) < 8:
            raise ResolveError(UNSUPPORTED, f"{url}: no safetensors header")
        (length,) = struct.unpack("<Q", raw[:8])
        if length > MAX_HEADER_BYTES:
            raise ResolveError(UNSUPPORTED, f"{url}: safetensors header of {length} bytes")
        body = await self._get(session, url, "safetensors header", f"8-{7 + length}")
        try:
            value = json.loads(body[:length])
        except ValueError:
            raise ResolveError(UNSUPPORTED, f"{url}: safetensors header is not JSON") from None
        return value if isinstance(value, dict) else {}


async def fetch_with_timeout(client: HubClient, ref: ModelRef) -> CheckpointFiles:
    """`client.fetch`, bounded as a whole by three request timeouts."""
    try:
        return await asyncio.wait_for(client.fetch(ref), 3 * client.settings.timeout_seconds)
    except TimeoutError:
        raise ResolveError(
            TIMEOUT, f"reading {ref} took longer than {3 * client.settings.timeout_seconds:g} s"
        ) from None
