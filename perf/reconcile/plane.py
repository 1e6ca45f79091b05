"""bench_reconcile's control plane: the harness's, audited (every request but watches),
with the controllers' client limits raised and a node pool sized for the count."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from harness import load_node_pool
from harness.audit import REQUESTS_POLICY, AuditedControlPlane
from harness.launcher import Launch
from harness.nodepool import NodePool

# Both have nodes (node_pool_for sizes them), so every pod is scheduled and KWOK marks
# it Ready, and the status converges to Ready.
GPU_TYPES = ("nvidia-h100-80gb", "nvidia-a100-80gb")
GPU_GROUPS = {"nvidia-h100-80gb": "h100", "nvidia-a100-80gb": "a100"}
PODS_PER_NODE = 200  # a node's pod IPs come from its /24

# The controller-manager's client defaults to 20 requests/s (burst 30): at 5,000
# ModelDeployments its ReplicaSet and pod creates alone would take minutes, and the
# namespace deletions between steps longer. Five workers per controller likewise. The
# scheduler's default is 50/s (burst 100). kube-apiserver's defaults (400 read and 200
# mutating requests in flight, shared by API Priority and Fairness) are far above what
# 8 client threads, the operator and these controllers keep in flight, and etcd's 2 GiB
# quota above what 5,000 of each object take.
#
# The Endpoints and EndpointSlice controllers are off: KWOK gives pods loopback IPs
# (127.64.x.y, so local processes can serve them), which the API server refuses in
# Endpoints and EndpointSlices, and both controllers retry without end: ~1,200 failed
# creates and ~1,200 warning events per minute at 200 Ready pods, a core of
# kube-apiserver at a few thousand. Nothing here reads Endpoints.
SERVICE_RANGE = "10.96.0.0/16"  # 65,534 ClusterIPs
CONTROLLER_MANAGER_FLAGS = (
    # pflag appends a repeated string list to the harness's --controllers=*
    "--controllers=-endpoints-controller,-endpointslice-controller,"
    "-endpointslice-mirroring-controller",
    "--kube-api-qps=400",
    "--kube-api-burst=600",
    "--concurrent-deployment-syncs=20",
    "--concurrent-replicaset-syncs=20",
    f"--service-cluster-ip-range={SERVICE_RANGE}",
)
SCHEDULER_FLAGS = ("--kube-api-qps=400", "--kube-api-burst=600")


class BenchControlPlane(AuditedControlPlane):
    """The harness's control plane, with kube-apiserver writing a JSON audit log of every
    request but watches, so that each can be attributed to its client."""

    audit_policy = REQUESTS_POLICY
    # The harness's /24 holds 254 Services; pflag keeps the last value.
    apiserver_flags = (f"--service-cluster-ip-range={SERVICE_RANGE}",)

    def _controller_manager(self) -> Launch:
        return _with_flags(super()._controller_manager(), CONTROLLER_MANAGER_FLAGS)

    def _scheduler(self) -> Launch:
        return _with_flags(super()._scheduler(), SCHEDULER_FLAGS)


def _with_flags(base: Launch, flags: Iterable[str]) -> Launch:
    extra = list(flags)

    def argv(ports: list[int]) -> list[str]:
        return [*base.argv(ports), *extra]

    return dataclasses.replace(base, argv=argv)


def node_pool_for(count: int) -> NodePool:
    """The harness's h100 and a100 groups (labels, taint), with enough nodes of
    PODS_PER_NODE pods (2 GPUs each) for `count` ModelDeployments spread over GPU_TYPES,
    plus room for the edited one's rollouts; no other group."""
    base = load_node_pool()
    per_type = -(-count // len(GPU_TYPES)) + 8
    groups = []
    for group in base.groups:
        if group.name not in GPU_GROUPS.values() or group.gpu is None:
            continue
        groups.append(
            dataclasses.replace(
                group,
                count=-(-per_type // PODS_PER_NODE),
                pods=PODS_PER_NODE,
                gpu=dataclasses.replace(group.gpu, count=2 * PODS_PER_NODE),
            )
        )
    return dataclasses.replace(base, groups=tuple(groups))
