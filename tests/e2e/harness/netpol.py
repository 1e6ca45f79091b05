"""NetworkPolicy enforced on process nodes as a network plugin enforces it: an nftables
ruleset in each pod's network namespace, computed from the policies, pods and namespaces
the API server holds.

The local cluster has no network plugin, so NetworkPolicies there are inert objects. The
process nodes run real pods, each in its own network namespace (``process_node/sandbox``),
so each pod's traffic can be filtered where it enters and leaves: ``ruleset()`` turns the
cluster's state into one table for one pod, ``apply()`` loads it into the pod's namespace
atomically (the table is replaced in one ``nft -f`` transaction).

Semantics, after the networking.k8s.io/v1 NetworkPolicy API:
- A pod is isolated for ingress (egress) when a policy of its namespace selects it and
  has Ingress (Egress) among its policyTypes. Without policyTypes, a policy is Ingress,
  plus Egress when it has egress rules.
- An isolated pod's connection is allowed when one rule of one selecting policy allows
  it: one of the rule's peers and one of its ports. A rule without peers allows every
  peer; without ports, every port. A policy type with no rules allows nothing.
- Peers: ``podSelector`` alone (pods of the policy's namespace), ``namespaceSelector``
  alone (every pod of the selected namespaces), both (pods selected in selected
  namespaces), ``ipBlock`` (``cidr`` minus each ``except``).
- Ports: ``protocol`` (TCP by default), ``port`` as a number or as the name of a
  container port of the destination pod, ``endPort`` for a range.
- Replies of an allowed connection pass (conntrack), traffic to and from the pod's node
  always passes (the node is this machine: every local address), and so does the pod's
  traffic to itself.

Choices the API leaves to the plugin: a refused connection is rejected (TCP reset, ICMP
admin-prohibited for the rest), not silently dropped, so a test sees the refusal at once
rather than after a timeout; protocols other than TCP, UDP and SCTP are refused to an
isolated pod too. A named port in an egress rule matches the pods that have a container
port of that name, by their address; for addresses that are no known pod (an ipBlock
outside the cluster) a name matches nothing, as it cannot be resolved.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

TABLE: Final = "openmodel_netpol"
NETNS_DIR: Final = Path("/run/netns")
CLONE_NEWNET: Final = 0x40000000
T = TypeVar("T")
Direction = Literal["Ingress", "Egress"]
PROTOCOLS: Final = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class ContainerPort:
    name: str | None
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class PodInfo:
    """What policies select a pod by and how traffic finds it."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ip: str | None
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True)
class PortMatch:
    protocol: str
    first: int | None  # None: every port of the protocol
    last: int | None = None

    def nft(self) -> str:
        proto = self.protocol.lower()
        if self.first is None:
            return f"meta l4proto {proto}"
        span = str(self.first) if self.last in (None, self.first) else f"{self.first}-{self.last}"
        return f"{proto} dport {span}"


@dataclass(frozen=True)
class Allow:
    """One allowed flow: peers (CIDRs; None: any address) minus excluded CIDRs, on ports
    (None: any port and protocol)."""

    peers: tuple[str, ...] | None
    excluded: tuple[str, ...] = ()
    ports: tuple[PortMatch, ...] | None = None


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    ports = tuple(
        ContainerPort(p.get("name"), int(p["containerPort"]), p.get("protocol") or "TCP")
        for c in spec.get("containers") or []
        for p in c.get("ports") or []
    )
    return PodInfo(
        namespace=meta["namespace"],
        name=meta["name"],
        labels=dict(meta.get("labels") or {}),
        ip=status.get("podIP"),
        ports=ports,
    )


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector against labels; an empty selector selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown label selector operator {operator!r}")
    return True


def policy_types(policy: Mapping[str, Any]) -> tuple[str, ...]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return tuple(spec["policyTypes"])
    return ("Ingress", "Egress") if spec.get("egress") else ("Ingress",)


def _selecting(
    pod: PodInfo, policies: Iterable[Mapping[str, Any]], direction: Direction
) -> list[Mapping[str, Any]]:
    return [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and direction in policy_types(p)
        and selects((p.get("spec") or {}).get("podSelector"), pod.labels)
    ]


def _peer_pods(
    peer: Mapping[str, Any],
    policy_namespace: str,
    pods: Sequence[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
) -> list[PodInfo]:
    if "namespaceSelector" in peer:
        chosen = {
            ns for ns, labels in namespaces.items() if selects(peer["namespaceSelector"], labels)
        }
    else:
        chosen = {policy_namespace}
    return [
        p
        for p in pods
        if p.ip and p.namespace in chosen and selects(peer.get("podSelector"), p.labels)
    ]


def _port_matches(
    ports: Sequence[Mapping[str, Any]], destination: PodInfo | None
) -> tuple[PortMatch, ...]:
    """The rule's ports as matches for traffic to `destination` (None: an address that
    is no known pod, where a named port matches nothing)."""
    found: list[PortMatch] = []
    for entry in ports:
        protocol = entry.get("protocol") or "TCP"
        port = entry.get("port")
        if port is None:
            found.append(PortMatch(protocol, None))
        elif isinstance(port, int) or str(port).isdigit():
            end = entry.get("endPort")
            found.append(PortMatch(protocol, int(port), int(end) if end is not None else None))
        elif destination is not None:
            found.extend(
                PortMatch(protocol, p.port)
                for p in destination.ports
                if p.name == port and p.protocol == protocol
            )
    return tuple(dict.fromkeys(found))


def _has_named_port(ports: Sequence[Mapping[str, Any]]) -> bool:
    return any(
        e.get("port") is not None and not (isinstance(e["port"], int) or str(e["port"]).isdigit())
        for e in ports
    )


def allowed(
    pod: PodInfo,
    direction: Direction,
    policies: Sequence[Mapping[str, Any]],
    pods: Sequence[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
) -> list[Allow] | None:
    """What the pod may receive (Ingress) or send (Egress); None when no policy isolates
    it in that direction (everything passes)."""
    selecting = _selecting(pod, policies, direction)
    if not selecting:
        return None
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    allows: list[Allow] = []
    for policy in selecting:
        namespace = policy["metadata"]["namespace"]
        for rule in (policy.get("spec") or {}).get(key) or []:
            ports = rule.get("ports") or []
            peers = rule.get(peers_key) or []
            allows.extend(_rule_allows(pod, direction, namespace, peers, ports, pods, namespaces))
    return allows


def _rule_allows(
    pod: PodInfo,
    direction: Direction,
    namespace: str,
    peers: Sequence[Mapping[str, Any]],
    ports: Sequence[Mapping[str, Any]],
    pods: Sequence[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
) -> list[Allow]:
    # Ingress: the destination is the pod itself, so named ports resolve against it.
    if direction == "Ingress" or not _has_named_port(ports):
        port_matches = _port_matches(ports, pod) if ports else None
        if ports and not port_matches:
            return []
        if not peers:
            return [Allow(None, (), port_matches)]
        out = []
        for peer in peers:
            if "ipBlock" in peer:
                block = peer["ipBlock"]
                out.append(Allow((block["cidr"],), tuple(block.get("except") or ()), port_matches))
            else:
                ips = tuple(f"{p.ip}/32" for p in _peer_pods(peer, namespace, pods, namespaces))
                if ips:
                    out.append(Allow(ips, (), port_matches))
        return out
    # Egress with a named port: per destination pod, by its address and its own number.
    candidates = _egress_destinations(peers, namespace, pods, namespaces)
    out = []
    for destination in candidates:
        matches = _port_matches(ports, destination)
        if matches and destination.ip:
            out.append(Allow((f"{destination.ip}/32",), (), matches))
    return out


def _egress_destinations(
    peers: Sequence[Mapping[str, Any]],
    namespace: str,
    pods: Sequence[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
) -> list[PodInfo]:
    if not peers:
        return [p for p in pods if p.ip]
    found: dict[tuple[str, str], PodInfo] = {}
    for peer in peers:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            inside = ipaddress.ip_network(block["cidr"], strict=False)
            outside = [ipaddress.ip_network(e, strict=False) for e in block.get("except") or []]
            for p in pods:
                if p.ip is None:
                    continue
                address = ipaddress.ip_address(p.ip)
                if address in inside and not any(address in e for e in outside):
                    found[(p.namespace, p.name)] = p
        else:
            for p in _peer_pods(peer, namespace, pods, namespaces):
                found[(p.namespace, p.name)] = p
    return list(found.values())


def _set(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _chain(
    name: str,
    hook: str,
    allows: list[Allow] | None,
    address_field: str,
    lo: str,
    node_addresses: Sequence[str],
) -> list[str]:
    lines = [f"  chain {name} {{", f"    type filter hook {hook} priority 0; policy accept;"]
    if allows is not None:
        lines += [
            "    ct state established,related accept",
            f'    {lo} "lo" accept',
            f"    ip {address_field} {_set(node_addresses)} accept",
        ]
        for allow in allows:
            base = ""
            if allow.peers is not None:
                base += f"ip {address_field} {_set(allow.peers)} "
            if allow.excluded:
                base += f"ip {address_field} != {_set(allow.excluded)} "
            for port in allow.ports or (None,):
                lines.append(f"    {base}{port.nft() + ' ' if port else ''}accept")
        lines += [
            "    meta l4proto tcp reject with tcp reset",
            "    reject with icmpx admin-prohibited",
        ]
    lines.append("  }")
    return lines


def ruleset(
    pod: PodInfo,
    policies: Sequence[Mapping[str, Any]],
    pods: Sequence[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
    node_addresses: Sequence[str],
) -> str:
    """The nftables script for one pod's network namespace: replaces the whole table."""
    ingress = allowed(pod, "Ingress", policies, pods, namespaces)
    egress = allowed(pod, "Egress", policies, pods, namespaces)
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    lines += _chain("ingress", "input", ingress, "saddr", "iifname", node_addresses)
    lines += _chain("egress", "output", egress, "daddr", "oifname", node_addresses)
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply(netns: str, script: str) -> None:
    """Loads `script` into the network namespace `netns` in one transaction."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"nft in {netns}: {done.stderr.strip()}")


def host_addresses() -> list[str]:
    """This machine's IPv4 addresses: the node every process-node pod runs on."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return sorted({line.split()[3].split("/")[0] for line in out.splitlines() if line.strip()})


def in_netns(netns: str, work: Callable[[], T]) -> T:
    """Runs `work` in a thread that entered the network namespace `netns`: the sockets it
    makes live there (a socket keeps its namespace), as a process in the pod would."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(NETNS_DIR / netns) as handle:
            if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                failure.append(OSError(ctypes.get_errno(), f"setns {netns}"))
                return
        try:
            result.append(work())
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


GREETING: Final = b"ok"


def connects(address: str, port: int, timeout: float = 2.0, greeting: bool = True) -> bool:
    """A TCP connection that completes (and, with `greeting`, reads a `Listener`'s)."""
    with socket.socket() as s:
        s.settimeout(timeout)
        try:
            s.connect((address, port))
            return not greeting or s.recv(len(GREETING)) == GREETING
        except OSError:
            return False


def connects_from(netns: str, address: str, port: int, greeting: bool = True) -> bool:
    return in_netns(netns, lambda: connects(address, port, greeting=greeting))


class Listener:
    """TCP listeners on `ports` of every address of a network namespace (None: this
    one), each greeting and closing every connection, until closed."""

    def __init__(self, netns: str | None, *ports: int) -> None:
        def bind() -> list[socket.socket]:
            made = []
            for port in ports:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", port))
                s.listen(16)
                made.append(s)
            return made

        self.sockets = bind() if netns is None else in_netns(netns, bind)
        for s in self.sockets:
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    @staticmethod
    def _serve(listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conn.sendall(GREETING)
                conn.close()

    def close(self) -> None:
        for s in self.sockets:
            s.close()
