"""The gateway's egress NetworkPolicy for the external models: one object in the
gateway's namespace (`openmodel-gateway-external-egress`) letting the gateway pods reach
each ExternalModel's declared address ranges (spec.egress.cidrs) on its base URL's
port, and nothing else. Pure: the operator's ExternalModel loop renders and applies it.

An ExternalModel without spec.egress.cidrs opens nothing: its author lists the
upstream's ranges (the gateway connects directly, through no proxy). Ranges that are not
public (private, loopback, link-local such as the cloud metadata endpoint) open only for
an ExternalModel in the gateway's own namespace, which the platform controls; a team's
opens nothing at all.
The policy only adds to what the gateway's base policy (charts, manifests) allows (DNS,
the API server, the engines), which states egress itself, so this one never opens the
rest of the world."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from openmodel.config import PlatformConfig
from openmodel.external_model import ExternalModel, inside_ranges
from openmodel.privacy.render import match_labels

GATEWAY_EGRESS_POLICY = "openmodel-gateway-external-egress"
# Marks the policy as the operator's (no owner reference crosses namespaces): the
# operator deletes it when no ExternalModel declares egress, and only it.
GATEWAY_EGRESS_LABEL = "openmodel.dev/gateway-egress"
GATEWAY_EGRESS_LABEL_VALUE = "external-models"


def upstream_port(base_url: str) -> int:
    """The port the gateway connects to for `base_url`: the stated one, else 443/80."""
    parts = urlsplit(base_url)
    if parts.port is not None:
        return parts.port
    return 443 if parts.scheme == "https" else 80


def render_gateway_egress(
    models: Iterable[ExternalModel], config: PlatformConfig
) -> dict[str, Any] | None:
    """The policy for `models`; None when none of them declares address ranges (the
    policy is then deleted), or when gateway.demandSelector is no plain `k=v,...` list
    (it could not select the gateway pods alone: nothing is opened). One rule per port,
    its ranges sorted, so the same set of ExternalModels always renders the same object."""
    ranges_by_port: dict[int, set[str]] = {}
    for model in models:
        if inside_ranges(model) and model.namespace != config.gateway.demand_namespace:
            continue  # refused (EgressNotAllowed): a team may not open the inside
        if model.egress_cidrs:
            port = upstream_port(model.base_url)
            ranges_by_port.setdefault(port, set()).update(model.egress_cidrs)
    if not ranges_by_port:
        return None
    gateway = config.gateway
    pod_labels = match_labels(gateway.demand_selector)
    if not pod_labels:
        return None
    rules = [
        {
            "to": [{"ipBlock": {"cidr": cidr}} for cidr in sorted(ranges_by_port[port])],
            "ports": [{"protocol": "TCP", "port": port}],
        }
        for port in sorted(ranges_by_port)
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": GATEWAY_EGRESS_POLICY,
            "namespace": gateway.demand_namespace,
            "labels": {
                GATEWAY_EGRESS_LABEL: GATEWAY_EGRESS_LABEL_VALUE,
                "app.kubernetes.io/managed-by": "openmodel",
            },
        },
        "spec": {
            "podSelector": {"matchLabels": pod_labels},
            "policyTypes": ["Egress"],
            "egress": rules,
        },
    }
