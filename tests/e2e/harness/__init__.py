"""Test harness for openmodel's e2e tests: a real control plane as local
processes, KWOK GPU nodes, and helpers for writing cluster tests.

Installed as a package beside openmodel (pyproject.toml), shared with the benchmarks
and chaos scripts of `perf`: the operator and gateway processes (`harness.operator`),
kube-apiserver's audit log (`harness.audit`), raw API requests (`harness.rawapi`),
simulated engines (`harness.engine_fleet`), the resilience scenarios and their world
check (`harness.resilience`, `harness.failover`).

Typical use from a test (fixtures live in tests/e2e/conftest.py):

    from harness import wait_for, NotYet, pod_summary

    def test_x(api_client, namespace): ...
"""

from .cluster import Cluster, Mode, choose_mode, provide_cluster, start_local_cluster
from .controlplane import ControlPlane, stop_from_state
from .k8s import (
    create_namespace,
    delete_namespace,
    describe_namespace,
    pod_summary,
    service_account_kubeconfig,
    service_account_token,
)
from .nodepool import (
    DEFAULT_POOL_FILE,
    GPU_RESOURCE,
    NodePool,
    apply_node_pool,
    load_node_pool,
    wait_nodes_ready,
)
from .process import ComponentError
from .wait import NotYet, WaitTimeout, wait_for

__all__ = [
    "DEFAULT_POOL_FILE",
    "GPU_RESOURCE",
    "Cluster",
    "ComponentError",
    "ControlPlane",
    "Mode",
    "NodePool",
    "NotYet",
    "WaitTimeout",
    "apply_node_pool",
    "choose_mode",
    "create_namespace",
    "delete_namespace",
    "describe_namespace",
    "load_node_pool",
    "pod_summary",
    "provide_cluster",
    "service_account_kubeconfig",
    "service_account_token",
    "start_local_cluster",
    "stop_from_state",
    "wait_for",
    "wait_nodes_ready",
]
