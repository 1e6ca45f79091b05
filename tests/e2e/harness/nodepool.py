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

from .k8s import name_of
from .wait import NotYet, wait_for

DEFAULT_POOL_FILE = Path(__file__).resolve().parents[1] / "gpu-nodes.yaml"
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GROUP_LABEL = "openmodel.test/node-group"
RUNTIME_LABEL = "openmodel.test/runtime"
GPU_RESOURCE = "nvidia.com/gpu"
# Pods of process nodes (see process_node/) get addresses routed to per-pod veths, not
# loopback ones: RFC 2544's benchmarking range, a /24 per node, PROCESS_NODES_PER_POOL
# /24s per pool, indexed by the pool's leased loopback pod network.
PROCESS_POD_SPACE = ipaddress.IPv4Network("198.18.0.0/16")
PROCESS_NODES_PER_POOL = 4


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
    # "kwok" (KWOK marks pods Running) or "process" (pods run as local processes).
    runtime: str = "kwok"


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

    def without_process_nodes(self) -> NodePool:
        """The pool for a cluster where pods cannot run as local processes."""
        groups = tuple(g for g in self.groups if g.runtime != "process")
        return dataclasses.replace(self, groups=groups)

    def process_pod_cidrs(self) -> list[ipaddress.IPv4Network]:
        """The /24s of this pool's process nodes, derived from its loopback pod network
        (a /16 of 127.64.0.0/10, one per live cluster), so clusters never overlap."""
        index = (int(self.pod_network.network_address) >> 16) & 0x3F
        subnets = list(PROCESS_POD_SPACE.subnets(new_prefix=24))
        first = index * PROCESS_NODES_PER_POOL
        return subnets[first : first + PROCESS_NODES_PER_POOL]

    def process_nodes(self) -> list[tuple[str, ipaddress.IPv4Network]]:
        """(node name, pod CIDR) of every process node."""
        return [
            (n["metadata"]["name"], ipaddress.IPv4Network(n["spec"]["podCIDR"]))
            for n in self.manifests()
            if n["metadata"]["labels"].get(RUNTIME_LABEL) == "process"
        ]

    def manifests(self) -> list[dict[str, Any]]:
        """One Node manifest (metadata, spec and status) per node, in file order."""
        pod_cidrs = self.pod_network.subnets(new_prefix=24)
        process_cidrs = iter(self.process_pod_cidrs())
        node_ips = self.node_network.hosts()
        nodes = []
        for group in self.groups:
            for index in range(group.count):
                prefix = "process-" if group.runtime == "process" else self.name_prefix
                name = f"{prefix}{group.name}-{index}"
                cidrs = process_cidrs if group.runtime == "process" else pod_cidrs
                try:
                    cidr = str(next(cidrs))
                except StopIteration:
                    raise ValueError(
                        f"more than {PROCESS_NODES_PER_POOL} process nodes in the pool"
                    ) from None
                nodes.append(_node_manifest(self, group, name, cidr, str(next(node_ips))))
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
        RUNTIME_LABEL: group.runtime,
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
    annotations = {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]} if group.runtime == "kwok" else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
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


def _runtime(group: dict[str, Any]) -> str:
    runtime = str(group.get("runtime", "kwok"))
    if runtime not in ("kwok", "process"):
        raise ValueError(f"group {group.get('name')}: runtime must be kwok or process")
    return runtime


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
                runtime=_runtime(g),
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
    total = sum(g.count for g in groups if g.runtime == "kwok")
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
            # A dict body is sent as it is; the generated signature names the model only.
            core.create_node(manifest)  # type: ignore[arg-type]
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
    conditions = (node.status.conditions if node.status else None) or []
    ready = next((c for c in conditions if c.type == "Ready"), None)
    problems = []
    if ready is None or ready.status != "True":
        problems.append(f"Ready={ready.status if ready else 'absent'}")
    not_ready_taints = [
        t.key
        for t in (node.spec.taints if node.spec else None) or []
        if t.key.startswith("node.kubernetes.io/")
    ]
    if not_ready_taints:
        problems.append(f"taints {not_ready_taints}")
    return problems


def wait_nodes_ready(api: client.ApiClient, names: list[str], timeout: float = 60.0) -> None:
    """Wait until every named node is Ready and free of node.kubernetes.io/* taints."""
    core = client.CoreV1Api(api)
    wanted = set(names)

    def all_ready() -> bool | NotYet:
        nodes = {name_of(n): n for n in core.list_node().items if name_of(n) in wanted}
        pending = {name: ["absent"] for name in wanted - nodes.keys()}
        pending |= {name: p for name, node in nodes.items() if (p := _node_problems(node))}
        return True if not pending else NotYet(dict(sorted(pending.items())))

    wait_for(all_ready, timeout, f"{len(wanted)} KWOK nodes to become Ready (is kwok running?)")
