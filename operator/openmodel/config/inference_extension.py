"""The platform config's `inferenceExtension` key: which Gateway the routes attach to and
which endpoint picker each InferencePool names.

```yaml
inferenceExtension:
  enabled: true
  gateway: {name: inference-gateway, namespace: gateway-system, sectionName: http}
  endpointPickerRef: {name: "{name}-epp", port: 9002, failureMode: FailClose}
  modelNameHeader: X-Gateway-Model-Name   # the header the model-name router sets
```

`endpointPickerRef.name` may hold `{name}`, replaced by the ModelDeployment's name: an
endpoint picker serves exactly one pool, so with more than one model in a namespace each
pool needs its own. `endpointPickerRef` may be left out (InferencePool v1.5.0 and later
accept a pool without one; whether the gateway does is the implementation's choice).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from openmodel.config.errors import ConfigError, checked_mapping

KEY = "inferenceExtension"
FAILURE_MODES = ("FailClose", "FailOpen")
DEFAULT_PICKER_PORT = 9002
# The header the Inference Extension's body-based router sets from a request's `model`;
# llm-d's Inference Payload Processor sets X-Gateway-Base-Model-Name (the base model of an
# adapter) by default: the platform names the one its router sets.
DEFAULT_MODEL_NAME_HEADER = "X-Gateway-Model-Name"
NAME_PLACEHOLDER = "{name}"


@dataclass(frozen=True)
class GatewayRef:
    """The Gateway every HTTPRoute names in its parentRefs."""

    name: str
    # None: the route's own namespace (the Gateway API default for a parentRef).
    namespace: str | None = None
    section_name: str | None = None


@dataclass(frozen=True)
class EndpointPickerRef:
    """InferencePool `spec.endpointPickerRef`; the defaults are the v1 schema's."""

    name: str
    port: int | None = DEFAULT_PICKER_PORT
    kind: str = "Service"
    group: str = ""
    failure_mode: str = "FailClose"

    def name_for(self, model_deployment: str) -> str:
        return self.name.replace(NAME_PLACEHOLDER, model_deployment)


@dataclass(frozen=True)
class InferenceExtensionConfig:
    enabled: bool = False
    gateway: GatewayRef | None = None
    endpoint_picker: EndpointPickerRef | None = None
    model_name_header: str = DEFAULT_MODEL_NAME_HEADER


def _fail(message: str) -> NoReturn:
    raise ConfigError(message)


def _optional_string(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    return None if raw.get(key) is None else _required_string(raw, key, where)


def _required_string(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        _fail(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def _gateway(raw: Any) -> GatewayRef:
    where = f"{KEY}.gateway"
    gateway = checked_mapping(raw, where, ("name", "namespace", "sectionName"))
    return GatewayRef(
        name=_required_string(gateway, "name", where),
        namespace=_optional_string(gateway, "namespace", where),
        section_name=_optional_string(gateway, "sectionName", where),
    )


def _endpoint_picker(raw: Any) -> EndpointPickerRef:
    where = f"{KEY}.endpointPickerRef"
    picker = checked_mapping(raw, where, ("name", "port", "kind", "group", "failureMode"))
    name = _required_string(picker, "name", where)
    kind = _optional_string(picker, "kind", where) or "Service"
    group = picker.get("group", "")
    if not isinstance(group, str):
        _fail(f'{where}.group must be a string ("" for the core group), got {group!r}')
    port = picker.get("port", DEFAULT_PICKER_PORT if kind == "Service" else None)
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
    ):
        _fail(f"{where}.port must be an integer in 1..65535, got {port!r}")
    failure_mode = picker.get("failureMode", "FailClose")
    if failure_mode not in FAILURE_MODES:
        modes = ", ".join(FAILURE_MODES)
        _fail(f"{where}.failureMode must be one of {modes}, got {failure_mode!r}")
    return EndpointPickerRef(
        name=name, port=port, kind=kind, group=group, failure_mode=failure_mode
    )


def parse_inference_extension(raw: Any) -> InferenceExtensionConfig:
    """`inferenceExtension` (None when absent) -> the config; raises
    openmodel.config.ConfigError naming the key."""
    if raw is None:
        return InferenceExtensionConfig()
    section = checked_mapping(
        raw, KEY, ("enabled", "gateway", "endpointPickerRef", "modelNameHeader")
    )
    enabled = section.get("enabled", False)
    if not isinstance(enabled, bool):
        _fail(f"{KEY}.enabled must be true or false, got {enabled!r}")
    gateway = _gateway(section["gateway"]) if "gateway" in section else None
    if enabled and gateway is None:
        _fail(f"{KEY}.gateway is required when {KEY}.enabled is true (the routes' Gateway)")
    picker_raw = section.get("endpointPickerRef")
    picker = None if picker_raw is None else _endpoint_picker(picker_raw)
    header = section.get("modelNameHeader", DEFAULT_MODEL_NAME_HEADER)
    if not isinstance(header, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", header):
        _fail(f"{KEY}.modelNameHeader must be an HTTP header name, got {header!r}")
    return InferenceExtensionConfig(
        enabled=enabled, gateway=gateway, endpoint_picker=picker, model_name_header=header
    )
