"""The simulated GPU node pool: parse ``tests/e2e/gpu-nodes.yaml``, expand it into
KWOK-managed Node manifests, create them and wait until KWOK reports them Ready.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .wait import NotYet, wait_for

DEFAULT_POOL_FILE = Path(__file__).resolve().parents[1] / "gpu-nodes.yaml"
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GROUP_LABEL = "openmodel.test/node-group"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Gpu:
    product: str
    memory_mib: int
    count: int


@dataclass(frozen=True)
class NodeGroup:
    name: str
    count: int
    cpu: str
    memory: str
    pods: int
    gpu: Gpu | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class NodePool:
    name_prefix: str
    pod_network: ipaddress.IPv4Network
    node_network: ipaddress.IPv4Network
    gpu_taint: Taint
    groups: tuple[NodeGroup, ...]

    def with_pod_network(self, network: ipaddress.IPv4Network) -> NodePool:
        """The same nodes with pod CIDRs taken from ``network``."""
        return dataclasses.replace(self, pod_network=network)

    def node_names(self, group: str | None = None) -> list[str]:
        return [
            node["metadata"]["name"]
            for node in self.manifests()
            if group is None or node["metadata"]["labels"][GROUP_LABEL] == group
        ]

    def manifests(self) -> list[dict[str, Any]]:
        """One Node manifest (metadata, spec and status) per node, in file order."""
        pod_cidrs = self.pod_network.subnets(new_prefix=24)
        node_ips = self.node_network.hosts()
        nodes = []
        for group in self.groups:
            for index in range(group.count):
                name = f"{self.name_prefix}{group.name}-{index}"
                nodes.append(
                    _node_manifest(self, group, name, str(next(pod_cidrs)), str(next(node_ips)))
                )
        return nodes


def _node_manifest(
    pool: NodePool, group: NodeGroup, name: str, pod_cidr: str, node_ip: str
) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        GROUP_LABEL: group.name,
        **group.labels,
    }
    resources = {"cpu": group.cpu, "memory": group.memory, "pods": str(group.pods)}
    taints = []
    if group.gpu is not None:
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": group.gpu.product,
            "nvidia.com/gpu.memory": str(group.gpu.memory_mib),
            "nvidia.com/gpu.count": str(group.gpu.count),
        }
        resources[GPU_RESOURCE] = str(group.gpu.count)
        taints.append(vars(pool.gpu_taint).copy())
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]},
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "taints": taints},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": node_ip},
                {"type": "Hostname", "address": name},
            ],
        },
    }


def load_node_pool(path: Path = DEFAULT_POOL_FILE) -> NodePool:
    """Parse the pool file; errors name the offending key."""
    raw = yaml.safe_load(path.read_text())
    try:
        groups = tuple(
            NodeGroup(
                name=g["name"],
                count=int(g["count"]),
                cpu=str(g["cpu"]),
                memory=str(g["memory"]),
                pods=int(g["pods"]),
                gpu=Gpu(
                    product=g["gpu"]["product"],
                    memory_mib=int(g["gpu"]["memoryMiB"]),
                    count=int(g["gpu"]["count"]),
                )
                if g.get("gpu")
                else None,
                labels={str(k): str(v) for k, v in (g.get("labels") or {}).items()},
            )
            for g in raw["groups"]
        )
        pool = NodePool(
            name_prefix=raw["namePrefix"],
            pod_network=ipaddress.IPv4Network(raw["podNetwork"]),
            node_network=ipaddress.IPv4Network(raw["nodeNetwork"]),
            gpu_taint=Taint(**raw["gpuTaint"]),
            groups=groups,
        )
    except KeyError as missing:
        raise ValueError(f"{path}: missing key {missing}") from None
    total = sum(g.count for g in groups)
    if total > 2 ** (24 - pool.pod_network.prefixlen):
        raise ValueError(f"{path}: {total} nodes do not fit /24 pod CIDRs in {pool.pod_network}")
    return pool


def apply_node_pool(api: client.ApiClient, pool: NodePool) -> list[str]:
    """Create the pool's nodes, or bring existing ones back to the file's definition."""
    core = client.CoreV1Api(api)
    names = []
    for manifest in pool.manifests():
        name = manifest["metadata"]["name"]
        try:
            core.create_node(manifest)
        except ApiException as error:
            if error.status != 409:
                raise
            core.patch_node(name, {k: manifest[k] for k in ("metadata", "spec")})
            status = {k: manifest["status"][k] for k in ("capacity", "allocatable")}
            core.patch_node_status(name, {"status": status})
        names.append(name)
    return names


def delete_node_pool(api: client.ApiClient, pool: NodePool) -> None:
    core = client.CoreV1Api(api)
    for name in pool.node_names():
        try:
            core.delete_node(name)
        except ApiException as error:
            if error.status != 404:
                raise


def _node_problems(node: client.V1Node) -> list[str]:
    ready = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
    problems = []
    if ready is None or ready.status != "True":
        problems.append(f"Ready={ready.status if ready else 'absent'}")
    not_ready_taints = [
        t.key for t in node.spec.taints or [] if t.key.startswith("node.kubernetes.io/")
    ]
    if not_ready_taints:
        problems.append(f"taints {not_ready_taints}")
    return problems


def wait_nodes_ready(api: client.ApiClient, names: list[str], timeout: float = 60.0) -> None:
    """Wait until every named node is Ready and free of node.kubernetes.io/* taints."""
    core = client.CoreV1Api(api)
    wanted = set(names)

    def all_ready() -> bool | NotYet:
        nodes = {n.metadata.name: n for n in core.list_node().items if n.metadata.name in wanted}
        pending = {name: ["absent"] for name in wanted - nodes.keys()}
        pending |= {name: p for name, node in nodes.items() if (p := _node_problems(node))}
        return True if not pending else NotYet(dict(sorted(pending.items())))

    wait_for(all_ready, timeout, f"{len(wanted)} KWOK nodes to become Ready (is kwok running?)")
