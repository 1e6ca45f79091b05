"""A node whose pods run as local processes: a small kubelet for tests.

It keeps its Node Ready (status conditions and a Lease in kube-node-lease, renewed
every 10 s, as the kubelet does), watches the pods bound to it, and gives each one a
``PodWorker``. KWOK keeps every other node; this node has no KWOK annotation.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import signal
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from .pod_worker import NODE_ENV_MARKER, NodeContext, PodWorker, node_cgroup, now_rfc3339
from .policy import PolicyEnforcer
from .sandbox import guard_network, release_network, remove_stale
from .spec import API_TIMEOUT

log = logging.getLogger("process-node")

LEASE_SECONDS = 40
RENEW_SECONDS = 10.0
STATUS_SECONDS = 60.0


def addresses(node: client.V1Node) -> list[client.V1NodeAddress]:
    return list((node.status.addresses if node.status else None) or [])


@dataclass
class AddressPool:
    """Pod addresses of the node's /24, handed out round robin so a new pod does not
    take the address a client may still hold for the one that just left."""

    cidr: ipaddress.IPv4Network
    _free: list[ipaddress.IPv4Address] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._free = list(self.cidr.hosts())[1:]  # .1 stays unused, like a gateway

    def take(self) -> ipaddress.IPv4Address:
        with self._lock:
            if not self._free:
                raise RuntimeError(f"no free pod address in {self.cidr}")
            return self._free.pop(0)

    def give_back(self, address: ipaddress.IPv4Address) -> None:
        with self._lock:
            if address not in self._free:
                self._free.append(address)


class ProcessNode:
    def __init__(
        self,
        api: client.ApiClient,
        name: str,
        cidr: ipaddress.IPv4Network,
        root: Path,
        images: dict[str, Path],
        backoff_initial: float,
        cpus: float,
        enforcer: PolicyEnforcer | None = None,
    ) -> None:
        self.api = api
        self.name = name
        self.cidr = cidr
        self.addresses = AddressPool(cidr)
        self.stop = threading.Event()
        self.registered = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        node = client.CoreV1Api(api).read_node(name, _request_timeout=API_TIMEOUT)
        host_ip = next(
            (a.address for a in addresses(node) if a.type == "InternalIP"),
            "127.0.0.1",
        )
        self.ctx = NodeContext(
            name=name,
            host_ip=host_ip,
            api=api,
            root=root / name,
            images=images,
            release_address=self.addresses.give_back,
            kubernetes_service=kubernetes_service(api),
            api_server=api_server_address(api),
            backoff_initial=backoff_initial,
            cgroup=node_cgroup(name, cpus),
            enforcer=enforcer,
        )

    # -- node liveness ---------------------------------------------------------------
    def _ready_condition(self) -> dict[str, Any]:
        now = now_rfc3339()
        return {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "openmodel process node is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    def _post_status(self) -> None:
        core = client.CoreV1Api(self.api)
        node = core.read_node(self.name, _request_timeout=API_TIMEOUT)
        conditions = (node.status.conditions if node.status else None) or []
        before = next((c for c in conditions if c.type == "Ready"), None)
        ready = self._ready_condition()
        if before is not None and before.status == "True" and before.last_transition_time:
            ready["lastTransitionTime"] = before.last_transition_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        core.patch_node_status(
            self.name,
            {
                "status": {
                    "conditions": [ready],
                    "nodeInfo": {
                        "kubeletVersion": "openmodel-process-node",
                        "containerRuntimeVersion": "process://",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                    },
                }
            },
            _request_timeout=API_TIMEOUT,
        )

    def _renew_lease(self) -> None:
        coord = client.CoordinationV1Api(self.api)
        body = {
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": datetime_micro(),
            },
        }
        try:
            coord.patch_namespaced_lease(
                self.name, "kube-node-lease", body, _request_timeout=API_TIMEOUT
            )
        except ApiException as e:
            if e.status != 404:
                raise
            # A dict body is sent as it is; the generated signature names the model only.
            coord.create_namespaced_lease(
                "kube-node-lease",
                body,  # type: ignore[arg-type]
                _request_timeout=API_TIMEOUT,
            )

    def _heartbeat(self) -> None:
        last_status = 0.0
        while not self.stop.is_set():
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= STATUS_SECONDS:
                    self._post_status()
                    last_status = time.monotonic()
            except Exception:
                # A timeout from a busy API server must not end the heartbeat: the node
                # would stay NotReady for good (seen: a ReadTimeoutError killed this thread).
                log.exception("node %s: heartbeat failed; retrying", self.name)
                last_status = 0.0  # post Ready again as soon as the API answers
            self.stop.wait(RENEW_SECONDS)

    # -- pods ----------------------------------------------------------------------------
    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.gone()
            return
        if worker is not None:
            worker.update(pod)
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        if pod["metadata"].get("deletionTimestamp"):
            # Never started here (e.g. a process node restart): nothing to stop.
            client.CoreV1Api(self.api).delete_namespaced_pod(
                pod["metadata"]["name"],
                pod["metadata"]["namespace"],
                grace_period_seconds=0,
                _request_timeout=API_TIMEOUT,
            )
            return
        worker = PodWorker(self.ctx, pod, self.addresses.take())
        self.workers[uid] = worker
        worker.start()

    def _reap(self) -> None:
        for uid, worker in list(self.workers.items()):
            if not worker.is_alive():
                del self.workers[uid]

    def _watch_pods(self) -> None:
        # A kubelet that stops watching leaves its pods unmanaged: nothing ends this loop
        # but shutdown; an unexpected error is logged with its traceback and retried.
        # The watch has a client (connection pool) of its own: a stream stopped mid-body
        # must never hand its connection to a pod worker's next request.
        watch_api = client.ApiClient(self.api.configuration)
        while not self.stop.is_set():
            try:
                self._watch_once(watch_api)
            except Exception:
                log.exception("node %s: pod watch failed; watching again", self.name)
                self.stop.wait(1.0)

    def _watch_once(self, watch_api: client.ApiClient) -> None:
        core = client.CoreV1Api(watch_api)
        selector = f"spec.nodeName={self.name}"
        if self.stop.is_set():
            return
        listed = watch_api.sanitize_for_serialization(
            core.list_pod_for_all_namespaces(field_selector=selector, _request_timeout=API_TIMEOUT)
        )
        for pod in listed["items"]:
            self._handle("ADDED", pod)
        # Deleted while no watch was open: the list no longer has them.
        present = {pod["metadata"]["uid"] for pod in listed["items"]}
        for uid, worker in list(self.workers.items()):
            if uid not in present:
                worker.gone()
        version = listed["metadata"]["resourceVersion"]
        stream = watch.Watch()
        try:
            for event in stream.stream(
                core.list_pod_for_all_namespaces,
                field_selector=selector,
                resource_version=version,
                timeout_seconds=30,
                _request_timeout=40,
            ):
                if self.stop.is_set():
                    break
                obj = event["raw_object"]
                if event["type"] == "ERROR":
                    break
                self._handle(event["type"], obj)
                self._reap()
        except ApiException as e:
            if e.status != 410:
                log.warning("node %s: pod watch failed: %s", self.name, e.reason)
                self.stop.wait(1.0)
        finally:
            stream.stop()
        self._reap()

    def run(self) -> None:
        for pid in kill_stale_containers(self.name):
            log.info("node %s: killed process %d a previous run left", self.name, pid)
        for address in remove_stale(self.cidr):
            log.info("node %s: removed a stale sandbox for %s", self.name, address)
        guard_network(self.cidr)
        self._post_status()
        self._renew_lease()
        threads = [
            threading.Thread(target=self._heartbeat, name=f"heartbeat-{self.name}", daemon=True),
            threading.Thread(target=self._watch_pods, name=f"pods-{self.name}", daemon=True),
        ]
        for t in threads:
            t.start()
        log.info("node %s: ready (pods in %s)", self.name, self.cidr)
        self.registered.set()
        self.stop.wait()

    def shutdown(self) -> None:
        self.stop.set()
        for worker in list(self.workers.values()):
            worker.shutdown()
        for worker in list(self.workers.values()):
            worker.join(15)
        release_network(self.cidr)
        remove_mount_points(self.ctx.root)
        if self.ctx.cgroup is not None:
            # A pod's cgroup is left when its last process outlived the pod's teardown.
            for pod in [p for p in self.ctx.cgroup.iterdir() if p.is_dir()]:
                with contextlib.suppress(OSError):
                    pod.rmdir()
            with contextlib.suppress(OSError):  # busy while a container lingers
                self.ctx.cgroup.rmdir()


def kubernetes_service(api: client.ApiClient) -> tuple[str, int]:
    """The ``kubernetes`` Service's ClusterIP and https port, which the API server
    creates itself (10.0.0.1:443 here)."""
    service = client.CoreV1Api(api).read_namespaced_service(
        "kubernetes", "default", _request_timeout=API_TIMEOUT
    )
    ports = (service.spec.ports if service.spec else None) or []
    port = next((p.port for p in ports if p.name == "https"), 443)
    return str(service.spec.cluster_ip if service.spec else ""), int(port)


def api_server_address(api: client.ApiClient) -> tuple[str, int]:
    """Where the API server listens (host and port of the kubeconfig's server URL)."""
    url = urllib.parse.urlsplit(api.configuration.host)
    if url.hostname is None:
        raise ValueError(f"no host in the API server URL {api.configuration.host!r}")
    return url.hostname, url.port or 443


def kill_stale_containers(node: str) -> list[int]:
    """SIGKILL every process whose environment marks it as a container of ``node``: what
    a SIGKILLed process node left (an engine's forked workers outlive their leader)."""
    marker = f"{NODE_ENV_MARKER}={node}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def remove_mount_points(root: Path) -> None:
    """Remove the empty mount points containers made on the host (e.g. /models/<claim>, or
    the file /dev/termination-log), innermost first, once no container of this node runs."""
    made: set[str] = set()
    for record in root.glob("pods/*/logs/*/*.created"):
        made.update(line for line in record.read_text().splitlines() if line)
    for path in sorted(made, key=lambda p: p.count("/"), reverse=True):
        point = Path(path)
        with contextlib.suppress(OSError):  # not empty, or used by someone else
            if point.is_dir():
                point.rmdir()
            elif point.stat().st_size == 0:
                point.unlink()


def datetime_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
