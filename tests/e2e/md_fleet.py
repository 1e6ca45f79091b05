"""Many small ModelDeployments at once, for the resilience tests: create them, wait for
all of them to converge, and list their children.

Each one is a 4-bit 7B model on one GPU, alternating H100 and A100 nodes, so twenty
fit the KWOK pool (2 x 8 H100, 2 x 8 A100) with room to spare.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from harness import NotYet, describe_namespace, wait_for
from harness.k8s import HasMetadata, as_object, name_of
from openmodel_fixtures import GROUP, PLURAL, VERSION, condition, create_md

OWNER_LABEL = "openmodel.dev/model-deployment"
GPU_TYPES = ("nvidia-h100-80gb", "nvidia-a100-80gb")


def small_md(namespace: str, name: str, gpu_type: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4",
            "engine": "vllm",
            "quantization": "gptq",
            "gpu": {"type": gpu_type, "count": 1},
            "replicas": 1,
            "maxModelLen": 8192,
        },
    }


def create_fleet(api: client.ApiClient, namespace: str, count: int) -> list[str]:
    names = [f"md-{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        create_md(api, small_md(namespace, name, GPU_TYPES[i % len(GPU_TYPES)]))
    return names


def list_mds(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )
    return list(as_object(listed)["items"])


def converged(md: Mapping[str, Any]) -> bool:
    """Ready on one replica for the current generation, and not Degraded."""
    status = md.get("status") or {}
    return (
        status.get("observedGeneration") == md["metadata"]["generation"]
        and condition(dict(md), "Ready").get("status") == "True"
        and condition(dict(md), "Degraded").get("status") == "False"
        and status.get("readyReplicas") == 1
    )


def wait_fleet_converged(
    api: client.ApiClient, namespace: str, names: list[str], timeout: float, log_tail: Any = None
) -> float:
    """Wait until every named ModelDeployment has converged; returns the seconds taken."""
    started = time.monotonic()

    def all_converged() -> bool | NotYet:
        mds = {md["metadata"]["name"]: md for md in list_mds(api, namespace)}
        waiting = {
            n: (mds[n].get("status") or {}).get("reason") if n in mds else "missing"
            for n in names
            if n not in mds or not converged(mds[n])
        }
        return not waiting or NotYet(f"{len(waiting)} not converged: {waiting}")

    def describe() -> str:
        text = describe_namespace(api, namespace)
        if log_tail is not None:
            text += f"\noperator log:\n{log_tail()}"
        return text

    wait_for(all_converged, timeout, describe, interval=0.5)
    return time.monotonic() - started


def owners(obj: HasMetadata) -> list[tuple[str, str, str, bool]]:
    """(kind, name, uid, controller) of each owner reference of a client model object."""
    references = (obj.metadata.owner_references if obj.metadata else None) or []
    return [(o.kind, o.name, o.uid, bool(o.controller)) for o in references]


def assert_one_child_each(
    api: client.ApiClient, namespace: str, names: list[str], *, first_rollout_only: bool = True
) -> None:
    """Exactly one Deployment and one Service per ModelDeployment, each owned by it alone;
    with `first_rollout_only`, also one ReplicaSet per Deployment (no rollout beyond the
    first) and one pod each."""
    uids = {md["metadata"]["name"]: md["metadata"]["uid"] for md in list_mds(api, namespace)}
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    deployments = apps.list_namespaced_deployment(namespace).items
    services = core.list_namespaced_service(namespace).items
    assert sorted(name_of(d) for d in deployments) == sorted(names)
    assert sorted(name_of(s) for s in services) == sorted(names)
    children: list[tuple[str, HasMetadata]] = [
        *(("Deployment", d) for d in deployments),
        *(("Service", s) for s in services),
    ]
    for kind, child in children:
        name = name_of(child)
        assert owners(child) == [("ModelDeployment", name, uids[name], True)], (
            f"{kind}/{name}: {owners(child)}"
        )
    if not first_rollout_only:
        return
    replica_sets: dict[str, list[str]] = {}
    for rs in apps.list_namespaced_replica_set(namespace).items:
        for kind, owner, _, _ in owners(rs):
            if kind == "Deployment":
                replica_sets.setdefault(owner, []).append(name_of(rs))
    assert {n: len(replica_sets.get(n, [])) for n in names} == dict.fromkeys(names, 1), replica_sets
    pods: dict[str, int] = {}
    for pod in core.list_namespaced_pod(namespace).items:
        meta = pod.metadata or client.V1ObjectMeta()
        if meta.deletion_timestamp is None:
            owner = (meta.labels or {}).get(OWNER_LABEL, "")
            pods[owner] = pods.get(owner, 0) + 1
    assert pods == dict.fromkeys(names, 1), pods
