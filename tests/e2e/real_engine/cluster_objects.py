"""Cluster objects the real-engine tests need: the tiny model as a PersistentVolume
bound to the claim a ModelDeployment names, and the list of Ready engine pods."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness import Cluster, NotYet, create_namespace, delete_namespace, wait_for
from harness.k8s import name_of, pod_ip, pod_ready

CLAIM = "tiny"


def model_volume(api: client.ApiClient, namespace: str, model_dir: Path) -> str:
    """A hostPath PV holding ``model_dir``'s parent, bound to PVC ``tiny`` in
    ``namespace``; returns the ModelDeployment model URI ``pvc://tiny/<dir name>``.

    The PV is pre-bound (claimRef) and the claim names it (volumeName), so the PV
    controller binds them at once. The PV is removed with the namespace's claim by
    ``persistentVolumeReclaimPolicy: Delete``... which hostPath does not support, so it
    is Retain and deleted by ``delete_model_volumes``.
    """
    core = client.CoreV1Api(api)
    pv_name = f"{CLAIM}-{namespace}"
    # Dict bodies are sent as they are; the generated signatures name the models only.
    core.create_persistent_volume(
        {  # type: ignore[arg-type]
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {"openmodel.test/model-volume": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany", "ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(model_dir.parent), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": CLAIM},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {  # type: ignore[arg-type]
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )

    def bound() -> bool | NotYet:
        status = core.read_namespaced_persistent_volume_claim(CLAIM, namespace).status
        phase = status.phase if status else None
        return phase == "Bound" or NotYet(phase)

    wait_for(bound, 30, f"PVC {namespace}/{CLAIM} to bind to PV {pv_name}")
    return f"pvc://{CLAIM}/{model_dir.name}"


def delete_model_volumes(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for pv in core.list_persistent_volume(label_selector="openmodel.test/model-volume").items:
        try:
            core.delete_persistent_volume(name_of(pv))
        except ApiException as e:
            if e.status != 404:
                raise


def ready_pods(core: client.CoreV1Api, namespace: str, name: str) -> list[client.V1Pod]:
    """The ModelDeployment's pods that are Ready and not being deleted."""
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"openmodel.dev/model-deployment={name}"
    ).items
    return [p for p in pods if pod_ip(p) and pod_ready(p)]


# How long an earlier module's engine pods may take to leave the process nodes: a vLLM
# drains for up to its grace period after SIGTERM.
GPU_RELEASE_SECONDS = 120


def wait_for_free_gpus(api: client.ApiClient, nodes: list[str]) -> None:
    """Wait until no pod on the process nodes holds a GPU: an earlier module's engines,
    whose namespace is being deleted, leave while they drain, and a new engine created
    meanwhile would be reported Unschedulable."""
    core = client.CoreV1Api(api)

    def holders() -> list[str]:
        found: list[str] = []
        for node in nodes:
            pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
            for pod in pods:
                if pod.status and pod.status.phase in ("Succeeded", "Failed"):
                    continue
                containers = pod.spec.containers if pod.spec else []
                requests = [(c.resources.requests or {}) if c.resources else {} for c in containers]
                if any(int(r.get("nvidia.com/gpu", 0)) for r in requests):
                    found.append(f"{name_of(pod)} on {node}")
        return found

    wait_for(
        lambda: not holders() or NotYet(holders()),
        GPU_RELEASE_SECONDS,
        "the process nodes' GPUs to be free of earlier modules' engines",
    )


@contextmanager
def engine_namespace(
    api: client.ApiClient, cluster: Cluster, prefix: str, model_dir: Path | None = None
) -> Iterator[str]:
    """A namespace for real-engine pods (failing at once when the process nodes cannot
    run here), with ``model_dir`` bound as claim ``tiny`` when given; deleted afterwards,
    with the model volumes."""
    cluster.require_process_nodes()
    wait_for_free_gpus(api, [name for name, _ in cluster.pool.process_nodes()])
    namespace = create_namespace(api, prefix)
    if model_dir is not None:
        model_volume(api, namespace, model_dir)
    yield namespace
    delete_namespace(api, namespace)
    delete_model_volumes(api)
