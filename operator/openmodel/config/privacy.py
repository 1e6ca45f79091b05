"""The platform config's `privacy` key: what may leave an engine pod, and who may reach it.

```yaml
privacy:
  engineTelemetry: false     # true: engines keep their own usage reporting (opt in)
  networkPolicy:
    enabled: true            # a NetworkPolicy per ModelDeployment (docs/security.md)
    operator:                # the operator's pods (metrics, adapter loading)
      namespace: openmodel-system
      podSelector: {matchLabels: {app.kubernetes.io/name: openmodel,
                                  app.kubernetes.io/component: operator}}
    engineIngressFrom: []    # more NetworkPolicyPeers that may reach the engine port
                             # (e.g. an inference Gateway's namespace)
    weightsEgress:           # egress rules for engines that fetch weights themselves
      - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12,
                                                 192.168.0.0/16, 100.64.0.0/10,
                                                 169.254.0.0/16]}}]
        ports: [{protocol: TCP, port: 443}]      # the default: public HTTPS (the Hub, S3)
    dnsEgress:               # egress rules for DNS, with the weights rules
      - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}},
              podSelector: {matchLabels: {k8s-app: kube-dns}}}]
        ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
    egressAllowlist:         # named exceptions a ModelDeployment may ask for
      internal-tools:        #   (spec.network.egress: [internal-tools])
        - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: tools}}}]
```

The gateway's pods are allowed in from `gateway.demandNamespace` /
`gateway.demandSelector`, the same pods the autoscaler reads demand from. Peers and egress
rules are NetworkPolicyPeer and NetworkPolicyEgressRule objects, kept as written (the API
server checks them when the policy is applied); here their shape is checked, so a typo
fails at start, not per model. The default weights rule is the public internet on 443 and
nothing private (a cloud's metadata address 169.254.169.254 included): a platform with a
Hub mirror or a proxy lists that instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from openmodel.config.errors import ConfigError, checked_mapping

KEY: Final = "privacy"
PEER_KEYS: Final = ("ipBlock", "namespaceSelector", "podSelector")
SELECTOR_KEYS: Final = ("matchLabels", "matchExpressions")
DEFAULT_OPERATOR_NAMESPACE: Final = "openmodel-system"
DEFAULT_OPERATOR_LABELS: Final = {
    "app.kubernetes.io/name": "openmodel",
    "app.kubernetes.io/component": "operator",
}
RULE_KEYS: Final = ("to", "ports")
PORT_KEYS: Final = ("protocol", "port", "endPort")
PROTOCOLS: Final = ("TCP", "UDP", "SCTP")
PRIVATE_RANGES: Final = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
)

Peer = Mapping[str, Any]
EgressRule = Mapping[str, Any]

DEFAULT_WEIGHTS_EGRESS: Final[tuple[EgressRule, ...]] = (
    {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    },
)
DEFAULT_DNS_EGRESS: Final[tuple[EgressRule, ...]] = (
    {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    },
)


@dataclass(frozen=True)
class NetworkPolicyConfig:
    enabled: bool = True
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
    operator_selector: Mapping[str, Any] = field(
        default_factory=lambda: {"matchLabels": dict(DEFAULT_OPERATOR_LABELS)}
    )
    engine_ingress_from: tuple[Peer, ...] = ()
    weights_egress: tuple[EgressRule, ...] = DEFAULT_WEIGHTS_EGRESS
    dns_egress: tuple[EgressRule, ...] = DEFAULT_DNS_EGRESS
    egress_allowlist: Mapping[str, tuple[EgressRule, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class PrivacyConfig:
    engine_telemetry: bool = False
    network_policy: NetworkPolicyConfig = field(default_factory=NetworkPolicyConfig)


def _selector(raw: Any, where: str) -> Mapping[str, Any]:
    checked = checked_mapping(raw, where, SELECTOR_KEYS)
    labels = checked.get("matchLabels", {})
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ConfigError(f"{where}.matchLabels must map label names to strings")
    if not isinstance(checked.get("matchExpressions", []), list):
        raise ConfigError(f"{where}.matchExpressions must be a list")
    return dict(checked)


def _peer(raw: Any, where: str) -> Peer:
    checked = checked_mapping(raw, where, PEER_KEYS)
    if not checked:
        raise ConfigError(
            f"{where} is empty: name an ipBlock, a namespaceSelector or both selectors"
        )
    if "ipBlock" in checked and len(checked) > 1:
        raise ConfigError(f"{where}: an ipBlock stands alone (no selectors beside it)")
    if "ipBlock" in checked:
        block = checked_mapping(checked["ipBlock"], f"{where}.ipBlock", ("cidr", "except"))
        if not isinstance(block.get("cidr"), str):
            raise ConfigError(f"{where}.ipBlock.cidr is required (a CIDR string)")
        excluded = block.get("except", [])
        if not isinstance(excluded, list) or not all(isinstance(e, str) for e in excluded):
            raise ConfigError(f"{where}.ipBlock.except must be a list of CIDR strings")
    for key in ("namespaceSelector", "podSelector"):
        if key in checked:
            _selector(checked[key], f"{where}.{key}")
    return dict(checked)


def _peers(raw: Any, where: str) -> tuple[Peer, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list of NetworkPolicyPeers, got {raw!r}")
    return tuple(_peer(item, f"{where}[{i}]") for i, item in enumerate(raw))


def _port(raw: Any, where: str) -> Mapping[str, Any]:
    checked = checked_mapping(raw, where, PORT_KEYS)
    protocol = checked.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where}.protocol must be one of {', '.join(PROTOCOLS)}")
    port = checked.get("port")
    if port is not None and not (
        (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535)
        or (isinstance(port, str) and port)
    ):
        raise ConfigError(f"{where}.port must be a port number (1-65535) or a port name")
    end = checked.get("endPort")
    if end is not None and not (isinstance(end, int) and isinstance(port, int) and end >= port):
        raise ConfigError(f"{where}.endPort must be a number >= port")
    return dict(checked)


def _rules(raw: Any, where: str) -> tuple[EgressRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list of egress rules ({{to, ports}}), got {raw!r}")
    rules = []
    for i, item in enumerate(raw):
        checked = checked_mapping(item, f"{where}[{i}]", RULE_KEYS)
        rule: dict[str, Any] = {}
        if "to" in checked:
            rule["to"] = list(_peers(checked["to"], f"{where}[{i}].to"))
        if "ports" in checked:
            ports = checked["ports"]
            if not isinstance(ports, list):
                raise ConfigError(f"{where}[{i}].ports must be a list")
            rule["ports"] = [_port(p, f"{where}[{i}].ports[{j}]") for j, p in enumerate(ports)]
        if not rule.get("to") and not rule.get("ports"):
            raise ConfigError(
                f"{where}[{i}] allows everything (no `to`, no `ports`): say what it opens"
            )
        rules.append(rule)
    return tuple(rules)


def _network_policy(raw: Any) -> NetworkPolicyConfig:
    where = f"{KEY}.networkPolicy"
    checked = checked_mapping(
        raw,
        where,
        ("enabled", "operator", "engineIngressFrom", "weightsEgress", "dnsEgress",
         "egressAllowlist"),
    )  # fmt: skip
    defaults = NetworkPolicyConfig()
    enabled = checked.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled must be true or false, got {enabled!r}")
    operator = checked_mapping(
        checked.get("operator", {}), f"{where}.operator", ("namespace", "podSelector")
    )
    namespace = operator.get("namespace", defaults.operator_namespace)
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError(f"{where}.operator.namespace must be a namespace name")
    selector = (
        _selector(operator["podSelector"], f"{where}.operator.podSelector")
        if "podSelector" in operator
        else defaults.operator_selector
    )
    allowlist_raw = checked.get("egressAllowlist", {})
    if not isinstance(allowlist_raw, Mapping):
        raise ConfigError(f"{where}.egressAllowlist must map names to lists of peers")
    allowlist = {
        str(name): _rules(rules, f"{where}.egressAllowlist.{name}")
        for name, rules in allowlist_raw.items()
    }
    return NetworkPolicyConfig(
        enabled=enabled,
        operator_namespace=namespace,
        operator_selector=selector,
        engine_ingress_from=_peers(checked.get("engineIngressFrom"), f"{where}.engineIngressFrom"),
        weights_egress=(
            _rules(checked["weightsEgress"], f"{where}.weightsEgress")
            if "weightsEgress" in checked
            else defaults.weights_egress
        ),
        dns_egress=(
            _rules(checked["dnsEgress"], f"{where}.dnsEgress")
            if "dnsEgress" in checked
            else defaults.dns_egress
        ),
        egress_allowlist=allowlist,
    )


def parse_privacy(raw: Any) -> PrivacyConfig:
    if raw is None:
        return PrivacyConfig()
    checked = checked_mapping(raw, KEY, ("engineTelemetry", "networkPolicy"))
    telemetry = checked.get("engineTelemetry", False)
    if not isinstance(telemetry, bool):
        raise ConfigError(f"{KEY}.engineTelemetry must be true or false, got {telemetry!r}")
    return PrivacyConfig(
        engine_telemetry=telemetry,
        network_policy=_network_policy(checked.get("networkPolicy", {})),
    )
