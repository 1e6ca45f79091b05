"""A model on disk (the CLI): a model directory, a config.json path, or pvc://claim/path
under a mount root. Reads config.json, the safetensors index and every safetensors
header (8-byte length, then JSON; the weights themselves are never read)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from openmodel.model_resolver.hub import MAX_HEADER_BYTES, CheckpointFiles, ResolveError
from openmodel.model_resolver.state import NOT_FOUND, UNSUPPORTED


def looks_local(model: str) -> bool:
    """True for a path the CLI should read from disk rather than ask the Hub for."""
    path = Path(model)
    return model.startswith(("/", "./", "../", "~")) or path.exists()


def _json_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except OSError as e:
        raise ResolveError(NOT_FOUND, f"{path}: {e.strerror}") from None
    except ValueError:
        raise ResolveError(UNSUPPORTED, f"{path} is not JSON") from None
    if not isinstance(value, dict):
        raise ResolveError(UNSUPPORTED, f"{path} is not a JSON object")
    return value


def safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ResolveError(UNSUPPORTED, f"{path}: no safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise ResolveError(UNSUPPORTED, f"{path}: safetensors header of {length} bytes")
        try:
            value = json.loads(f.read(length))
        except ValueError:
            raise ResolveError(UNSUPPORTED, f"{path}: safetensors header is not JSON") from None
    return value if isinstance(value, dict) else {}


def read_local(model: str, pvc_root: str | None = None) -> CheckpointFiles:
    """The files of a local model directory or config.json. `pvc://claim/path` is read
    under `pvc_root` (where the claim is mounted, e.g. /models)."""
    if model.startswith("pvc://"):
        if pvc_root is None:
            raise ResolveError(NOT_FOUND, f"{model}: pass --pvc-root (where the claim is mounted)")
        path = Path(pvc_root) / model[len("pvc://") :]
    else:
        path = Path(model).expanduser()
    directory = path.parent if path.name.endswith(".json") else path
    config = _json_file(path if path.name.endswith(".json") else path / "config.json")
    index_path = directory / "model.safetensors.index.json"
    index = _json_file(index_path) if index_path.exists() else None
    headers = tuple(safetensors_header(p) for p in sorted(directory.glob("*.safetensors")))
    files = frozenset(p.name for p in directory.iterdir()) if directory.is_dir() else frozenset()
    return CheckpointFiles(sha="local", config=config, index=index, headers=headers, files=files)
