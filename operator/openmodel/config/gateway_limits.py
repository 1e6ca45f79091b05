"""The platform config's `gateway.limits` key: how much each caller may send through the
gateway, per identity and per namespace, with per-namespace overrides set by the
platform in the same file.

```yaml
gateway:
  limits:
    perIdentity:            # every identity (a ServiceAccount, a user, `anonymous`)
      requestsPerMinute: 600
      tokensPerMinute: 200000
      concurrentRequests: 16
    perNamespace:           # all identities of one namespace together
      tokensPerMinute: 1000000
    namespaces:             # overrides, key by key, for the callers of one namespace
      team-a:
        perIdentity: {tokensPerMinute: 400000}
        perNamespace: {tokensPerMinute: null}   # null: unlimited
    defaultMaxTokens: 1024  # reserved for a request that names no max_tokens
    windowSeconds: 60       # the sliding window the per-minute budgets are enforced over
    replicas: auto          # how many gateways share the budgets; auto: count the ready
                            # gateway pods (demandSelector in demandNamespace)
```

Every limit is optional; an unset (or null) limit is unlimited. A namespace's override
replaces the defaults key by key; keys it leaves out keep the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, NoReturn

from openmodel.config.errors import ConfigError, checked_mapping

KEY: Final = "gateway.limits"
_LIMIT_KEYS: Final = {
    "requestsPerMinute": "requests_per_minute",
    "tokensPerMinute": "tokens_per_minute",
    "concurrentRequests": "concurrent_requests",
}
_SCOPE_KEYS: Final = {"perIdentity": "per_identity", "perNamespace": "per_namespace"}
AUTO: Final = "auto"


@dataclass(frozen=True)
class Limits:
    """One scope's budgets; None is unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (self.requests_per_minute, self.tokens_per_minute, self.concurrent_requests)
        )


@dataclass(frozen=True)
class TenantLimits:
    """What applies to the callers of one namespace: each identity, and all together."""

    per_identity: Limits = field(default_factory=Limits)
    per_namespace: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class GatewayLimitsConfig:
    defaults: TenantLimits = field(default_factory=TenantLimits)
    # Already merged over the defaults: the whole answer for that namespace's callers.
    namespaces: Mapping[str, TenantLimits] = field(default_factory=dict)
    default_max_tokens: int = 1024
    window_seconds: float = 60.0
    # None: count the ready gateway pods; a number: that many, fixed.
    replicas: int | None = None

    def for_namespace(self, namespace: str) -> TenantLimits:
        return self.namespaces.get(namespace, self.defaults)

    @property
    def enabled(self) -> bool:
        tenants = [self.defaults, *self.namespaces.values()]
        return any(t.per_identity.any or t.per_namespace.any for t in tenants)


def _fail(message: str) -> NoReturn:
    raise ConfigError(message)


def _limits(raw: Any, where: str, over: Limits) -> Limits:
    section = checked_mapping(raw, where, tuple(_LIMIT_KEYS))
    changes: dict[str, int | None] = {}
    for key, attribute in _LIMIT_KEYS.items():
        if key not in section:
            continue
        value = section[key]
        invalid = isinstance(value, bool) or not isinstance(value, int) or value < 1
        if value is not None and invalid:
            _fail(f"{where}.{key} must be an integer >= 1 or null (unlimited), got {value!r}")
        changes[attribute] = value
    return replace(over, **changes)


def _tenant(raw: Any, where: str, over: TenantLimits) -> TenantLimits:
    section = checked_mapping(raw, where, tuple(_SCOPE_KEYS))
    changes = {
        attribute: _limits(section[key], f"{where}.{key}", getattr(over, attribute))
        for key, attribute in _SCOPE_KEYS.items()
        if key in section
    }
    return replace(over, **changes)


def _replicas(raw: Any) -> int | None:
    if raw == AUTO:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        _fail(f'{KEY}.replicas must be "auto" or an integer >= 1, got {raw!r}')
    return raw


def parse_gateway_limits(raw: Any) -> GatewayLimitsConfig:
    """`gateway.limits` (None when absent) -> the config; raises ConfigError naming the key."""
    if raw is None:
        return GatewayLimitsConfig()
    allowed = (*_SCOPE_KEYS, "namespaces", "defaultMaxTokens", "windowSeconds", "replicas")
    section = checked_mapping(raw, KEY, allowed)
    defaults = _tenant({k: section[k] for k in _SCOPE_KEYS if k in section}, KEY, TenantLimits())
    overrides_raw = section.get("namespaces", {})
    if not isinstance(overrides_raw, Mapping):
        _fail(f"{KEY}.namespaces must map namespace names to limits, got {overrides_raw!r}")
    namespaces = {}
    for namespace, override in overrides_raw.items():
        if not isinstance(namespace, str) or not namespace:
            _fail(f"{KEY}.namespaces: {namespace!r} is not a namespace name")
        namespaces[namespace] = _tenant(override, f"{KEY}.namespaces.{namespace}", defaults)
    d = GatewayLimitsConfig()
    max_tokens = section.get("defaultMaxTokens", d.default_max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        _fail(f"{KEY}.defaultMaxTokens must be an integer >= 1, got {max_tokens!r}")
    window = section.get("windowSeconds", d.window_seconds)
    if isinstance(window, bool) or not isinstance(window, int | float) or not 1 <= window <= 3600:
        _fail(f"{KEY}.windowSeconds must be a number of seconds in 1..3600, got {window!r}")
    return GatewayLimitsConfig(
        defaults=defaults,
        namespaces=namespaces,
        default_max_tokens=max_tokens,
        window_seconds=float(window),
        replicas=_replicas(section.get("replicas", AUTO)),
    )
