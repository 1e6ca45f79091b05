"""Small Kubernetes helpers shared by the e2e tests: namespaces, ServiceAccount
kubeconfigs and human-readable summaries for failure messages."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .kubeconfig import write_token_kubeconfig
from .wait import NotYet, wait_for


def create_namespace(api: client.ApiClient, prefix: str = "e2e", timeout: float = 30.0) -> str:
    """Create a uniquely named namespace and wait for its ``default`` ServiceAccount
    (pods cannot be created before the controller manager has made it)."""
    core = client.CoreV1Api(api)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    labels = {"openmodel.test/e2e": "true"}
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )

    def default_service_account() -> bool | NotYet:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as error:
            if error.status == 404:
                return NotYet("ServiceAccount default not found")
            raise
        return True

    wait_for(default_service_account, timeout, f"ServiceAccount {name}/default")
    return name


def delete_namespace(api: client.ApiClient, name: str) -> None:
    """Start deleting a namespace (the namespace controller finishes it)."""
    try:
        client.CoreV1Api(api).delete_namespace(name, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


def service_account_token(
    api: client.ApiClient, namespace: str, name: str, expiration_seconds: int = 3600
) -> str:
    """A token from the TokenRequest API (what ``kubectl create token`` does)."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
    )
    response = client.CoreV1Api(api).create_namespaced_service_account_token(
        name, namespace, request
    )
    token = response.status.token if response.status else None
    if not token:
        raise RuntimeError(f"no token in the TokenRequest answer for {namespace}/{name}")
    return token


def service_account_kubeconfig(
    api: client.ApiClient,
    namespace: str,
    name: str,
    path: Path,
    expiration_seconds: int = 3600,
) -> Path:
    """Write a kubeconfig that authenticates as ServiceAccount ``namespace/name``,
    for the same API server and CA as ``api``."""
    token = service_account_token(api, namespace, name, expiration_seconds)
    configuration = api.configuration
    ca_data = None
    if configuration.verify_ssl and configuration.ssl_ca_cert:
        ca_data = base64.b64encode(Path(configuration.ssl_ca_cert).read_bytes()).decode()
    user = f"system:serviceaccount:{namespace}:{name}"
    return write_token_kubeconfig(path, configuration.host, ca_data, token, user)


def as_object(answer: object) -> dict[str, Any]:
    """A CustomObjectsApi answer, which is the object's JSON (the generated client types it
    `object`)."""
    if not isinstance(answer, dict):
        raise TypeError(f"expected a JSON object from the API server, got {type(answer)}")
    return answer


def pod_ready(pod: client.V1Pod) -> bool:
    """The pod's Ready condition is True."""
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def node_ready(node: client.V1Node) -> bool:
    """The node's Ready condition is True."""
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def pod_ip(pod: client.V1Pod) -> str | None:
    """The pod's IP, None while it has none or once it is being deleted."""
    if pod.status is None or (pod.metadata and pod.metadata.deletion_timestamp):
        return None
    return pod.status.pod_ip or None


class HasMetadata(Protocol):
    """A kubernetes client model of an object (V1Pod, V1Deployment, ...)."""

    metadata: client.V1ObjectMeta | None


def name_of(obj: HasMetadata) -> str:
    """metadata.name of an object read from the API server (which always sets it)."""
    if obj.metadata is None or obj.metadata.name is None:
        raise ValueError(f"an object without a name: {obj}")
    return obj.metadata.name


def pod_summary(pod: client.V1Pod) -> str:
    """One line: name, phase, node, IP and the conditions that are not True."""
    status = pod.status or client.V1PodStatus()
    conditions = [
        f"{c.type}={c.status}({c.reason}: {c.message})"
        for c in status.conditions or []
        if c.status != "True"
    ]
    node = pod.spec.node_name if pod.spec else None
    return (
        f"{name_of(pod)} phase={status.phase} node={node} "
        f"ip={status.pod_ip} {' '.join(conditions)}".rstrip()
    )


def describe_namespace(api: client.ApiClient, namespace: str, max_events: int = 15) -> str:
    """Pods and the latest events of a namespace, for failure messages."""
    core = client.CoreV1Api(api)
    pods = [pod_summary(p) for p in core.list_namespaced_pod(namespace).items]
    events = sorted(
        core.list_namespaced_event(namespace).items,
        key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp),
    )[-max_events:]
    lines = [f"pods in {namespace}:", *([f"  {p}" for p in pods] or ["  (none)"]), "events:"]
    lines += [
        f"  {e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}"
        for e in events
    ]
    return "\n".join(lines)


def bind_cache_volume(
    api: client.ApiClient, namespace: str, claim: str, size: str, path: Path
) -> str:
    """A hostPath PersistentVolume at `path` standing for the ReadWriteMany volume a
    weights-cache claim asks for, bound to it in advance (no provisioner here), so the
    download Job's pod can run (KWOK completes it) and the engine follows. Returns the
    volume's name; it is cluster-wide and retained: delete it when done."""
    name = f"cache-{namespace}-{claim}"[:253]
    client.CoreV1Api(api).create_persistent_volume(
        {  # type: ignore[arg-type]
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            # The session's cleanup (real_engine.cluster_objects) finds it by this label.
            "metadata": {"name": name, "labels": {"openmodel.test/model-volume": "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    return name
