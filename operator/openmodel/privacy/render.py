"""The engine pods' environment switches and their NetworkPolicy, rendered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openmodel.api import ModelDeploymentSpec
from openmodel.config import PlatformConfig
from openmodel.engines.base import Engine
from openmodel.privacy.egress import EgressPlan, fetches_at_start, rule_dicts, weights_rules


def offline_env(
    spec: ModelDeploymentSpec, engine: Engine, prefetched: bool = False
) -> list[dict[str, str]]:
    """Offline when everything the engine loads is on claims or was fetched for it by the
    download Job (`prefetched`); before the user's env, which may override it (a
    tokenizer named by repo id in spec.args, say)."""
    if fetches_at_start(spec, prefetched):
        return []
    return [{"name": k, "value": v} for k, v in engine.offline_env.items()]


def telemetry_env(engine: Engine, config: PlatformConfig, private: bool) -> list[dict[str, str]]:
    """Telemetry off unless the platform opted in, and never in a private namespace.
    Rendered after the user's env: the last of two equal names wins, so a team cannot
    turn on what the platform keeps off."""
    if config.privacy.engine_telemetry and not private:
        return []
    return [{"name": k, "value": v} for k, v in engine.telemetry_opt_out.items()]


def match_labels(selector: str) -> dict[str, str] | None:
    """`k=v,k2=v2` as matchLabels; None for a selector with other operators."""
    labels = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, sep, value = term.partition("=")
        if not sep or key.endswith("!") or value.startswith("="):
            return None
        labels[key.strip()] = value.strip()
    return labels


def _namespace(name: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


def _gateway_peer(config: PlatformConfig) -> dict[str, Any]:
    gateway = config.gateway
    peer: dict[str, Any] = {"namespaceSelector": _namespace(gateway.demand_namespace)}
    labels = match_labels(gateway.demand_selector)
    if labels:
        peer["podSelector"] = {"matchLabels": labels}
    return peer


def render_network_policy(
    metadata: Mapping[str, Any],
    pod_labels: Mapping[str, str],
    port: int,
    egress: EgressPlan,
    config: PlatformConfig,
    spans_nodes: bool = False,
) -> dict[str, Any]:
    """Ingress on the engine port from the gateway, the operator and the peers the platform
    adds; egress as `egress` plans it (none at all when closed). Traffic from the pods'
    own node is allowed by NetworkPolicy itself (kubelet probes). `spans_nodes`: the
    selected pods are the ranks of one engine on several nodes and reach each other on
    every port, both ways, and resolve the leader's name through the cluster's DNS (the
    platform's `dnsEgress`), which closed egress would otherwise cut."""
    policy = config.privacy.network_policy
    operator = {
        "namespaceSelector": _namespace(policy.operator_namespace),
        "podSelector": dict(policy.operator_selector),
    }
    peers = [_gateway_peer(config), operator, *rule_dicts(policy.engine_ingress_from)]
    ingress = [{"from": peers, "ports": [{"protocol": "TCP", "port": port}]}]
    egress_rules = rule_dicts(egress.rules)
    if spans_nodes:
        group = {"podSelector": {"matchLabels": dict(pod_labels)}}
        ingress.append({"from": [group]})
        dns = [rule for rule in rule_dicts(policy.dns_egress) if rule not in egress_rules]
        egress_rules = [*egress_rules, *dns, {"to": [group]}]
    return _network_policy(metadata, pod_labels, ingress, egress_rules)


def render_download_network_policy(
    metadata: Mapping[str, Any],
    pod_labels: Mapping[str, str],
    fetches: bool,
    config: PlatformConfig,
) -> dict[str, Any]:
    """The download Job's pods: nothing may connect to them; they reach DNS and the
    weights sources when they fetch (a check of a filled claim reaches nothing)."""
    rules = weights_rules(config.privacy.network_policy) if fetches else ()
    return _network_policy(metadata, pod_labels, [], rule_dicts(rules))


def _network_policy(
    metadata: Mapping[str, Any],
    pod_labels: Mapping[str, str],
    ingress: list[dict[str, Any]],
    egress: list[dict[str, Any]],
) -> dict[str, Any]:
    """A policy isolating the selected pods both ways. Both lists are always stated,
    even empty: applied (with force) they are fields we own, so rules someone adds by
    hand are taken out again; the API server stores an empty list as no key, which the
    drift check reads as the same."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": dict(metadata),
        "spec": {
            "podSelector": {"matchLabels": dict(pod_labels)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }
