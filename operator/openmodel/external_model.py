"""The ExternalModel API as typed Python values: a model served outside the cluster (an
OpenAI-compatible API a team pays for) that the gateway routes like a self-hosted one.

`parse_external_model` turns the object the API server holds (already checked by the
CRD schema, crds/externalmodel.yaml) into a frozen dataclass, re-checking what the schema
guarantees so that a file that never reached an API server gets the same errors. Pure: the
key itself is never read here, only where it lives.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from openmodel.api import TASK_GENERATE, TASKS, SecretKeyRef, SpecError

KIND = "ExternalModel"
PLURAL = "externalmodels"
# The header the key goes in unless spec.apiKeyHeader names another: `Bearer <key>`
# there (OpenAI's scheme); in any other header, the key alone.
DEFAULT_API_KEY_HEADER = "Authorization"
DEFAULT_TIMEOUT_SECONDS = 120
# Headers spec.headers may not set: the gateway owns them (the key, the framing).
RESERVED_HEADERS = frozenset(
    {"authorization", "host", "content-length", "transfer-encoding", "connection"}
)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True)
class HeaderRule:
    """A header set on every request sent upstream (spec.headers[])."""

    name: str
    value: str


@dataclass(frozen=True)
class TokenPrice:
    """spec.price: what the upstream charges, per million tokens (docs/cost.md)."""

    prompt_per_million: float
    completion_per_million: float


@dataclass(frozen=True)
class ExternalModel:
    name: str
    namespace: str
    uid: str
    generation: int
    # The name clients put in `model` (spec.servedModelName, else metadata.name) and the
    # one every answer carries back, whatever the upstream calls it.
    served_name: str
    # The OpenAI-compatible base URL, ending before the API paths: `https://host/v1`
    # receives `https://host/v1/chat/completions`.
    base_url: str
    upstream_model: str
    api_key_secret: SecretKeyRef | None
    api_key_header: str = DEFAULT_API_KEY_HEADER
    headers: tuple[HeaderRule, ...] = ()
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    price: TokenPrice | None = None
    task: str = TASK_GENERATE
    # Address ranges the upstream's addresses fall in (spec.egress.cidrs): what the
    # gateway's egress NetworkPolicy lets through for it.
    egress_cidrs: tuple[str, ...] = ()


def parse_external_model(body: Mapping[str, Any]) -> ExternalModel:
    """An ExternalModel object -> its typed value; SpecError names the first bad field."""
    meta = body.get("metadata") or {}
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise SpecError("spec", "is required (an object)")
    base_url = _string(spec, "baseURL", required=True)
    _check_base_url(base_url)
    upstream_model = _string(spec, "upstreamModel", required=True)
    served = _string(spec, "servedModelName") or str(meta.get("name") or "")
    if not served:
        raise SpecError("spec.servedModelName", "is required when metadata.name is empty")
    task = _string(spec, "task") or TASK_GENERATE
    if task not in TASKS:
        raise SpecError("spec.task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    timeout = spec.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise SpecError("spec.timeoutSeconds", f"must be an integer ≥ 1, got {timeout!r}")
    return ExternalModel(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or ""),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        served_name=served,
        base_url=base_url.rstrip("/"),
        upstream_model=upstream_model,
        api_key_secret=_secret_ref(spec.get("apiKeySecretRef")),
        api_key_header=_api_key_header(spec),
        headers=_headers(spec.get("headers")),
        timeout_seconds=timeout,
        price=_price(spec.get("price")),
        task=task,
        egress_cidrs=_egress(spec.get("egress")),
    )


def _string(raw: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = raw.get(key)
    if value is None or value == "":
        if required:
            raise SpecError(f"spec.{key}", "is required (a non-empty string)")
        return ""
    if not isinstance(value, str):
        raise SpecError(f"spec.{key}", f"must be a string, got {value!r}")
    return value


def _check_base_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise SpecError("spec.baseURL", f"must be an http(s):// URL with a host, got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SpecError(
            "spec.baseURL",
            "must not carry a query, a fragment or credentials (put the key in apiKeySecretRef)",
        )


def _secret_ref(raw: Any) -> SecretKeyRef | None:
    if raw is None:
        return None
    path = "spec.apiKeySecretRef"
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be an object: {name, key}")
    name, key = raw.get("name"), raw.get("key")
    if not isinstance(name, str) or not name or not isinstance(key, str) or not key:
        raise SpecError(path, "needs `name` (a Secret of this namespace) and `key`")
    return SecretKeyRef(name=name, key=key)


def _api_key_header(spec: Mapping[str, Any]) -> str:
    header = _string(spec, "apiKeyHeader") or DEFAULT_API_KEY_HEADER
    if not _HEADER_NAME.match(header):
        raise SpecError("spec.apiKeyHeader", f"is not a header name: {header!r}")
    return header


def _headers(raw: Any) -> tuple[HeaderRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError("spec.headers", "must be a list of {name, value}")
    rules: list[HeaderRule] = []
    for i, item in enumerate(raw):
        path = f"spec.headers[{i}]"
        if not isinstance(item, Mapping):
            raise SpecError(path, "must be an object: {name, value}")
        name, value = item.get("name"), item.get("value")
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise SpecError(f"{path}.name", f"is not a header name: {name!r}")
        if name.lower() in RESERVED_HEADERS:
            raise SpecError(f"{path}.name", f"`{name}` is set by the gateway, not here")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise SpecError(f"{path}.value", "must be a string on one line")
        rules.append(HeaderRule(name=name, value=value))
    return tuple(rules)


def _price(raw: Any) -> TokenPrice | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError("spec.price", "must be an object")
    values: list[float] = []
    for key in ("promptPerMillionTokens", "completionPerMillionTokens"):
        value = raw.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise SpecError(f"spec.price.{key}", f"must be a number ≥ 0, got {value!r}")
        values.append(float(value))
    return TokenPrice(prompt_per_million=values[0], completion_per_million=values[1])


def _egress(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise SpecError("spec.egress", "must be an object: {cidrs}")
    cidrs = raw.get("cidrs") or []
    if not isinstance(cidrs, list) or not all(isinstance(c, str) and c for c in cidrs):
        raise SpecError("spec.egress.cidrs", "must be a list of CIDRs (strings)")
    for i, cidr in enumerate(cidrs):
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError as e:
            raise SpecError(f"spec.egress.cidrs[{i}]", f"is not an address range: {e}") from e
    return tuple(cidrs)


def inside_ranges(model: ExternalModel) -> tuple[str, ...]:
    """The model's egress ranges that are not public addresses: private, loopback,
    link-local (the cloud metadata endpoint), shared or reserved space. Opening those
    lets the gateway reach what is inside the cluster's network: only an ExternalModel
    the platform declares (in the gateway's namespace) may."""
    return tuple(c for c in model.egress_cidrs if not ipaddress.ip_network(c).is_global)
