"""The gateway's egress where NetworkPolicy is enforced (the process nodes' nftables
enforcement, harness/netpol.py, with real connections between network namespaces): the
gateway's base policy as installed (manifests/network-policies.yaml) plus the operator's
policy for the ExternalModels (privacy/gateway_egress.py, rendered from real parses).

A declared upstream is reachable on its base URL's port only; an undeclared one is not;
the engines stay reachable; with no ExternalModel declaring egress nothing outside is.
And the documented hole: the manifests' API-server rule without an address (ports 443 and
6443 to anywhere) lets an undeclared upstream on 443 through until the platform states
the API server's address (docs/security.md, "Network").
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_netpol_enforcement import World, _subnet
from test_netpol_enforcement import world as world  # the fixture

from openmodel.config import PlatformConfig
from openmodel.external_model import parse_external_model
from openmodel.privacy.gateway_egress import render_gateway_egress

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "openmodel-system"
GATEWAY_LABELS = {"app.kubernetes.io/name": "openmodel", "app.kubernetes.io/component": "gateway"}


def base_policy(api_server: str | None) -> dict[str, Any]:
    """manifests/network-policies.yaml's gateway policy; `api_server`: the address the
    platform states in its API-server rule, as the manifest's comment asks."""
    docs = yaml.safe_load_all((REPO / "manifests" / "network-policies.yaml").read_text())
    policy = next(d for d in docs if d["metadata"]["name"] == "openmodel-gateway")
    policy = copy.deepcopy(policy)
    if api_server is not None:
        (rule,) = [r for r in policy["spec"]["egress"] if "to" not in r]
        rule["to"] = [{"ipBlock": {"cidr": f"{api_server}/32"}}]
    return policy  # type: ignore[no-any-return]


def external(name: str, url: str, cidr: str) -> Any:
    return parse_external_model(
        {
            # The platform's own (the gateway's namespace): the sandbox's upstream is a
            # private address, which a team's ExternalModel may not open.
            "metadata": {"name": name, "namespace": SYSTEM},
            "spec": {"baseURL": url, "upstreamModel": "m", "egress": {"cidrs": [cidr]}},
        }
    )


@pytest.fixture
def places(world: World) -> Iterator[dict[str, Any]]:
    inside, outside_a, outside_b = _subnet(40), _subnet(41), _subnet(42)
    world.namespaces[SYSTEM] = {"kubernetes.io/metadata.name": SYSTEM}
    world.namespaces["team-a"] = {"kubernetes.io/metadata.name": "team-a"}
    yield {
        "gateway": world.pod(str(inside[10]), namespace=SYSTEM, labels=GATEWAY_LABELS),
        "engine": world.pod(str(inside[11]), namespace="team-a", labels={"e": "1"},
                            listen=(8000,)),
        "declared": world.pod(str(outside_a[7]), known=False, listen=(443, 8443)),
        "undeclared": world.pod(str(outside_b[7]), known=False, listen=(443,)),
        "api_server": str(outside_b[200]),
    }  # fmt: skip


def test_the_gateway_reaches_declared_upstreams_only(world: World, places: dict[str, Any]) -> None:
    gateway, engine = places["gateway"], places["engine"]
    declared, undeclared = places["declared"], places["undeclared"]
    base = base_policy(places["api_server"])

    # No ExternalModel declares egress: no policy, nothing outside.
    none = render_gateway_egress([], PlatformConfig())
    assert none is None
    world.enforce(gateway, [base])
    assert gateway.connects(engine.ip, 8000), "the engines, in any namespace"
    assert not gateway.connects(declared.ip, 443)
    assert not gateway.connects(undeclared.ip, 443)

    model = external("frontier", "https://api.example.test/v1", f"{declared.ip}/32")
    policy = render_gateway_egress([model], PlatformConfig())
    assert policy is not None and policy["metadata"]["namespace"] == SYSTEM
    world.enforce(gateway, [base, policy])
    assert gateway.connects(declared.ip, 443), "the declared range on the base URL's port"
    assert not gateway.connects(declared.ip, 8443), "no other port"
    assert not gateway.connects(undeclared.ip, 443), "an undeclared upstream"
    assert gateway.connects(engine.ip, 8000), "the engines still"


def test_without_the_api_servers_address_port_443_is_open_everywhere(
    world: World, places: dict[str, Any]
) -> None:
    """The hole docs/security.md names: state the API server's address to close it."""
    world.enforce(places["gateway"], [base_policy(None)])
    assert places["gateway"].connects(places["undeclared"].ip, 443)
