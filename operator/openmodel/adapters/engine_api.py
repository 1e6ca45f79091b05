"""An engine's runtime adapter API, at the paths and fields its `AdapterApi` states.

The list lists each loaded adapter with `parent` = the base model; loads and unloads
answer plain text on success and an OpenAI-style error body otherwise. Nothing here
decides; every call reports what the engine said.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import aiohttp

from openmodel.engines.base import AdapterApi


@dataclass(frozen=True)
class EngineAnswer:
    ok: bool
    status: int
    message: str


def _error_text(status: int, body: str) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return f"HTTP {status}: {body.strip()[:300]}"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return f"HTTP {status}: {str(error['message'])[:300]}"
    return f"HTTP {status}: {body.strip()[:300]}"


async def loaded_adapters(
    session: aiohttp.ClientSession, api: AdapterApi, base_url: str
) -> frozenset[str]:
    """Names of the adapters the engine reports loaded (entries with a parent)."""
    async with session.get(f"{base_url}{api.list_path}") as response:
        response.raise_for_status()
        body = await response.json(content_type=None)
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{api.list_path} answered without a data list")
    return frozenset(
        str(e["id"]) for e in entries if isinstance(e, dict) and e.get("parent") and "id" in e
    )


async def load_adapter(
    session: aiohttp.ClientSession, api: AdapterApi, base_url: str, name: str, path: str
) -> EngineAnswer:
    payload = {api.name_field: name, api.path_field: path}
    async with session.post(f"{base_url}{api.load_path}", json=payload) as response:
        text = await response.text()
        if response.status == 200:
            return EngineAnswer(True, 200, text.strip())
        return EngineAnswer(False, response.status, _error_text(response.status, text))


async def unload_adapter(
    session: aiohttp.ClientSession, api: AdapterApi, base_url: str, name: str
) -> EngineAnswer:
    payload = {api.name_field: name}
    async with session.post(f"{base_url}{api.unload_path}", json=payload) as response:
        text = await response.text()
        # 404: not loaded (any more): what was wanted.
        if response.status in (200, 404):
            return EngineAnswer(True, response.status, text.strip())
        return EngineAnswer(False, response.status, _error_text(response.status, text))
