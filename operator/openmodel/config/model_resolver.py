"""The platform config key `modelResolver`: whether and how the operator reads config.json.

```yaml
modelResolver:
  endpoint: https://hub.example.internal   # the Hub's base URL; env HF_ENDPOINT wins
  tokenFile: /var/run/secrets/hf/token     # optional: the only token the operator reads
  timeoutSeconds: 10                       # per HTTP request
  maxBackoffSeconds: 300                   # retries after a failure: 2 s doubling to this
  cacheEntries: 256                        # repos x revisions kept in memory
```

Without an endpoint (neither the key nor HF_ENDPOINT) nothing is fetched and sizing
uses the catalogue, as before. The operator never reads a ModelDeployment's
`hfTokenSecretRef` (that Secret is the engine's); with `tokenFile` it reads exactly that
file, e.g. a Secret the platform team mounts into the operator pod, and sends it as
`Authorization: Bearer` to the endpoint only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ResolverConfigError(ValueError):
    """The modelResolver section is malformed; the message names the key."""


@dataclass(frozen=True)
class ModelResolverConfig:
    endpoint: str | None = None
    token_file: str | None = None
    timeout_seconds: float = 10.0
    max_backoff_seconds: float = 300.0
    cache_entries: int = 256

    def effective_endpoint(self, env: Mapping[str, str] | None = None) -> str | None:
        """HF_ENDPOINT (what the Hub's own clients honour), else the configured endpoint."""
        value = (env if env is not None else os.environ).get("HF_ENDPOINT") or self.endpoint
        return value.rstrip("/") if value else None


_KNOWN = {"endpoint", "tokenFile", "timeoutSeconds", "maxBackoffSeconds", "cacheEntries"}


def _positive(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ResolverConfigError(f"modelResolver.{key} must be a number > 0, got {value!r}")
    return float(value)


def _optional_text(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ResolverConfigError(f"modelResolver.{key} must be a non-empty string, got {value!r}")
    return value


def parse_model_resolver(raw: Any) -> ModelResolverConfig:
    if raw is None:
        return ModelResolverConfig()
    if not isinstance(raw, Mapping):
        raise ResolverConfigError("modelResolver must be a mapping")
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ResolverConfigError(
            f"modelResolver: unknown key(s) {unknown}; known: {sorted(_KNOWN)}"
        )
    d = ModelResolverConfig()
    entries = raw.get("cacheEntries", d.cache_entries)
    if isinstance(entries, bool) or not isinstance(entries, int) or entries < 1:
        raise ResolverConfigError(
            f"modelResolver.cacheEntries must be an integer >= 1, got {entries!r}"
        )
    return ModelResolverConfig(
        endpoint=_optional_text(raw, "endpoint"),
        token_file=_optional_text(raw, "tokenFile"),
        timeout_seconds=_positive(raw, "timeoutSeconds", d.timeout_seconds),
        max_backoff_seconds=_positive(raw, "maxBackoffSeconds", d.max_backoff_seconds),
        cache_entries=entries,
    )
