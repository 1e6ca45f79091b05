"""Shared by the resilience e2e tests and the perf.chaos_* and perf.soak scripts.

- `own_cluster`: a control plane of its own (about 10 s to start here), with kube-apiserver
  writing a JSON audit log (`audit.AuditLog` reads it: who wrote what, with the request
  body for Deployment writes, so a write of `spec.replicas` can be attributed), the KWOK
  node pool and the CRD.
- `Burst`: a seeded sequence of ModelDeployment creations and edits, run one operation
  at a time so that "SIGKILL after operation k" is reproducible whatever the speed.
- `world_problems`: everything that is wrong in a namespace right now: a ModelDeployment
  without exactly one Deployment and one Service it owns, a child without its owner, a
  status that does not say what the world shows (observedGeneration, Ready, Progressing,
  Degraded, replica counts), a spec edit that has not reached the Deployment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .audit import AuditedControlPlane, AuditLog
from .controlplane import ControlPlane
from .k8s import service_account_kubeconfig
from .kubeconfig import api_client_for
from .nodepool import apply_node_pool, load_node_pool, wait_nodes_ready
from .operator import ChildProcess, install_crd, load_example
from .rawapi import call, request
from .wait import wait_for

OWNER_LABEL = "openmodel.dev/model-deployment"
MD_PATH = "/apis/openmodel.dev/v1alpha1/namespaces/{ns}/modeldeployments"
PATHS = {
    "ModelDeployment": MD_PATH,
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Pod": "/api/v1/namespaces/{ns}/pods",
}
# Nodes of gpu-nodes.yaml: 2 x 8 H100 and 2 x 8 A100, so 2-GPU replicas fit 16 at a
# time; the rest wait Unschedulable (Degraded): both sides of the status code are seen.
GPU_PRODUCTS = {"nvidia-h100-80gb": "H100", "nvidia-a100-80gb": "A100"}
MAX_MODEL_LENS = (8192, 16384, 32768)
REPLICAS = (0, 1, 2)


@dataclasses.dataclass
class OwnCluster:
    plane: AuditedControlPlane
    api: client.ApiClient
    audit: AuditLog
    start_seconds: float

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig


@contextlib.contextmanager
def own_cluster(workdir: Path) -> Iterator[OwnCluster]:
    """A fresh audited control plane, the KWOK pool (no process nodes) Ready, the CRD."""
    started = time.monotonic()
    pool = load_node_pool().without_process_nodes()
    plane = AuditedControlPlane.start(workdir / "cluster", pod_network=pool.pod_network)
    try:
        api = api_client_for(plane.kubeconfig)
        api.user_agent = "openmodel-resilience"
        wait_nodes_ready(api, apply_node_pool(api, pool.with_pod_network(plane.pod_network)))
        install_crd(api)
        yield OwnCluster(plane, api, AuditLog(plane.audit_log_path), time.monotonic() - started)
    finally:
        plane.stop()


OPERATOR_NAMESPACE = "openmodel-system"


def operator_identity(api: client.ApiClient, name: str, directory: Path) -> Path:
    """A kubeconfig for ServiceAccount openmodel-system/`name`, bound to cluster-admin, so
    that the audit log tells this operator's requests from every other client's."""
    with contextlib.suppress(ApiException):
        create_namespace(api, OPERATOR_NAMESPACE)
    request(
        api,
        "POST",
        f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
    )
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"resilience-{name}"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": OPERATOR_NAMESPACE}],
    }
    request(api, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
    path = directory / f"{name}.kubeconfig"
    return service_account_kubeconfig(api, OPERATOR_NAMESPACE, name, path, 4 * 3600)


def sa_user(name: str) -> str:
    return f"system:serviceaccount:{OPERATOR_NAMESPACE}:{name}"


# -- API access (raw JSON, independent of the operator's own client code) -------------


def list_items(api: client.ApiClient, kind: str, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = request(api, "GET", PATHS[kind].format(ns=namespace))["items"]
    return items


def create_namespace(api: client.ApiClient, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    request(api, "POST", "/api/v1/namespaces", body)


def delete_namespace(api: client.ApiClient, name: str) -> None:
    with contextlib.suppress(ApiException):
        request(api, "DELETE", f"/api/v1/namespaces/{name}")


# -- the burst -----------------------------------------------------------------------


def md_body(name: str, namespace: str, rng: random.Random) -> dict[str, Any]:
    body = load_example("llama70b-awq.yaml", namespace)
    body["metadata"]["name"] = name
    body["spec"]["gpu"] = {"type": rng.choice(sorted(GPU_PRODUCTS)), "count": 2}
    body["spec"]["replicas"] = rng.choice(REPLICAS)
    body["spec"]["maxModelLen"] = rng.choice(MAX_MODEL_LENS)
    return body


def random_edit(rng: random.Random) -> dict[str, Any]:
    """A merge patch of one spec field the Deployment must then show."""
    field = rng.choice(("replicas", "maxModelLen", "gpu"))
    if field == "replicas":
        return {"spec": {"replicas": rng.choice(REPLICAS)}}
    if field == "maxModelLen":
        return {"spec": {"maxModelLen": rng.choice(MAX_MODEL_LENS)}}
    return {"spec": {"gpu": {"type": rng.choice(sorted(GPU_PRODUCTS))}}}


@dataclasses.dataclass(frozen=True)
class Operation:
    verb: str  # "create" or "edit"
    name: str
    body: dict[str, Any]

    def run(self, api: client.ApiClient, namespace: str, timeout: float = 30.0) -> None:
        path = MD_PATH.format(ns=namespace)
        if self.verb == "create":
            request(api, "POST", path, self.body, timeout=timeout)
        else:
            request(
                api,
                "PATCH",
                f"{path}/{self.name}",
                self.body,
                content_type="application/merge-patch+json",
                timeout=timeout,
            )


def burst(count: int, edits: int, namespace: str, rng: random.Random) -> list[Operation]:
    """`count` creations and `edits` edits of already created ModelDeployments, shuffled
    (an edit always after its object's creation)."""
    names = [f"md-{i:03d}" for i in range(count)]
    ops = [Operation("create", n, md_body(n, namespace, rng)) for n in names]
    for _ in range(edits):
        # Insert after a random creation; edit one of the objects created by then.
        at = rng.randrange(1, len(ops) + 1)
        created = [op.name for op in ops[:at] if op.verb == "create"]
        ops.insert(at, Operation("edit", rng.choice(created), random_edit(rng)))
    return ops


# -- the world -----------------------------------------------------------------------


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {r.get("uid", "") for r in refs if r.get("kind") == "ModelDeployment"}


def _conditions(md: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (md.get("status") or {}).get("conditions") or []}


def _unschedulable(pods: Sequence[Mapping[str, Any]]) -> bool:
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable":
                return True
    return False


def md_problems(
    md: Mapping[str, Any],
    deployments: Sequence[Mapping[str, Any]],
    services: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> list[str]:
    """What is wrong with one ModelDeployment, its children and its status."""
    meta, spec = md["metadata"], md["spec"]
    name, uid = meta["name"], meta["uid"]
    out: list[str] = []
    deps = [d for d in deployments if uid in _owner_uids(d)]
    svcs = [s for s in services if uid in _owner_uids(s)]
    if len(deps) != 1 or len(svcs) != 1:
        return [f"{name}: {len(deps)} Deployment(s) and {len(svcs)} Service(s) it owns"]
    dep = deps[0]
    dspec, dstatus = dep["spec"], dep.get("status") or {}
    status = md.get("status") or {}
    gen = meta.get("generation")
    if status.get("observedGeneration") != gen:
        out.append(f"{name}: observedGeneration {status.get('observedGeneration')} != {gen}")
    # With spec.autoscaling the autoscaler owns the Deployment's replicas.
    if spec.get("autoscaling") is None and dspec.get("replicas") != spec.get("replicas"):
        out.append(f"{name}: Deployment replicas {dspec.get('replicas')} != {spec['replicas']}")
    container = dspec["template"]["spec"]["containers"][0]
    if spec.get("maxModelLen") is not None:
        args = container.get("args") or []
        if str(spec["maxModelLen"]) not in args:
            out.append(f"{name}: maxModelLen {spec['maxModelLen']} not in the engine args")
    product = GPU_PRODUCTS.get(spec["gpu"]["type"])
    if product and product not in json.dumps(dspec["template"]["spec"].get("affinity")):
        out.append(f"{name}: the Deployment is not placed on {product} nodes")
    want = int(dspec.get("replicas", 1))
    rolled_out = (
        dstatus.get("observedGeneration", 0) >= dep["metadata"].get("generation", 0)
        and int(dstatus.get("updatedReplicas", 0)) >= want
        and int(dstatus.get("readyReplicas", 0)) >= want
    )
    mine = [p for p in pods if (p["metadata"].get("labels") or {}).get(OWNER_LABEL) == name]
    expected = {
        # At zero replicas too: ScaledToZero is Ready (healthy and idle; docs/gitops.md).
        "Ready": "True" if rolled_out else "False",
        "Progressing": "False" if rolled_out else "True",
        "Degraded": "True" if _unschedulable(mine) else "False",
    }
    conditions = _conditions(md)
    for type_, value in expected.items():
        cond = conditions.get(type_)
        if cond is None:
            out.append(f"{name}: no {type_} condition")
        elif cond.get("status") != value or cond.get("observedGeneration") != gen:
            out.append(
                f"{name}: {type_}={cond.get('status')} ({cond.get('reason')}, generation "
                f"{cond.get('observedGeneration')}); the world says {value} (generation {gen})"
            )
    if int(status.get("readyReplicas", -1)) != int(dstatus.get("readyReplicas", 0)):
        out.append(
            f"{name}: status.readyReplicas {status.get('readyReplicas')} != the "
            f"Deployment's {dstatus.get('readyReplicas', 0)}"
        )
    return out


def world_problems(api: client.ApiClient, namespace: str) -> list[str]:
    """Everything wrong in `namespace` now ([] when converged); orphans included."""
    mds = list_items(api, "ModelDeployment", namespace)
    deployments = list_items(api, "Deployment", namespace)
    services = list_items(api, "Service", namespace)
    pods = list_items(api, "Pod", namespace)
    live = {m["metadata"]["uid"] for m in mds if not m["metadata"].get("deletionTimestamp")}
    out: list[str] = []
    for kind, children in (("Deployment", deployments), ("Service", services)):
        for child in children:
            if OWNER_LABEL not in (child["metadata"].get("labels") or {}):
                continue
            if not _owner_uids(child) & live:
                out.append(f"orphan {kind} {child['metadata']['name']}")
    for md in mds:
        if md["metadata"].get("deletionTimestamp"):
            continue
        out += md_problems(md, deployments, services, pods)
    return out


def wait_converged(
    api: client.ApiClient,
    namespaces: Sequence[str],
    deadline: float,
    *,
    alive: Callable[[], None] = lambda: None,
    interval: float = 0.5,
) -> float:
    """Seconds until no namespace shows a problem; raises AssertionError naming what is
    still wrong after `deadline` seconds. `alive` raises when a process died meanwhile."""
    started = time.monotonic()
    problems: list[str] = []
    while True:
        alive()
        problems = []
        for ns in namespaces:
            problems += world_problems(api, ns)
        if not problems:
            return time.monotonic() - started
        if time.monotonic() - started > deadline:
            shown = "\n  ".join(problems[:15])
            raise AssertionError(
                f"not converged after {deadline:.0f}s: {len(problems)} problem(s):\n  {shown}"
            )
        time.sleep(interval)


def sigkill(child: ChildProcess) -> None:
    """SIGKILL a test-started process and its group at once (no grace), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, signal.SIGKILL)
    child.process.wait(timeout=10)


# -- one chaos round: a burst with SIGKILLs of the operator ---------------------------


@dataclasses.dataclass
class KillRound:
    namespace: str
    operations: int
    kill_after: list[int]  # operation numbers (1-based) after which the operator is killed
    burst_seconds: float = float("nan")
    restart_seconds: list[float] = dataclasses.field(default_factory=list)
    converge_seconds: float = float("nan")  # from the burst's last operation


def kill_schedule(rng: random.Random, rounds: int, kills: int, operations: int) -> list[list[int]]:
    """Per round, `kills` distinct operation numbers to SIGKILL the operator after."""
    return [sorted(rng.sample(range(1, operations + 1), kills)) for _ in range(rounds)]


def run_kill_round(
    api: client.ApiClient,
    ops: Sequence[Operation],
    round_: KillRound,
    current: Callable[[], ChildProcess],
    restart: Callable[[], ChildProcess],
    deadline: float,
) -> KillRound:
    """Run `ops` one at a time; after each operation named in `round_.kill_after`,
    SIGKILL the operator (`current()`) and start a new one (`restart`) in a thread while
    the burst goes on. Then wait until the namespace has converged."""
    restarting: threading.Thread | None = None
    failures: list[BaseException] = []

    def restart_timed() -> None:
        started = time.monotonic()
        try:
            restart()
        except BaseException as e:  # re-raised below, in the caller's thread
            failures.append(e)
            return
        round_.restart_seconds.append(time.monotonic() - started)

    started = time.monotonic()
    for number, op in enumerate(ops, 1):
        op.run(api, round_.namespace)
        if number in round_.kill_after:
            if restarting is not None:
                restarting.join()  # each kill hits an operator that is up
            sigkill(current())
            restarting = threading.Thread(target=restart_timed, name="operator-restart")
            restarting.start()
    round_.burst_seconds = time.monotonic() - started
    if restarting is not None:
        restarting.join()
    if failures:
        raise failures[0]

    def alive() -> None:
        child = current()
        if not child.alive():
            raise AssertionError(f"the operator exited:\n{child.log_tail()}")

    ended = started + round_.burst_seconds
    wait_converged(api, [round_.namespace], deadline, alive=alive)
    round_.converge_seconds = time.monotonic() - ended
    return round_


# -- API outages: kube-apiserver or etcd restarted while edits go on -----------------


@dataclasses.dataclass
class Editor:
    """Edits random ModelDeployments of one namespace, one request at a time, in a
    thread; a request that fails (the API is down) is counted, not retried."""

    api: client.ApiClient
    namespace: str
    names: Sequence[str]
    rng: random.Random
    interval: float = 0.1
    # With etcd down, kube-apiserver holds a request up to a minute: give up sooner.
    timeout: float = 2.0
    ok: int = 0
    failed: int = 0
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Editor:
        # The client's own retries of refused connections would fill the log.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="editor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            op = Operation("edit", self.rng.choice(self.names), random_edit(self.rng))
            try:
                op.run(self.api, self.namespace, timeout=self.timeout)
                self.ok += 1
            except (ApiException, urllib3.exceptions.HTTPError, OSError):
                # Refused, reset, 503 while starting: the API being down is the test.
                self.failed += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


@dataclasses.dataclass
class Outage:
    component: str
    operator_pid: int
    down_seconds: float = float("nan")  # stop -> the component healthy again
    api_back_seconds: float = float("nan")  # component started -> kube-apiserver /readyz
    converge_after_api_seconds: float = float("nan")
    converge_after_last_edit_seconds: float = float("nan")
    edits_failed: int = 0
    edits_after: int = 0


def api_ready(api: client.ApiClient) -> bool:
    try:
        call(api, "GET", "/readyz", accept="text/plain", timeout=2)
        return True
    except (ApiException, urllib3.exceptions.HTTPError, OSError):
        return False


def run_outage(
    plane: ControlPlane,
    api: client.ApiClient,
    operator: ChildProcess,
    editor: Editor,
    component: str,
    *,
    failed_edits: int,
    edits_after: int,
    deadline: float,
) -> Outage:
    """Stop `component` (SIGTERM) while `editor` runs, keep it down until the editor has
    seen `failed_edits` failures, start it again on the same ports and data, let
    `edits_after` edits succeed, stop the editor and wait for convergence. The operator
    must be the same process throughout."""
    outage = Outage(component, operator.process.pid)
    editor.start()
    wait_for(lambda: editor.ok >= 3, 30, "edits to go through before the outage")
    failed_before = editor.failed
    stopped = time.monotonic()
    plane.stop_component(component)
    wait_for(
        lambda: editor.failed - failed_before >= failed_edits,
        60,
        f"{failed_edits} edits to fail with {component} down",
    )
    plane.start_component(component)
    outage.down_seconds = time.monotonic() - stopped
    started = time.monotonic()
    wait_for(lambda: api_ready(api), 60, "kube-apiserver /readyz after the restart")
    api_back = time.monotonic()
    outage.api_back_seconds = api_back - started
    ok_at_back = editor.ok
    wait_for(
        lambda: editor.ok - ok_at_back >= edits_after, 60, f"{edits_after} edits after the outage"
    )
    editor.stop()
    last_edit = time.monotonic()
    outage.edits_failed = editor.failed - failed_before
    outage.edits_after = editor.ok - ok_at_back

    def same_operator() -> None:
        if not operator.alive():
            raise AssertionError(f"the operator exited:\n{operator.log_tail()}")

    wait_converged(api, [editor.namespace], deadline, alive=same_operator)
    outage.converge_after_api_seconds = time.monotonic() - api_back
    outage.converge_after_last_edit_seconds = time.monotonic() - last_edit
    if operator.process.pid != outage.operator_pid or not operator.alive():
        raise AssertionError("the operator process changed")
    return outage
