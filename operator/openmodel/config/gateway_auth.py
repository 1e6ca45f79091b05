"""The platform config's `gateway.auth` and `gateway.tls` keys: who may call the gateway,
how long its answers about callers are trusted, and whether it serves HTTPS.

```yaml
gateway:
  auth:
    mode: enforce              # off | audit | enforce (docs/security.md)
    audiences: []              # TokenReview audiences; [] = the API server's own
    tokenCacheSeconds: 60      # a revoked token stops working within this (+ 10 s, the API's)
    tokenCacheSize: 10000      # tokens remembered (LRU)
    deniedCacheSeconds: 5      # a token the API server refused, remembered this long
    accessCacheSeconds: 10     # a revoked RoleBinding stops working within this
    accessCacheSize: 10000     # (caller, ModelDeployment) decisions remembered (LRU)
    reviewTimeoutSeconds: 2    # a TokenReview/SubjectAccessReview slower than this: 503
    maxConcurrentReviews: 8    # reviews in flight at once; more wait (then 503)
  tls: {certFile: /etc/openmodel/tls/tls.crt, keyFile: /etc/openmodel/tls/tls.key}
```
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openmodel.config.errors import ConfigError, checked_mapping


class AuthMode(enum.StrEnum):
    OFF = "off"  # everyone is ANONYMOUS and may use every model (local demos)
    AUDIT = "audit"  # checked and counted, never refused (turning auth on)
    ENFORCE = "enforce"  # checked and refused (401/403; 503 when the API cannot answer)


@dataclass(frozen=True)
class GatewayAuthConfig:
    mode: AuthMode = AuthMode.ENFORCE
    audiences: tuple[str, ...] = ()
    token_cache_seconds: float = 60.0
    token_cache_size: int = 10_000
    denied_cache_seconds: float = 5.0
    access_cache_seconds: float = 10.0
    access_cache_size: int = 10_000
    review_timeout_seconds: float = 2.0
    max_concurrent_reviews: int = 8


@dataclass(frozen=True)
class GatewayTlsConfig:
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


_AUTH_KEYS = {
    "mode": "mode",
    "audiences": "audiences",
    "tokenCacheSeconds": "token_cache_seconds",
    "tokenCacheSize": "token_cache_size",
    "deniedCacheSeconds": "denied_cache_seconds",
    "accessCacheSeconds": "access_cache_seconds",
    "accessCacheSize": "access_cache_size",
    "reviewTimeoutSeconds": "review_timeout_seconds",
    "maxConcurrentReviews": "max_concurrent_reviews",
}


def _positive(raw: Mapping[str, Any], key: str, default: float, *, whole: bool) -> Any:
    value = raw.get(key, default)
    wrong_type = isinstance(value, bool) or not isinstance(value, int if whole else int | float)
    if wrong_type or value <= 0:
        kind = "an integer" if whole else "a number"
        raise ConfigError(f"gateway.auth.{key} must be {kind} > 0, got {value!r}")
    return value if whole else float(value)


def parse_gateway_auth(raw: Any) -> GatewayAuthConfig:
    if raw is None:
        return GatewayAuthConfig()
    raw = checked_mapping(raw, "gateway.auth", _AUTH_KEYS)
    mode = raw.get("mode", AuthMode.ENFORCE.value)
    if mode not in {m.value for m in AuthMode}:
        raise ConfigError(
            f"gateway.auth.mode must be one of {[m.value for m in AuthMode]}, got {mode!r}"
        )
    audiences = raw.get("audiences", [])
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        raise ConfigError(f"gateway.auth.audiences must be a list of strings, got {audiences!r}")
    d = GatewayAuthConfig()
    return GatewayAuthConfig(
        mode=AuthMode(mode),
        audiences=tuple(audiences),
        token_cache_seconds=_positive(raw, "tokenCacheSeconds", d.token_cache_seconds, whole=False),
        token_cache_size=_positive(raw, "tokenCacheSize", d.token_cache_size, whole=True),
        denied_cache_seconds=_positive(
            raw, "deniedCacheSeconds", d.denied_cache_seconds, whole=False
        ),
        access_cache_seconds=_positive(
            raw, "accessCacheSeconds", d.access_cache_seconds, whole=False
        ),
        access_cache_size=_positive(raw, "accessCacheSize", d.access_cache_size, whole=True),
        review_timeout_seconds=_positive(
            raw, "reviewTimeoutSeconds", d.review_timeout_seconds, whole=False
        ),
        max_concurrent_reviews=_positive(
            raw, "maxConcurrentReviews", d.max_concurrent_reviews, whole=True
        ),
    )


def parse_gateway_tls(raw: Any) -> GatewayTlsConfig:
    if raw is None:
        return GatewayTlsConfig()
    raw = checked_mapping(raw, "gateway.tls", ("certFile", "keyFile"))
    cert, key = raw.get("certFile"), raw.get("keyFile")
    if cert is None and key is None:
        return GatewayTlsConfig()
    if not (isinstance(cert, str) and cert and isinstance(key, str) and key):
        raise ConfigError("gateway.tls needs both certFile and keyFile (paths), or neither")
    return GatewayTlsConfig(cert_file=cert, key_file=key)
