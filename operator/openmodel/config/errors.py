"""The error every part of the platform config raises on bad input, and the check each
section of it starts with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """The platform config file is malformed; the message names the key."""


def checked_mapping(raw: Any, where: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    """`raw` when it is a mapping of `allowed` keys only; else ConfigError naming `where`
    (and the unknown and the known keys)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    known = list(allowed)
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return raw
