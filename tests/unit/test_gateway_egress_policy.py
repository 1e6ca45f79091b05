"""The gateway's egress NetworkPolicy for the ExternalModels (privacy/gateway_egress.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from openmodel.config import GatewayConfig, PlatformConfig
from openmodel.external_model import parse_external_model
from openmodel.privacy.gateway_egress import (
    GATEWAY_EGRESS_LABEL,
    GATEWAY_EGRESS_POLICY,
    render_gateway_egress,
    upstream_port,
)

CONFIG = PlatformConfig()


def model(name: str, base_url: str, cidrs: list[str] | None = None, namespace: str = "team-a"):
    spec: dict[str, object] = {"baseURL": base_url, "upstreamModel": "m"}
    if cidrs is not None:
        spec["egress"] = {"cidrs": cidrs}
    return parse_external_model({"metadata": {"name": name, "namespace": namespace}, "spec": spec})


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://api.example.com/v1", 443),
        ("http://api.example.com/v1", 80),
        ("https://api.example.com:8443/v1", 8443),
        ("http://10.0.0.5:8000", 8000),
    ],
)
def test_the_port_comes_from_the_base_url(url: str, port: int) -> None:
    assert upstream_port(url) == port


def test_no_policy_while_no_external_model_declares_ranges() -> None:
    assert render_gateway_egress([], CONFIG) is None
    assert render_gateway_egress([model("a", "https://api.example.com/v1")], CONFIG) is None


def test_each_declared_range_on_its_port_and_nothing_else() -> None:
    policy = render_gateway_egress(
        [
            model("a", "https://api.example.com/v1", ["1.1.1.0/24"]),
            model("b", "https://other.example.com/v1", ["9.9.9.9/32", "1.1.1.0/24"]),
            model("c", "http://10.1.2.3:8000/v1", ["10.1.2.3/32"], namespace="openmodel-system"),
            model("e", "http://10.7.0.1:8000/v1", ["10.7.0.1/32"], namespace="team-b"),
            model("d", "https://nocidrs.example.com/v1"),
        ],
        CONFIG,
    )
    assert policy is not None
    meta = policy["metadata"]
    assert meta["name"] == GATEWAY_EGRESS_POLICY
    assert meta["namespace"] == CONFIG.gateway.demand_namespace
    assert meta["labels"][GATEWAY_EGRESS_LABEL] == "external-models"
    assert "ownerReferences" not in meta  # no owner across namespaces
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Egress"] and "ingress" not in spec
    # The gateway pods exactly as the autoscaler finds them (gateway.demandSelector).
    assert spec["podSelector"] == {
        "matchLabels": {
            "app.kubernetes.io/name": "openmodel",
            "app.kubernetes.io/component": "gateway",
        }
    }
    https = [{"ipBlock": {"cidr": "1.1.1.0/24"}}, {"ipBlock": {"cidr": "9.9.9.9/32"}}]
    assert spec["egress"] == [
        {"to": https, "ports": [{"protocol": "TCP", "port": 443}]},
        {
            "to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}],
            "ports": [{"protocol": "TCP", "port": 8000}],
        },
    ]


def test_the_same_models_in_any_order_render_the_same_policy() -> None:
    models = [
        model("a", "https://api.example.com/v1", ["1.1.1.0/24"]),
        model("b", "http://10.1.2.3:8000/v1", ["10.1.2.3/32"], namespace="openmodel-system"),
    ]
    assert render_gateway_egress(models, CONFIG) == render_gateway_egress(models[::-1], CONFIG)


def test_a_selector_that_cannot_be_match_labels_opens_nothing() -> None:
    config = replace(CONFIG, gateway=GatewayConfig(demand_selector="app in (gateway)"))
    models = [model("a", "https://api.example.com/v1", ["1.1.1.0/24"])]
    assert render_gateway_egress(models, config) is None


def test_the_policy_follows_the_gateways_namespace_and_labels() -> None:
    config = replace(
        CONFIG, gateway=GatewayConfig(demand_namespace="ai", demand_selector="app=gw,tier=edge")
    )
    policy = render_gateway_egress([model("a", "https://x.example/v1", ["8.8.8.0/24"])], config)
    assert policy is not None and policy["metadata"]["namespace"] == "ai"
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "gw", "tier": "edge"}}


@pytest.mark.parametrize(
    "cidr", ["10.0.0.0/8", "169.254.169.254/32", "127.0.0.1/32", "100.64.0.0/10", "fd00::/8"]
)
def test_a_teams_model_never_opens_the_inside(cidr: str) -> None:
    """Private, link-local (the cloud metadata endpoint), loopback, shared space: only
    the platform's own ExternalModels (in the gateway's namespace) open those."""
    team = model("t", "https://x.example/v1", [cidr], namespace="team-a")
    assert render_gateway_egress([team], CONFIG) is None
    platform = model("p", "https://x.example/v1", [cidr], namespace="openmodel-system")
    policy = render_gateway_egress([platform], CONFIG)
    assert policy is not None
    assert policy["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": cidr}}]
