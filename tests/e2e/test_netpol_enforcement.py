"""The process nodes' NetworkPolicy enforcement (harness/netpol.py) against the examples
of the NetworkPolicy documentation, with real connections between real network
namespaces: no control plane, only the kernel's nftables and conntrack.

Each "pod" is a network namespace with one address (a process-node sandbox), listening
on the ports the case needs; the pod under test gets the ruleset `ruleset()` computes
from the case's policies; connections are made from inside the namespaces (a thread that
entered the namespace creates the socket). The examples' addresses are moved into
198.19.0.0/16 (RFC 2544's range, routed here only to these sandboxes), the rest is as
the documentation writes it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness.netpol import (
    ContainerPort,
    Listener,
    PodInfo,
    apply,
    connects,
    connects_from,
    host_addresses,
    ruleset,
)
from harness.process_node.sandbox import Sandbox, enable_pod_forwarding
from harness.process_nodes import process_nodes_unavailable

# A /24 of 198.19.0.0/16 per test process, so two sessions on one machine never meet.
SUBNETS = list(ipaddress.IPv4Network("198.19.0.0/16").subnets(new_prefix=24))


def _subnet(offset: int) -> ipaddress.IPv4Network:
    return SUBNETS[(os.getpid() * 3 + offset) % 250]


@dataclass
class Pod:
    info: PodInfo
    sandbox: Sandbox
    listener: Listener | None = None

    @property
    def ip(self) -> str:
        return str(self.sandbox.address)

    def connects(self, address: str, port: int) -> bool:
        return connects_from(self.sandbox.netns, address, port)


class World:
    """Namespaces with labels, sandboxed pods, and the policies of one case."""

    def __init__(self) -> None:
        self.pods: list[Pod] = []
        self.namespaces: dict[str, dict[str, str]] = {"default": {}}

    def pod(
        self,
        address: str,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        ports: tuple[ContainerPort, ...] = (),
        listen: tuple[int, ...] = (),
        known: bool = True,
    ) -> Pod:
        """A sandbox at `address`; `known=False` makes it an address outside the
        cluster (no pod object: only ipBlocks can name it)."""
        self.namespaces.setdefault(namespace, {})
        sandbox = Sandbox(ipaddress.IPv4Address(address))
        sandbox.create()
        name = f"p{len(self.pods)}" if known else ""
        info = PodInfo(namespace, name, labels or {}, address if known else None, ports)
        pod = Pod(info, sandbox, Listener(sandbox.netns, *listen) if listen else None)
        self.pods.append(pod)
        return pod

    def enforce(self, target: Pod, policies: list[dict[str, Any]]) -> str:
        script = ruleset(
            target.info,
            policies,
            [p.info for p in self.pods if p.info.ip],
            self.namespaces,
            host_addresses(),
        )
        apply(target.sandbox.netns, script)
        return script

    def close(self) -> None:
        for pod in self.pods:
            if pod.listener is not None:
                pod.listener.close()
            pod.sandbox.destroy()


@pytest.fixture
def world() -> Iterator[World]:
    why = process_nodes_unavailable()
    if why is not None:
        pytest.fail(f"network namespaces are needed here: {why}")
    enable_pod_forwarding()
    w = World()
    try:
        yield w
    finally:
        w.close()


def policy(name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def from_host(address: str, port: int) -> bool:
    return connects(address, port)


def test_the_documentation_example_db_policy(world: World) -> None:
    """test-network-policy: ingress to role=db on TCP 6379 from an ipBlock (minus its
    except), from namespaces labelled project=myproject and from role=frontend pods of its
    own namespace; egress only to an ipBlock on TCP 5978."""
    net, block, egress = _subnet(0), _subnet(1), _subnet(2)
    world.namespaces["myproject"] = {"project": "myproject"}
    world.namespaces["other"] = {"project": "other"}
    db = world.pod(str(net[10]), labels={"role": "db"}, listen=(6379, 6380))
    frontend = world.pod(str(net[11]), labels={"role": "frontend"}, listen=(80,))
    backend = world.pod(str(net[12]), labels={"role": "backend"})
    in_project = world.pod(str(net[13]), namespace="myproject", labels={"role": "x"})
    frontend_elsewhere = world.pod(str(net[14]), namespace="other", labels={"role": "frontend"})
    in_block = world.pod(str(block[5]), known=False)
    in_except = world.pod(str(block[200]), known=False)
    allowed_out = world.pod(str(egress[5]), known=False, listen=(5978, 5979))
    upper_half = str(list(block.subnets(new_prefix=25))[1])
    world.enforce(
        db,
        [
            policy(
                "test-network-policy",
                {
                    "podSelector": {"matchLabels": {"role": "db"}},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [
                        {
                            "from": [
                                {"ipBlock": {"cidr": str(block), "except": [upper_half]}},
                                {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                                {"podSelector": {"matchLabels": {"role": "frontend"}}},
                            ],
                            "ports": [{"protocol": "TCP", "port": 6379}],
                        }
                    ],
                    "egress": [
                        {
                            "to": [{"ipBlock": {"cidr": str(egress)}}],
                            "ports": [{"protocol": "TCP", "port": 5978}],
                        }
                    ],
                },
            )
        ],
    )
    assert frontend.connects(db.ip, 6379)
    assert not frontend.connects(db.ip, 6380), "only the rule's port"
    assert not backend.connects(db.ip, 6379), "role=backend is no peer"
    assert in_project.connects(db.ip, 6379), "any pod of a project=myproject namespace"
    assert not frontend_elsewhere.connects(db.ip, 6379), "podSelector: the policy's namespace"
    assert in_block.connects(db.ip, 6379)
    assert not in_except.connects(db.ip, 6379), "the ipBlock's except"
    assert from_host(db.ip, 6380), "traffic from the pod's node always passes"
    assert db.connects(allowed_out.ip, 5978)
    assert not db.connects(allowed_out.ip, 5979)
    assert not db.connects(frontend.ip, 80), "egress is isolated: replies only"
    assert db.connects(db.ip, 6380), "a pod reaches itself"


def test_default_deny_and_allow_all(world: World) -> None:
    net = _subnet(3)
    target = world.pod(str(net[10]), labels={"app": "t"}, listen=(8000,))
    peer = world.pod(str(net[11]), labels={"app": "p"}, listen=(8000,))
    deny_ingress = policy("default-deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]})
    world.enforce(target, [policy(deny_ingress["metadata"]["name"], deny_ingress["spec"], "x")])
    assert peer.connects(target.ip, 8000), "a policy selects pods of its own namespace only"
    world.enforce(target, [deny_ingress])
    assert not peer.connects(target.ip, 8000)
    assert target.connects(peer.ip, 8000), "ingress isolation leaves egress open"
    assert from_host(target.ip, 8000)

    allow_all = policy("allow-all-ingress", {"podSelector": {}, "ingress": [{}]})
    world.enforce(target, [deny_ingress, allow_all])
    assert peer.connects(target.ip, 8000), "policies add up: one allowing rule is enough"

    deny_egress = policy("default-deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
    world.enforce(target, [deny_egress])
    assert not target.connects(peer.ip, 8000)
    assert peer.connects(target.ip, 8000), "egress isolation leaves ingress open"
    (host,) = [a for a in host_addresses() if not a.startswith("127.")][:1] or ["127.0.0.1"]
    assert host  # the node's address: egress to it always passes (the next check)
    node = Listener(None, 0)
    try:
        assert target.connects(host, node.sockets[0].getsockname()[1])
    finally:
        node.close()

    allow_all_egress = policy(
        "allow-all-egress", {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}
    )
    world.enforce(target, [deny_egress, allow_all_egress])
    assert target.connects(peer.ip, 8000)


def test_namespace_and_pod_selector_in_one_peer_is_and_in_two_peers_is_or(world: World) -> None:
    net = _subnet(4)
    world.namespaces["client"] = {"user": "alice"}
    target = world.pod(str(net[10]), labels={"app": "t"}, listen=(8000,))
    alice_client = world.pod(str(net[11]), namespace="client", labels={"role": "client"})
    alice_other = world.pod(str(net[12]), namespace="client", labels={"role": "other"})
    local_client = world.pod(str(net[13]), labels={"role": "client"})
    both = {
        "namespaceSelector": {"matchLabels": {"user": "alice"}},
        "podSelector": {"matchLabels": {"role": "client"}},
    }
    world.enforce(target, [policy("and", {"podSelector": {}, "ingress": [{"from": [both]}]})])
    assert alice_client.connects(target.ip, 8000)
    assert not alice_other.connects(target.ip, 8000)
    assert not local_client.connects(target.ip, 8000)

    either = [
        {"namespaceSelector": both["namespaceSelector"]},
        {"podSelector": both["podSelector"]},
    ]
    world.enforce(target, [policy("or", {"podSelector": {}, "ingress": [{"from": either}]})])
    assert alice_client.connects(target.ip, 8000)
    assert alice_other.connects(target.ip, 8000)
    assert local_client.connects(target.ip, 8000)


def test_end_port_named_ports_and_match_expressions(world: World) -> None:
    net, out = _subnet(5), _subnet(6)
    named = (ContainerPort("http", 8000), ContainerPort("metrics", 9000))
    target = world.pod(str(net[10]), labels={"tier": "api"}, ports=named, listen=(8000, 9000))
    caller = world.pod(str(net[11]), labels={"env": "prod"}, listen=(8000,))
    stranger = world.pod(str(net[12]), labels={"env": "dev"})
    outside = world.pod(str(out[5]), known=False, listen=(32000, 32768, 32769))
    spec = {
        "podSelector": {
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["api", "web"]}]
        },
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [
                    {
                        "podSelector": {
                            "matchExpressions": [
                                {"key": "env", "operator": "NotIn", "values": ["dev"]}
                            ]
                        }
                    }
                ],
                "ports": [{"port": "http"}],
            }
        ],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": str(out)}}],
                "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}],
            }
        ],
    }
    world.enforce(target, [policy("multi-port-egress", spec)])
    assert caller.connects(target.ip, 8000), "the named port `http` is 8000 on this pod"
    assert not caller.connects(target.ip, 9000)
    assert not stranger.connects(target.ip, 8000), "NotIn dev"
    assert target.connects(outside.ip, 32000) and target.connects(outside.ip, 32768)
    assert not target.connects(outside.ip, 32769), "endPort is inclusive, and the last"
    assert not target.connects(caller.ip, 8000)
