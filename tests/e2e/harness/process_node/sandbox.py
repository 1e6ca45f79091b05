"""A pod's network sandbox: a network namespace with one veth to the host.

This is what a CNI plugin does for a real kubelet. The pod's address is routed to its
veth on the host (a /32 route), so the test process, the operator and the autoscaler
reach ``<podIP>:<port>`` exactly as in a cluster, and a server inside that binds
``0.0.0.0`` (as the rendered vLLM command does) listens only in its own namespace, so
two pods on one node never fight over a port. Process-node pod addresses come from
198.18.0.0/15 (RFC 2544's benchmarking range: routed here only to these veths, with an
``unreachable`` route for each node's /24 so nothing leaves the machine).

Pods reach each other as in a cluster's flat network: the host routes between the veths
(IP forwarding on, and proxy ARP on each host-side link, so a pod's on-link default route
finds any address the host can route), and a forward filter of the host's own
(``FORWARD_TABLE``) lets forwarded packets go only from one pod link to another, so a
pod's packets still never leave the machine.

KWOK pods have loopback addresses (127.64.0.0/10, harness/podnet.py) served by the host's
``lo``; inside a pod's namespace those would be the pod's own ``lo``. So that a pod
reaches them as pods reach each other in a cluster (the gateway as a pod, the simulated
engines on the host), the range is routed to the host over the veth: a unicast route in
the namespace's ``local`` table (more specific than its ``local 127.0.0.0/8``, so the
rest of 127/8 stays the pod's own) and ``route_localnet`` on both ends of the veth, which
lets loopback addresses cross a real link.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..podnet import SEARCH_SPACE as KWOK_POD_SPACE

NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "openmodel-pod-"
HOST_LINK_PREFIX = "om"
FORWARD_TABLE = "openmodel_pod_forwarding"


class SandboxError(RuntimeError):
    """An `ip` command failed; carries its stderr."""


def _ip(*args: str, check: bool = True) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise SandboxError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _sysctl(setting: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    result = subprocess.run(
        [*prefix, "sysctl", "-q", "-w", setting], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SandboxError(f"sysctl -w {setting}: {result.stderr.strip()}")


def _hex(address: ipaddress.IPv4Address) -> str:
    return f"{int(address):08x}"


@dataclass(frozen=True)
class Sandbox:
    address: ipaddress.IPv4Address

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{_hex(self.address)}"

    @property
    def host_link(self) -> str:
        return f"{HOST_LINK_PREFIX}{_hex(self.address)}"  # 10 characters: names stop at 15

    def create(self) -> None:
        self.destroy()  # a sandbox left by a killed process node
        ns, link, ip = self.netns, self.host_link, str(self.address)
        _ip("netns", "add", ns)
        try:
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            # A device route: the host answers ARP for its own addresses on any link.
            _ip("-n", ns, "route", "add", "default", "dev", "eth0")
            _ip("-n", ns, "route", "add", "table", "local", str(KWOK_POD_SPACE), "dev", "eth0")
            _sysctl("net.ipv4.conf.eth0.route_localnet=1", netns=ns)
            Path(f"/proc/sys/net/ipv4/conf/{link}/proxy_arp").write_text("1")
            # Proxied ARP replies otherwise wait a random 0-0.8 s (the kernel's default).
            Path(f"/proc/sys/net/ipv4/neigh/{link}/proxy_delay").write_text("0")
            _ip("link", "set", link, "up")
            _sysctl(f"net.ipv4.conf.{link}.route_localnet=1")
            _ip("route", "replace", f"{ip}/32", "dev", link)
        except SandboxError:
            self.destroy()
            raise

    def add_local_address(self, address: str) -> None:
        """``address`` answers inside the pod's namespace (on its ``lo``)."""
        _ip("-n", self.netns, "addr", "add", f"{address}/32", "dev", "lo")

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    def destroy(self) -> None:
        _ip("route", "del", f"{self.address}/32", check=False)
        _ip("link", "del", self.host_link, check=False)
        if (NETNS_DIR / self.netns).exists():
            _ip("netns", "del", self.netns, check=False)


def guard_network(cidr: ipaddress.IPv4Network) -> None:
    """Addresses of the node's range without a pod are unreachable, not sent away; pods
    reach each other and nothing else through the host."""
    _ip("route", "replace", "unreachable", str(cidr))
    enable_pod_forwarding()


def enable_pod_forwarding() -> None:
    """IP forwarding on, limited by a forward filter to pod link -> pod link (the host's
    other forwarding, if it does any, passes as before). Idempotent: the table is
    replaced whole."""
    script = f"""table inet {FORWARD_TABLE}
delete table inet {FORWARD_TABLE}
table inet {FORWARD_TABLE} {{
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "{HOST_LINK_PREFIX}*" oifname != "{HOST_LINK_PREFIX}*" drop
    oifname "{HOST_LINK_PREFIX}*" iifname != "{HOST_LINK_PREFIX}*" drop
  }}
}}
"""
    try:
        done = subprocess.run(
            ["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise SandboxError("nft is missing (Debian package nftables)") from None
    if done.returncode != 0:
        raise SandboxError(f"nft: {done.stderr.strip()}")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")


def release_network(cidr: ipaddress.IPv4Network) -> None:
    _ip("route", "del", "unreachable", str(cidr), check=False)


def remove_stale(cidr: ipaddress.IPv4Network) -> list[str]:
    """Sandboxes in ``cidr`` that a killed process node left behind, removed."""
    removed: list[str] = []
    if not NETNS_DIR.is_dir():
        return removed
    for entry in NETNS_DIR.iterdir():
        if not entry.name.startswith(NETNS_PREFIX):
            continue
        with contextlib.suppress(ValueError):
            address = ipaddress.IPv4Address(int(entry.name.removeprefix(NETNS_PREFIX), 16))
            if address in cidr:
                Sandbox(address).destroy()
                removed.append(str(address))
    return removed
