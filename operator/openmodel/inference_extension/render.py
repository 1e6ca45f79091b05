"""Pure rendering of a ModelDeployment's InferencePool and HTTPRoute.

The caller (openmodel.reconcile.render) passes the metadata every child gets (name, namespace,
labels, owner reference), the pod selector and the engine port, so this module needs
nothing of the ModelDeployment itself and stays free of import cycles.

Routing follows the Inference Extension's convention for several models behind one
Gateway: the body-based router reads `model` from an OpenAI request body into the
`X-Gateway-Model-Name` header, and each model's HTTPRoute matches that header exactly
(under path prefix `/`), one match per name the engine answers to: the served model
name and each LoRA adapter's name. Without a body-based router in the gateway the header
is absent and no route matches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from openmodel.config.inference_extension import InferenceExtensionConfig

POOL_GROUP = "inference.networking.k8s.io"
POOL_API_VERSION = f"{POOL_GROUP}/v1"
POOL_KIND = "InferencePool"
ROUTE_GROUP = "gateway.networking.k8s.io"
ROUTE_API_VERSION = f"{ROUTE_GROUP}/v1"
ROUTE_KIND = "HTTPRoute"
KINDS = frozenset({(POOL_API_VERSION, POOL_KIND), (ROUTE_API_VERSION, ROUTE_KIND)})


def is_extension_object(obj: Mapping[str, Any]) -> bool:
    return (obj.get("apiVersion"), obj.get("kind")) in KINDS


def render_inference_pool(
    metadata: Mapping[str, Any],
    selector: Mapping[str, str],
    target_port: int,
    config: InferenceExtensionConfig,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(selector)},
        "targetPorts": [{"number": target_port}],
        # Every engine serves HTTP/1.1 (the v1 default, stated so a diff never shows it).
        "appProtocol": "http",
    }
    picker = config.endpoint_picker
    if picker is not None:
        ref: dict[str, Any] = {
            "group": picker.group,
            "kind": picker.kind,
            "name": picker.name_for(str(metadata["name"])),
            "failureMode": picker.failure_mode,
        }
        if picker.port is not None:
            ref["port"] = {"number": picker.port}
        spec["endpointPickerRef"] = ref
    return {
        "apiVersion": POOL_API_VERSION,
        "kind": POOL_KIND,
        "metadata": dict(metadata),
        "spec": spec,
    }


def _parent_ref(config: InferenceExtensionConfig) -> dict[str, Any]:
    gateway = config.gateway
    if gateway is None:  # parse_inference_extension requires it when enabled
        raise ValueError("inferenceExtension.gateway is not set")
    ref: dict[str, Any] = {"group": ROUTE_GROUP, "kind": "Gateway", "name": gateway.name}
    if gateway.namespace is not None:
        ref["namespace"] = gateway.namespace
    if gateway.section_name is not None:
        ref["sectionName"] = gateway.section_name
    return ref


def render_http_route(
    metadata: Mapping[str, Any],
    pool_name: str,
    model_names: Iterable[str],
    config: InferenceExtensionConfig,
) -> dict[str, Any]:
    """`model_names`: the names clients put in `model`, served model name first."""
    names = list(dict.fromkeys(model_names))
    matches = [
        {
            "path": {"type": "PathPrefix", "value": "/"},
            "headers": [{"type": "Exact", "name": config.model_name_header, "value": name}],
        }
        for name in names
    ]
    return {
        "apiVersion": ROUTE_API_VERSION,
        "kind": ROUTE_KIND,
        "metadata": dict(metadata),
        "spec": {
            "parentRefs": [_parent_ref(config)],
            "rules": [
                {
                    "matches": matches,
                    "backendRefs": [{"group": POOL_GROUP, "kind": POOL_KIND, "name": pool_name}],
                }
            ],
        },
    }
