"""The test cluster itself: real scheduling onto simulated GPU nodes, pod IPs a
local process can serve on, RBAC for ServiceAccount tokens, and the harness's
own failure reporting. Each test states what would make it fail."""

from __future__ import annotations

import http.server
import ipaddress
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from harness import (
    GPU_RESOURCE,
    Cluster,
    ComponentError,
    NotYet,
    binaries,
    describe_namespace,
    pod_summary,
    service_account_kubeconfig,
    wait_for,
)
from harness.launcher import Launch, launch

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
POD_TIMEOUT = 30.0


def _container(gpus: int = 0, cpu: str = "100m") -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": "64Mi"}}
    if gpus:
        resources["limits"] = {GPU_RESOURCE: str(gpus)}
    return {
        "name": "engine",
        "image": "registry.k8s.io/pause:3.10",
        "ports": [{"containerPort": 8000}],
        "resources": resources,
    }


def _pod(name: str, *, gpus: int = 0, tolerate_gpu: bool, selector: dict[str, str] | None = None):
    spec: dict[str, Any] = {"containers": [_container(gpus)]}
    if tolerate_gpu:
        spec["tolerations"] = [GPU_TOLERATION]
    if selector:
        spec["nodeSelector"] = selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _pods(core: client.CoreV1Api, namespace: str, selector: str = "") -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=selector).items


def _all_running(core: client.CoreV1Api, namespace: str, selector: str, count: int):
    def check() -> list[client.V1Pod] | NotYet:
        pods = _pods(core, namespace, selector)
        running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        if len(pods) == count and len(running) == count:
            return pods
        return NotYet([pod_summary(p) for p in pods] or "no pods")

    return check


def _unschedulable(core: client.CoreV1Api, namespace: str, name: str):
    """The PodScheduled=False/Unschedulable condition once the scheduler has set it."""

    def check() -> client.V1PodCondition | NotYet:
        pod = core.read_namespaced_pod(name, namespace)
        condition = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        if condition is not None and condition.status == "False":
            return condition
        return NotYet(pod_summary(pod))

    return check


def test_gpu_deployment_runs_only_on_h100_nodes(
    api_client: client.ApiClient, namespace: str, cluster: Cluster
) -> None:
    replicas = 4  # 8 GPUs: fits the two H100 nodes (16 GPUs) in several ways
    labels = {"app": "llm"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llm"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [_container(gpus=2)],
                    "tolerations": [GPU_TOLERATION],
                    "nodeSelector": {"nvidia.com/gpu.product": H100},
                },
            },
        },
    }
    client.AppsV1Api(api_client).create_namespaced_deployment(namespace, deployment)
    core = client.CoreV1Api(api_client)

    pods = wait_for(
        _all_running(core, namespace, "app=llm", replicas),
        POD_TIMEOUT,
        lambda: f"{replicas} Running pods\n{describe_namespace(api_client, namespace)}",
    )

    h100_nodes = set(cluster.pool.node_names("h100"))
    placed = {p.metadata.name: p.spec.node_name for p in pods}
    assert set(placed.values()) <= h100_nodes, f"pods outside {sorted(h100_nodes)}: {placed}"
    for node_name in set(placed.values()):
        node = core.read_node(node_name)
        assert node.metadata.labels["nvidia.com/gpu.product"] == H100
        assert node.status.allocatable[GPU_RESOURCE] == "8"


def test_pod_asking_for_more_gpus_than_any_node_has_is_unschedulable(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, _pod("greedy", gpus=9, tolerate_gpu=True))

    condition = wait_for(
        _unschedulable(core, namespace, "greedy"),
        POD_TIMEOUT,
        lambda: f"greedy to be reported unschedulable\n{describe_namespace(api_client, namespace)}",
    )

    assert condition.reason == "Unschedulable", condition
    assert f"Insufficient {GPU_RESOURCE}" in condition.message, condition.message
    pod = core.read_namespaced_pod("greedy", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name, pod_summary(pod)


def test_pods_without_toleration_land_on_cpu_nodes_only(
    api_client: client.ApiClient, namespace: str, cluster: Cluster
) -> None:
    # The GPU nodes have 3-6x the CPU of the CPU nodes, so the scheduler's
    # least-allocated scoring would pick them first if the taint did not apply.
    core = client.CoreV1Api(api_client)
    count = 6
    for index in range(count):
        pod = _pod(f"plain-{index}", tolerate_gpu=False)
        pod["metadata"]["labels"] = {"app": "plain"}
        core.create_namespaced_pod(namespace, pod)

    pods = wait_for(
        _all_running(core, namespace, "app=plain", count),
        POD_TIMEOUT,
        lambda: f"{count} Running pods\n{describe_namespace(api_client, namespace)}",
    )

    cpu_nodes = set(cluster.pool.node_names("cpu"))
    placed = {p.metadata.name: p.spec.node_name for p in pods}
    assert set(placed.values()) <= cpu_nodes, f"pods outside {sorted(cpu_nodes)}: {placed}"


def test_pod_selecting_gpu_nodes_without_toleration_stays_pending(
    api_client: client.ApiClient, namespace: str, cluster: Cluster
) -> None:
    core = client.CoreV1Api(api_client)
    selector = {"nvidia.com/gpu.product": H100}
    core.create_namespaced_pod(
        namespace, _pod("intolerant", gpus=1, tolerate_gpu=False, selector=selector)
    )

    condition = wait_for(
        _unschedulable(core, namespace, "intolerant"),
        POD_TIMEOUT,
        lambda: f"intolerant to be unschedulable\n{describe_namespace(api_client, namespace)}",
    )

    # The scheduler names no taint key ("had untolerated taint(s)"), so check
    # that exactly the pool's GPU nodes were rejected for their taint.
    gpu_nodes = sum(g.count for g in cluster.pool.groups if g.gpu is not None)
    assert condition.reason == "Unschedulable", condition
    assert f"{gpu_nodes} node(s) had untolerated taint" in condition.message, condition.message
    for name in cluster.pool.node_names("h100"):
        taints = core.read_node(name).spec.taints or []
        assert [(t.key, t.effect) for t in taints] == [(GPU_RESOURCE, "NoSchedule")], taints


@pytest.fixture
def http_server_on() -> Iterator[Any]:
    """Start a tiny HTTP server on (ip, port) that answers with ``body``."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(ip: str, port: int, body: bytes) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer((ip, port), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_pod_ip_is_a_local_address_a_process_can_serve_on(
    api_client: client.ApiClient, namespace: str, cluster: Cluster, http_server_on: Any
) -> None:
    core = client.CoreV1Api(api_client)
    pod = _pod(
        "engine", gpus=1, tolerate_gpu=True, selector={"nvidia.com/gpu.product": "NVIDIA-L4"}
    )
    pod["metadata"]["labels"] = {"app": "engine"}
    core.create_namespaced_pod(namespace, pod)
    (running,) = wait_for(
        _all_running(core, namespace, "app=engine", 1),
        POD_TIMEOUT,
        lambda: f"engine Running with an IP\n{describe_namespace(api_client, namespace)}",
    )
    pod_ip = running.status.pod_ip
    node = core.read_node(running.spec.node_name)
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(node.spec.pod_cidr), (
        f"pod IP {pod_ip} outside its node's podCIDR {node.spec.pod_cidr}"
    )

    # Simulate the engine inside the pod: bind the pod's own IP, then scrape it.
    body = f"hello from {running.metadata.name}".encode()
    http_server_on(pod_ip, 8000, body)
    with urllib.request.urlopen(f"http://{pod_ip}:8000/metrics", timeout=5) as response:
        assert response.read() == body


def test_service_account_token_without_role_is_forbidden(
    api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    kubeconfig = service_account_kubeconfig(api_client, namespace, "nobody", tmp_path / "kc")

    with config.new_client_from_config(config_file=str(kubeconfig)) as as_sa:
        # The token authenticates (so a 403 below is RBAC, not a bad token) ...
        review = client.AuthenticationV1Api(as_sa).create_self_subject_review({})
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:nobody"
        # ... but may not list pods.
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(as_sa).list_namespaced_pod(namespace)
        assert denied.value.status == 403, denied.value

        # Granting exactly that permission makes the same call succeed.
        rbac = client.RbacAuthorizationV1Api(api_client)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "nobody-reads-pods"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pod-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
            },
        )

        def can_list() -> bool | NotYet:
            try:
                client.CoreV1Api(as_sa).list_namespaced_pod(namespace)
            except ApiException as error:
                if error.status == 403:
                    return NotYet("403 Forbidden")
                raise
            return True

        wait_for(can_list, 10, "the RoleBinding to take effect")


def test_component_that_fails_to_start_is_named_with_its_log(tmp_path: Path) -> None:
    kwok = str(binaries.require_bin_dir() / "kwok")
    broken = Launch(
        "kwok-broken", 1, lambda p: [kwok, "--no-such-flag"], lambda p: f"http://127.0.0.1:{p[0]}"
    )

    with pytest.raises(ComponentError) as failure:
        launch([broken], tmp_path, owned=True)

    message = str(failure.value)
    assert message.startswith("kwok-broken: exited with status"), message
    assert "no-such-flag" in message, message  # the log tail is part of the error
