"""The NetworkPolicies around the door (manifests/network-policies.yaml, the chart's
networkpolicy.yaml): which pods each selects, which of their ports it opens, to whom.

The gateway: its API port to every namespace by default (the door checks callers), its
metrics port (/metrics, /demand) to the monitoring namespace and the operator's pods only.
The operator: its metrics port to the monitoring namespace; its liveness port to no peer
(the kubelet's probes come from the node). docs/security.md, "Network".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import test_manifests
import yaml
from test_manifests import NAMESPACE, M, helm_refusal, helm_refusal_of, template

from openmodel import telemetry
from openmodel.config import GATEWAY_METRICS_PORT, GATEWAY_PORT

GATEWAY, OPERATOR = "openmodel-gateway", "openmodel-operator"
INSTANCE = "app.kubernetes.io/instance"
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
EVERY_NAMESPACE = {"namespaceSelector": {}}
helm = test_manifests.helm  # the fixture

Objs = dict[tuple[str, str], Any]


def pod_labels(objs: Objs, deployment: str) -> dict[str, str]:
    return objs[("Deployment", deployment)]["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def container_ports(objs: Objs, deployment: str) -> dict[str, int]:
    (container,) = objs[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, selector
    return selector["matchLabels"].items() <= labels.items()  # type: ignore[no-any-return]


def opened(policy: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Port -> the peers allowed to it. Every rule names its ports and its peers (a rule
    without either opens every port, or to everyone)."""
    # Ingress first; the gateway's states its egress too (test_gateway_manifests.py).
    assert policy["spec"]["policyTypes"][0] == "Ingress"
    out: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("ports") and rule.get("from"), rule
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            out.setdefault(port["port"], []).extend(rule["from"])
    return out


def without_instance(peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peers with the chart's release label taken out of pod selectors (manifests/ has none)."""
    out = []
    for peer in peers:
        if "podSelector" in peer:
            labels = {k: v for k, v in peer["podSelector"]["matchLabels"].items() if k != INSTANCE}
            peer = {**peer, "podSelector": {"matchLabels": labels}}
        out.append(peer)
    return out


def check_gateway_policy(objs: Objs, metrics_from: list[dict[str, Any]]) -> None:
    policy = objs[("NetworkPolicy", GATEWAY)]
    assert policy["metadata"]["namespace"] == objs[("Deployment", GATEWAY)]["metadata"]["namespace"]
    assert policy["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    assert selects(policy["spec"]["podSelector"], pod_labels(objs, GATEWAY))
    assert not selects(policy["spec"]["podSelector"], pod_labels(objs, OPERATOR))
    ports = container_ports(objs, GATEWAY)
    assert (ports["http"], ports["metrics"]) == (GATEWAY_PORT, GATEWAY_METRICS_PORT)
    rules = opened(policy)
    assert set(rules) == {GATEWAY_PORT, GATEWAY_METRICS_PORT}
    *monitoring, operator = rules[GATEWAY_METRICS_PORT]
    assert monitoring == metrics_from
    # The operator's pods (its autoscaler reads /demand), in the policy's own namespace:
    # a podSelector alone, no namespaceSelector.
    assert set(operator) == {"podSelector"}
    assert selects(operator["podSelector"], pod_labels(objs, OPERATOR))
    assert not selects(operator["podSelector"], pod_labels(objs, GATEWAY))


def check_operator_policy(objs: Objs, metrics_from: list[dict[str, Any]]) -> None:
    policy = objs[("NetworkPolicy", OPERATOR)]
    assert policy["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    assert selects(policy["spec"]["podSelector"], pod_labels(objs, OPERATOR))
    assert not selects(policy["spec"]["podSelector"], pod_labels(objs, GATEWAY))
    ports = container_ports(objs, OPERATOR)
    # The liveness port is in no rule: only the node (the kubelet's probes) reaches it.
    assert opened(policy) == {ports["metrics"]: metrics_from}
    assert ports["healthz"] not in opened(policy)


def test_manifests_open_the_gateways_api_to_every_namespace_and_its_metrics_to_monitoring():
    check_gateway_policy(M, [MONITORING])
    assert opened(M[("NetworkPolicy", GATEWAY)])[GATEWAY_PORT] == [EVERY_NAMESPACE]


def test_manifests_open_the_operators_metrics_to_monitoring_and_its_liveness_to_no_one():
    check_operator_policy(M, [MONITORING])
    assert container_ports(M, OPERATOR)["metrics"] == telemetry.DEFAULT_METRICS_PORT


def test_manifests_policies_live_with_the_pods_they_select():
    for name in (GATEWAY, OPERATOR):
        assert M[("NetworkPolicy", name)]["metadata"]["namespace"] == NAMESPACE


def test_helm_renders_the_same_policies_by_default(helm: Path):
    rendered = template(helm)
    check_gateway_policy(rendered, [MONITORING])
    check_operator_policy(rendered, [MONITORING])
    for name in (GATEWAY, OPERATOR):
        got, want = opened(rendered[("NetworkPolicy", name)]), opened(M[("NetworkPolicy", name)])
        assert {p: without_instance(peers) for p, peers in got.items()} == want, name
        want_egress = M[("NetworkPolicy", name)]["spec"].get("egress")
        assert rendered[("NetworkPolicy", name)]["spec"].get("egress") == want_egress, name
        # The chart's selectors carry the release, so two releases do not overlap.
        assert INSTANCE in rendered[("NetworkPolicy", name)]["spec"]["podSelector"]["matchLabels"]


PEERS = """
networkPolicy:
  metricsFrom:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: observability}}
      podSelector: {matchLabels: {app.kubernetes.io/name: prometheus}}
gateway:
  networkPolicy:
    apiFrom:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}
      - ipBlock: {cidr: 203.0.113.0/24}
"""


def test_helm_peers_come_from_the_values(helm: Path, tmp_path: Path):
    values = tmp_path / "values.yaml"
    values.write_text(PEERS)
    wanted = yaml.safe_load(PEERS)
    rendered = template(helm, "-f", str(values))
    metrics_from = wanted["networkPolicy"]["metricsFrom"]
    check_gateway_policy(rendered, metrics_from)
    check_operator_policy(rendered, metrics_from)
    api_from = opened(rendered[("NetworkPolicy", GATEWAY)])[GATEWAY_PORT]
    assert api_from == wanted["gateway"]["networkPolicy"]["apiFrom"]
    off = template(helm, "--set", "networkPolicy.enabled=false")
    assert not [k for k in off if k[0] == "NetworkPolicy"]


def test_helm_refuses_an_empty_peer_list_which_would_open_the_port_to_everyone(
    helm: Path, tmp_path: Path
):
    for key, values in (
        ("apiFrom", "gateway: {networkPolicy: {apiFrom: []}}"),
        ("metricsFrom", "networkPolicy: {metricsFrom: []}"),
    ):
        file = tmp_path / f"{key}.yaml"
        file.write_text(values)
        said = helm_refusal_of(helm, "-f", str(file))
        assert key in said and "minItems" in said, said
    # Removed outright (null) the schema has nothing to check: the template refuses.
    assert "apiFrom must name at least one peer" in helm_refusal(
        helm, "gateway.networkPolicy.apiFrom=null"
    )
    assert "metricsFrom must name at least one peer" in helm_refusal(
        helm, "networkPolicy.metricsFrom=null"
    )
