"""One pod on the process node, from binding to deletion, as a kubelet runs it.

A worker thread per pod: it sets up the network sandbox and the ``kubernetes`` Service
inside it (``service_proxy``), resolves env and volumes (configMap, secret and projected
ones written as files: ``volumes``), starts every container's command exactly as
rendered (via ``container_init``), runs the startup, readiness and liveness probes from
the spec, restarts containers that exit or fail liveness (restartPolicy, with the
kubelet's back-off: at once after the first exit, then 10 s doubling to 300 s), and
reports pod status as the kubelet does:
Ready only while readiness passes, container states with exit codes, restartCount, and
the terminated state's ``message``: what the container wrote to the file bound at its
``terminationMessagePath``, else the log tail under ``terminationMessagePolicy:
FallbackToLogsOnError``. On deletion it runs the preStop hook (``lifecycle``), sends
SIGTERM, waits the rest of the grace period, SIGKILLs, and removes the pod from the API.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .lifecycle import GRACE_EXTENSION, run_pre_stop
from .policy import PolicyEnforcer
from .probes import ProbeState, run_probe
from .sandbox import Sandbox
from .service_proxy import ServiceProxy, kubernetes_service_env, listen_in_netns
from .spec import (
    API_TIMEOUT,
    ConfigError,
    ImageError,
    Mount,
    VolumeNotReady,
    container_env,
    container_mounts,
    expand,
    image_root,
    volume_sources,
)
from .volumes import write_file_volumes

log = logging.getLogger("process-node")

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0
TERMINATION_LOG_LINES = 80
TERMINATION_LOG_BYTES = 2048
# The kubelet's default terminationMessagePath, and how much of that file it reads.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_BYTES = 4096
NODE_ENV_MARKER = "OPENMODEL_PROCESS_NODE"
HARNESS_DIR = Path(__file__).resolve().parents[2]  # tests/e2e, for `-m harness...`
# The checkout the operator's image stands for (process_nodes.operator_venv): its venv
# imports the package from here.
CHECKOUT = Path(__file__).resolve().parents[4]
_PR_SET_PDEATHSIG = 1


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


CPU_CGROUP_ROOT = Path("/sys/fs/cgroup/cpu/openmodel-process-node")


def _container_preexec(cgroup: Path | None) -> Callable[[], None]:
    """Runs in the child between fork and exec: die with the node, join the pod's cgroup."""

    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if cgroup is not None:
            with contextlib.suppress(OSError), (cgroup / "cgroup.procs").open("w") as procs:
                procs.write(str(os.getpid()))

    return preexec


def node_cgroup(name: str, cpus: float) -> Path | None:
    """A cpu cgroup (v1) for the node, capped at ``cpus`` cores (CFS quota): each process
    node stands for a machine of its own, so the engines of one node cannot take the CPU
    another node's engine loads on (on 2 cores, a serving vLLM's EngineCore and worker
    spin on both and left a loading peer 10-45 % of one core: 2026-12-02). None where
    the cpu controller is not writable."""
    path = CPU_CGROUP_ROOT / name
    period = 100_000
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "cpu.cfs_period_us").write_text(str(period))
        (path / "cpu.cfs_quota_us").write_text(str(max(1_000, int(cpus * period))))
    except OSError:
        return None
    return path


def pod_cgroup(node: Path | None, uid: str) -> Path | None:
    """A cpu cgroup for the pod inside its node's, so the node's pods get an equal share
    of its CPU, as a kubelet gives each pod its own cgroup (it weights them by CPU
    requests; engine pods request none). None without a node cgroup."""
    if node is None:
        return None
    path = node / uid
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "cpu.shares").write_text("1024")
    except OSError:
        return None
    return path


@dataclass
class NodeContext:
    """What every pod worker of one node shares."""

    name: str
    host_ip: str
    api: client.ApiClient
    root: Path
    images: Mapping[str, Path]
    release_address: Callable[[ipaddress.IPv4Address], None]
    # The `kubernetes` Service (ClusterIP, port) and the API server's own address, which
    # each pod's ServiceProxy joins.
    kubernetes_service: tuple[str, int]
    api_server: tuple[str, int]
    backoff_initial: float = BACKOFF_INITIAL
    cgroup: Path | None = None  # the node's cpu cgroup (node_cgroup)
    # NetworkPolicy enforcement (policy.py); None: pods run unconfined, as without a
    # network plugin that enforces policies.
    enforcer: PolicyEnforcer | None = None


def log_tail(path: Path) -> str:
    """The kubelet's FallbackToLogsOnError message: the last 80 lines, at most 2 KiB."""
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except FileNotFoundError:
        return ""
    text = "\n".join(data.decode(errors="replace").splitlines()[-TERMINATION_LOG_LINES:])
    return text.encode()[-TERMINATION_LOG_BYTES:].decode(errors="replace")


def termination_message(path: Path | None) -> str:
    """What the container wrote to its terminationMessagePath (the kubelet reads at most
    4 KiB); FallbackToLogsOnError takes the log tail only when this is empty."""
    if path is None:
        return ""
    try:
        with path.open("rb") as handle:
            return handle.read(TERMINATION_MESSAGE_BYTES).decode(errors="replace")
    except FileNotFoundError:
        return ""


def exit_code(returncode: int) -> int:
    """As a container runtime reports it: 128 + signal for a signalled process."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class ContainerRun:
    """One container of the pod, across restarts."""

    spec: dict[str, Any]
    restart_count: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    started_rfc: str = ""
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)
    started: bool = False
    ready: bool = False
    backoff: float = 0.0
    restart_at: float = 0.0
    probes: dict[str, ProbeState] = field(default_factory=dict)
    log_path: Path | None = None
    # The file bound at the container's terminationMessagePath, read when it exits.
    termination_path: Path | None = None
    image_id: str = ""

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": self.image_id,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.process is not None:
            out["containerID"] = f"process://{self.process.pid}"
        return out


class PodWorker(threading.Thread):
    def __init__(self, ctx: NodeContext, pod: dict[str, Any], address: ipaddress.IPv4Address):
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.ctx = ctx
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.address = address
        self.sandbox = Sandbox(address)
        self._pod = pod
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._gone = False  # the API object is gone (DELETED event)
        self._shutdown = False  # the process node is stopping
        slug = f"{self.namespace}_{self.pod_name}_{self.uid}"
        self.pod_dir = ctx.root / "pods" / slug
        self.shm_dir = Path("/dev/shm") / "openmodel-process-node" / slug
        self.containers = [ContainerRun(dict(c)) for c in pod["spec"].get("containers") or []]
        self.cgroup = pod_cgroup(ctx.cgroup, self.uid)
        self.sources: dict[str, tuple[str, bool]] | None = None
        self.pod_condition_times: dict[str, tuple[str, str]] = {}
        self.started_rfc = now_rfc3339()
        self.last_written: dict[str, Any] | None = None
        self.pending_reason: tuple[str, str] | None = None
        self.service_proxy: ServiceProxy | None = None

    # -- called from the node's watch thread ---------------------------------------
    def update(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self._pod = pod
        self._wake.set()

    def gone(self) -> None:
        self._gone = True
        self._wake.set()

    def shutdown(self) -> None:
        self._shutdown = True
        self._wake.set()

    # -- the worker ------------------------------------------------------------------
    @property
    def pod(self) -> dict[str, Any]:
        with self._lock:
            return self._pod

    def deleting(self) -> bool:
        return self._gone or self._shutdown or bool(self.pod["metadata"].get("deletionTimestamp"))

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: worker failed", self.namespace, self.pod_name)
            self._stop_containers(grace=2.0)
        finally:
            self._teardown()

    def _run(self) -> None:
        self.sandbox.create()
        self._serve_kubernetes_service()
        if self.ctx.enforcer is not None:
            self.ctx.enforcer.confine(self.pod, str(self.address), self.sandbox.netns)
        while not self.deleting():
            try:
                self._step(time.monotonic())
            except (ApiException, urllib3.exceptions.HTTPError) as e:
                # An API hiccup (timeout, 5xx) costs one tick, never the pod.
                log.warning("pod %s/%s: API call failed: %s", self.namespace, self.pod_name, e)
            self._wake.wait(0.25)
            self._wake.clear()
        grace = self._grace_seconds()
        self._stop_containers(grace)
        if not self._gone and not self._shutdown:
            self._write_status()
            self._delete_from_api()

    def _serve_kubernetes_service(self) -> None:
        host, port = self.ctx.kubernetes_service
        self.sandbox.add_local_address(host)
        listener = listen_in_netns(self.sandbox.netns_path, (host, port))
        name = f"{self.namespace}/{self.pod_name}"
        self.service_proxy = ServiceProxy(listener, self.ctx.api_server, name).start()

    def _step(self, now: float) -> None:
        if self.sources is None:
            self._prepare_volumes()
        if self.sources is not None:
            for run in self.containers:
                self._tick(run, now)
        self._write_status()

    def _grace_seconds(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        if self._shutdown:
            return 5.0
        value = meta.get("deletionGracePeriodSeconds")
        if value is None:
            value = spec.get("terminationGracePeriodSeconds", 30)
        return float(value)

    def _prepare_volumes(self) -> None:
        try:
            sources = volume_sources(self.ctx.api, self.pod, self.pod_dir, self.shm_dir)
            volumes_dir = self.pod_dir / "volumes"
            self.sources = sources | write_file_volumes(self.ctx.api, self.pod, volumes_dir)
            self.pending_reason = None
        except VolumeNotReady as e:
            self.pending_reason = ("ContainerCreating", f"MountVolume.SetUp failed: {e}")
        except ConfigError as e:
            self.pending_reason = ("CreateContainerConfigError", str(e))

    def _tick(self, run: ContainerRun, now: float) -> None:
        if run.process is None:
            if now >= run.restart_at:
                self._start(run, now)
            return
        code = run.process.poll()
        if code is not None:
            self._exited(run, exit_code(code), now)
            return
        self._probe(run, now)

    def _start(self, run: ContainerRun, now: float) -> None:
        spec = run.spec
        try:
            root = image_root(spec.get("image", ""), self.ctx.images)
        except ImageError as e:
            run.state = {"waiting": {"reason": "ErrImagePull", "message": str(e)}}
            run.restart_at = now + 5.0
            return
        pod = self._pod_with_ip()
        try:
            env = {
                **kubernetes_service_env(*self.ctx.kubernetes_service),
                **container_env(self.ctx.api, pod, spec, root),
            }
            assert self.sources is not None
            scratch = self.pod_dir / "tmp" / run.name
            mounts = container_mounts(spec, self.sources, scratch, [root, CHECKOUT])
        except ConfigError as e:
            run.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            run.restart_at = now + 2.0
            return
        command = [expand(a, env) for a in spec.get("command") or []]
        # Inherited by everything the engine forks: how a restarted node finds what a
        # killed one left running (see node.kill_stale_containers).
        env[NODE_ENV_MARKER] = self.ctx.name
        args = [expand(a, env) for a in spec.get("args") or []]
        argv = command + args
        if not argv:
            run.state = {"waiting": {"reason": "CreateContainerError", "message": "no command"}}
            run.restart_at = now + 5.0
            return
        scratch.mkdir(parents=True, exist_ok=True)
        log_dir = self.pod_dir / "logs" / run.name
        log_dir.mkdir(parents=True, exist_ok=True)
        run.log_path = log_dir / f"{run.restart_count}.log"
        # As the kubelet does: a file of the container's own at its terminationMessagePath.
        run.termination_path = log_dir / f"{run.restart_count}.termination"
        run.termination_path.write_bytes(b"")
        target = spec.get("terminationMessagePath") or TERMINATION_MESSAGE_PATH
        mounts.append(Mount(str(run.termination_path), target, False))
        spec_file = log_dir / f"{run.restart_count}.spec.json"
        spec_file.write_text(
            json.dumps(
                {
                    "argv": argv,
                    "env": env,
                    "workingDir": spec.get("workingDir"),
                    "mounts": [_mount_json(m) for m in mounts],
                }
            )
        )
        init = [sys.executable, "-m", "harness.process_node.container_init", str(spec_file)]
        with run.log_path.open("ab") as out:
            run.process = subprocess.Popen(
                ["ip", "netns", "exec", self.sandbox.netns, *init],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_container_preexec(self.cgroup),
                cwd=HARNESS_DIR,
                env={
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "PYTHONPATH": str(HARNESS_DIR),
                },
            )
        run.image_id = f"process-node://{root}"
        run.started_at = now
        run.started_rfc = now_rfc3339()
        run.state = {"running": {"startedAt": run.started_rfc}}
        run.started = False
        run.ready = False
        run.probes = {
            kind: ProbeState(spec[key], now)
            for kind, key in (
                ("startup", "startupProbe"),
                ("readiness", "readinessProbe"),
                ("liveness", "livenessProbe"),
            )
            if spec.get(key)
        }
        if "startup" not in run.probes:
            run.started = True
        if "readiness" not in run.probes:
            run.ready = run.started
        log.info(
            "pod %s/%s container %s started (pid %d, restart %d): %s",
            self.namespace,
            self.pod_name,
            run.name,
            run.process.pid,
            run.restart_count,
            " ".join(argv),
        )

    def _event(self, reason: str, message: str, type_: str = "Warning") -> None:
        """An Event on the pod from this node, as the kubelet posts for probe failures,
        kills and back-offs; a failure to post is logged, never fatal."""
        meta = self.pod["metadata"]
        stamp = now_rfc3339()
        body = {
            "metadata": {"generateName": f"{self.pod_name}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.pod_name,
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "kubelet", "host": self.ctx.name},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            # A dict body is sent as it is; the generated signature names the model only.
            client.CoreV1Api(self.ctx.api).create_namespaced_event(
                self.namespace,
                body,  # type: ignore[arg-type]
                _request_timeout=API_TIMEOUT,
            )
        except ApiException as e:
            log.warning(
                "pod %s/%s: event %s not posted: %s",
                self.namespace,
                self.pod_name,
                reason,
                e.reason,
            )

    def _probe_failed(self, kind: str, seen: str) -> None:
        self._event("Unhealthy", f"{kind.capitalize()} probe failed: {seen}")

    def _run_due(self, run: ContainerRun, kind: str, now: float) -> ProbeState | None:
        """Run the container's `kind` probe if it is due; its state when it ran."""
        probe = run.probes.get(kind)
        if probe is None or not probe.due(now):
            return None
        ok, seen = run_probe(probe.spec, run.spec, str(self.address), run.pid)
        probe.record(ok, seen, now)
        if not ok:
            self._probe_failed(kind, seen)
        return probe

    def _probe(self, run: ContainerRun, now: float) -> None:
        if not run.started and "startup" in run.probes:
            # Until the startup probe passes, readiness and liveness do not run.
            startup = self._run_due(run, "startup", now)
            if startup is not None and startup.passed():
                run.started = True
                if "readiness" not in run.probes:
                    run.ready = True
                for kind in ("readiness", "liveness"):
                    if kind in run.probes:
                        run.probes[kind] = ProbeState(run.probes[kind].spec, now)
            elif startup is not None and startup.failed():
                self._kill_for_restart(run, f"Startup probe failed: {startup.last}")
            return
        readiness = self._run_due(run, "readiness", now)
        if readiness is not None and readiness.passed():
            run.ready = True
        elif readiness is not None and readiness.failed():
            run.ready = False
        liveness = self._run_due(run, "liveness", now)
        if liveness is not None and liveness.failed():
            self._kill_for_restart(run, f"Liveness probe failed: {liveness.last}")

    def _kill_for_restart(self, run: ContainerRun, why: str) -> None:
        log.info(
            "pod %s/%s container %s: %s, restarting", self.namespace, self.pod_name, run.name, why
        )
        self._event("Killing", f"Container {run.name} {why.lower()}, will be restarted", "Normal")
        self._stop_container(run, self._grace_seconds())

    def _exited(self, run: ContainerRun, code: int, now: float) -> None:
        policy = run.spec.get("terminationMessagePolicy", "File")
        message = termination_message(run.termination_path)
        if (
            not message
            and policy == "FallbackToLogsOnError"
            and code != 0
            and run.log_path is not None
        ):
            message = log_tail(run.log_path)
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": run.started_rfc,
            "finishedAt": now_rfc3339(),
            "containerID": f"process://{run.pid}",
        }
        if message:
            terminated["message"] = message
        log.info(
            "pod %s/%s container %s exited with code %d",
            self.namespace,
            self.pod_name,
            run.name,
            code,
        )
        ran_for = now - run.started_at
        # What the engine forked (vLLM's resource tracker, say) dies with the container.
        if run.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGKILL)
        run.process = None
        run.started = False
        run.ready = False
        restart_policy = self.pod["spec"].get("restartPolicy", "Always")
        if restart_policy == "Never" or (restart_policy == "OnFailure" and code == 0):
            run.state = {"terminated": terminated}
            run.restart_at = float("inf")
            return
        run.last_state = {"terminated": terminated}
        run.restart_count += 1
        if ran_for >= BACKOFF_RESET_AFTER or run.backoff == 0:
            # The kubelet's doBackOff: a container without a back-off entry (its first
            # exit, or a run longer than the entry lives) starts again at once, and the
            # entry it makes holds the back-off the next exit waits.
            run.backoff = self.ctx.backoff_initial
            self._start(run, now)
            return
        delay = run.backoff
        run.backoff = min(BACKOFF_MAX, run.backoff * 2)
        run.restart_at = now + delay
        self._event(
            "BackOff", f"Back-off restarting failed container {run.name} in pod {self.pod_name}"
        )
        meta = self.pod["metadata"]
        run.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {int(delay)}s restarting failed container="
                f"{run.name} pod={meta['name']}_{meta['namespace']}({meta['uid']})",
            }
        }

    def _stop_container(self, run: ContainerRun, grace: float) -> None:
        process = run.process
        if process is None or process.poll() is not None:
            return
        hook_started = time.monotonic()
        failed = run_pre_stop(run.spec, str(self.address), process.pid, grace)
        if failed is not None:
            self._event("FailedPreStopHook", failed)
        grace = grace - (time.monotonic() - hook_started)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=max(grace, GRACE_EXTENSION))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Whatever the engine forked is in its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def _stop_containers(self, grace: float) -> None:
        for run in self.containers:
            self._stop_container(run, grace)
            if run.process is not None:
                code = exit_code(run.process.returncode or 0)
                run.state = {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": run.started_rfc,
                        "finishedAt": now_rfc3339(),
                    }
                }
                run.ready = False

    # -- status ------------------------------------------------------------------------
    def _pod_with_ip(self) -> dict[str, Any]:
        pod = dict(self.pod)
        pod["status"] = {
            **(pod.get("status") or {}),
            "podIP": str(self.address),
            "hostIP": self.ctx.host_ip,
        }
        return pod

    def _condition(self, type_: str, ok: bool) -> dict[str, Any]:
        status = "True" if ok else "False"
        before = self.pod_condition_times.get(type_)
        if before is None or before[0] != status:
            self.pod_condition_times[type_] = (status, now_rfc3339())
        return {
            "type": type_,
            "status": status,
            "lastTransitionTime": self.pod_condition_times[type_][1],
        }

    def build_status(self) -> dict[str, Any]:
        statuses = [r.status() for r in self.containers]
        if self.pending_reason is not None:
            reason, message = self.pending_reason
            for s in statuses:
                if "running" not in s["state"]:
                    s["state"] = {"waiting": {"reason": reason, "message": message}}
        all_ready = bool(self.containers) and all(r.ready for r in self.containers)
        terminal = all(
            "terminated" in r.state and r.restart_at == float("inf") for r in self.containers
        )
        if terminal and self.containers:
            failed = any(r.state["terminated"]["exitCode"] != 0 for r in self.containers)
            phase = "Failed" if failed else "Succeeded"
        elif any(r.process is not None or r.restart_count > 0 for r in self.containers):
            phase = "Running"
        else:
            phase = "Pending"
        scheduled = [
            c
            for c in (self.pod.get("status") or {}).get("conditions") or []
            if c.get("type") == "PodScheduled"
        ]
        conditions = [
            self._condition("PodReadyToStartContainers", True),
            self._condition("Initialized", True),
            self._condition("Ready", all_ready),
            self._condition("ContainersReady", all_ready),
            *scheduled,
        ]
        ip = str(self.address)
        return {
            "phase": phase,
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": self.started_rfc,
            "conditions": conditions,
            "containerStatuses": statuses,
        }

    def _write_status(self) -> None:
        status = self.build_status()
        if status == self.last_written:
            return
        core = client.CoreV1Api(self.ctx.api)
        try:
            core.patch_namespaced_pod_status(
                self.pod_name,
                self.namespace,
                {"metadata": {"uid": self.uid}, "status": status},
                _content_type="application/merge-patch+json",
                _request_timeout=API_TIMEOUT,
            )
            self.last_written = status
        except ApiException as e:
            if e.status == 404:
                self._gone = True
            elif e.status != 409:
                log.warning(
                    "pod %s/%s: status write failed: %s", self.namespace, self.pod_name, e.reason
                )

    def _delete_from_api(self) -> None:
        core = client.CoreV1Api(self.ctx.api)
        try:
            core.delete_namespaced_pod(
                self.pod_name,
                self.namespace,
                grace_period_seconds=0,
                _request_timeout=API_TIMEOUT,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                ),
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _teardown(self) -> None:
        if self.ctx.enforcer is not None:
            self.ctx.enforcer.release(self.uid)
        if self.service_proxy is not None:
            self.service_proxy.close()
        self.sandbox.destroy()
        if self.cgroup is not None:
            with contextlib.suppress(OSError):  # still has a process: left for the OS
                self.cgroup.rmdir()
        self.ctx.release_address(self.address)
        shutil.rmtree(self.shm_dir, ignore_errors=True)
        # The pod's scratch /tmp (the engine's sockets and temp files) goes with it;
        # its logs stay under the node's root for post-mortems.
        shutil.rmtree(self.pod_dir / "tmp", ignore_errors=True)
        shutil.rmtree(self.pod_dir / "volumes", ignore_errors=True)


def _mount_json(m: Mount) -> dict[str, Any]:
    return {"source": m.source, "target": m.target, "readOnly": m.read_only}
