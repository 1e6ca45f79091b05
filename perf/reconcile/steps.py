"""bench_reconcile's run for one count: the cluster (a fresh audited control plane, or
an existing one), the floors, then the operator's steps: the edit baseline (2a), the
ModelDeployments converging (2), the idle minute (3), the edits under load (3b) and the
operator process's resources (4)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from perf.proc import cpu_seconds, load_average, memory_bytes
from perf.runs import REPO, git, note

from .cpu import cpu_delta, cpu_snapshot, machine_probe, wait_calm
from .floors import Namespaces, Pace, create_all, floors, md_body
from .kubeio import (
    COLLECTIONS,
    WAIT_DEADLINE,
    CollectionWatch,
    Timeout,
    create,
    create_namespace,
    md_caught_up,
    md_ready,
    md_summary,
    metrics_text,
    ready_replicas,
    request_totals,
    wait_until,
)
from .plane import BenchControlPlane, node_pool_for
from .results import Results, median
from harness import apply_node_pool, delete_namespace, wait_nodes_ready
from harness.audit import BENCH_USER_AGENT, AuditLog
from harness.kubeconfig import api_client_for
from harness.operator import install_crd, start_operator
from harness.process import rss_bytes
from harness.rawapi import call, watch_events

EDIT_NAME = "md-edit"  # the ModelDeployment of the single-edit latency
EDIT_ENV = "BENCH_EDIT"
# Step 2 checks what its watches hold (no request): this is the precision of its times.
WATCH_CHECK_INTERVAL = 0.1
AUDIT_WRITES = ("create", "update", "patch", "delete", "deletecollection")
# (group, resource) the operator writes or owns; leases and nodes are KWOK heartbeats.
OURS = (
    ("openmodel.dev", "modeldeployments"),
    ("apps", "deployments"),
    ("", "services"),
    ("", "persistentvolumeclaims"),
    ("", "events"),
    ("events.k8s.io", "events"),
    ("", "pods"),
)
NOT_OURS = (("coordination.k8s.io", "leases"), ("", "nodes"))


@dataclass(frozen=True)
class BenchCluster:
    """Where a count runs: the client (user agent openmodel-bench), the kubeconfig the
    operator gets, the audit log (a missing file when the cluster has none), the control
    plane's processes by name (for their CPU; none on an existing cluster)."""

    api: client.ApiClient
    kubeconfig: Path
    audit: AuditLog
    pids: dict[str, int]
    nodes: int


def bench_client(kubeconfig: Path) -> client.ApiClient:
    api = api_client_for(kubeconfig)
    api.user_agent = BENCH_USER_AGENT
    return api


def start_cluster(count: int, workdir: Path, stack: contextlib.ExitStack) -> BenchCluster:
    """A fresh audited control plane with a node pool for `count`, and the CRD; stopped
    by `stack`. As harness.start_local_cluster does, with the audited kube-apiserver."""
    pool_spec = node_pool_for(count)
    plane = BenchControlPlane.start(workdir / "cluster", pod_network=pool_spec.pod_network)
    stack.callback(plane.stop)
    audit = AuditLog(plane.audit_log_path)
    api = bench_client(plane.kubeconfig)
    nodes = apply_node_pool(api, pool_spec.with_pod_network(plane.pod_network))
    wait_nodes_ready(api, nodes)
    install_crd(api)
    pids = {name: c.pid for name, c in plane.components.items()}
    return BenchCluster(api, plane.kubeconfig, audit, pids, len(nodes))


def existing_cluster(kubeconfig: Path, audit_log: Path | None, workdir: Path) -> BenchCluster:
    """A cluster already up (its nodes must fit the count), the CRD installed; requests
    are attributed only when `audit_log` is its kube-apiserver's (JSON) audit log."""
    api = bench_client(kubeconfig)
    install_crd(api)
    nodes = len(client.CoreV1Api(api).list_node().items)
    return BenchCluster(api, kubeconfig, AuditLog(audit_log or workdir / "no-audit.log"), {}, nodes)


def deadline_for(count: int) -> float:
    """Waits on the whole set scale with it (600 s at 200, 2,500 s at 5,000)."""
    return max(WAIT_DEADLINE, 0.5 * count)


def namespaces_of(args: argparse.Namespace) -> Namespaces:
    return Namespaces.with_prefix(args.namespace_prefix)


def pace_of(args: argparse.Namespace) -> Pace:
    return Pace(args.concurrency, args.calm, args.calm_deadline, args.calm_sample)


def run(
    args: argparse.Namespace,
    count: int,
    workdir: Path,
    res: Results,
    stack: contextlib.ExitStack,
) -> None:
    """Every step for one count, on a fresh control plane unless --kubeconfig names one."""
    res.source = operator_source(args)
    res.count, res.concurrency, res.workdir = count, args.concurrency, workdir
    res.load.append(load_average())
    res.machine_probe = machine_probe(args.probe_rounds)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.kubeconfig:
        note(f"{count} ModelDeployments: workdir {workdir}; on the cluster of {args.kubeconfig}")
        cluster = existing_cluster(Path(args.kubeconfig), args.audit_log, workdir)
    else:
        note(f"{count} ModelDeployments: workdir {workdir}; starting the control plane")
        cluster = start_cluster(count, workdir, stack)
    stack.callback(cluster.api.close)
    res.nodes = cluster.nodes
    res.audited = cluster.audit.exists
    pool = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="bench")
    stack.callback(pool.shutdown, wait=True, cancel_futures=True)
    pids = dict(cluster.pids)
    namespaces, pace, deadline = namespaces_of(args), pace_of(args), deadline_for(count)
    if args.floors:
        floors(count, cluster.api, cluster.audit, pool, pids, res, namespaces, pace, deadline)
    else:
        note("floors skipped (--no-floors)")
    operator_steps(args, count, workdir, res, stack, cluster, pool, pids)


def operator_steps(
    args: argparse.Namespace,
    count: int,
    workdir: Path,
    res: Results,
    stack: contextlib.ExitStack,
    cluster: BenchCluster,
    pool: ThreadPoolExecutor,
    pids: dict[str, int],
) -> None:
    api, audit = cluster.api, cluster.audit
    ns = namespaces_of(args).operator
    pace, deadline = pace_of(args), deadline_for(count)
    if args.kubeconfig:
        # Not this script's cluster: its namespace goes once the operator has stopped.
        stack.callback(delete_namespace, api, ns)
    # 2. operator
    started_at = time.time()
    op = start_operator(cluster.kubeconfig, workdir, extra_env=operator_env(args, workdir))
    stack.callback(op.stop)
    res.operator_log = op.log_path
    pids["operator"] = op.process.pid
    # Let the operator's start-up (initial lists, watches) settle.
    wait_until(
        "the operator's start-up",
        lambda: time.time() - started_at > 3.0 and operator_quiet_for(audit, 3.0),
        deadline=120,
    )
    create_namespace(api, ns)

    # 2a. single-edit latency on the (nearly) empty cluster: the baseline
    edit_body = md_body(0, ns)
    edit_body["metadata"]["name"] = EDIT_NAME
    create(api, edit_body)
    wait_until(f"{EDIT_NAME} to be Ready", lambda: md_ready(api, ns, EDIT_NAME))
    note(f"step 2a: {args.edits} edits of {EDIT_NAME}, one ModelDeployment in the cluster")
    res.edits_empty = edit_latencies(api, ns, EDIT_NAME, "empty", args.edits)
    note(f"  median {median(res.edits_empty):.3f}s")

    bodies = [md_body(i, ns) for i in range(count)]
    names = {b["metadata"]["name"] for b in bodies}
    res.calm.append(wait_calm(pids, pace.calm, pace.calm_deadline, pace.calm_sample))
    note(
        f"step 2: {len(bodies)} ModelDeployments, {args.concurrency} at a time, followed by watches"
    )
    profiler = start_profiler(
        args.py_spy if count >= args.py_spy_from else None, op.process.pid, workdir, stack
    )
    watched_deployments = CollectionWatch(api, "Deployment", ns, ready_replicas)
    watched_services = CollectionWatch(api, "Service", ns, lambda _s: True)
    watched_mds = CollectionWatch(api, "ModelDeployment", ns, md_summary)
    for w in (watched_deployments, watched_services, watched_mds):
        w.__enter__()
    cpu0 = cpu_snapshot(pids)
    wall0 = time.time()
    started = time.monotonic()
    futures = create_all(api, pool, bodies)
    progress = {"deployments": 0, "services": 0, "converged": 0}

    def converged() -> bool:
        for f in futures:
            error = f.exception() if f.done() else None
            if error is not None:
                raise error
        if res.operator_creates_seconds != res.operator_creates_seconds and all(
            f.done() for f in futures
        ):
            res.operator_creates_seconds = time.monotonic() - started
        if not op.alive():
            raise RuntimeError(f"the operator exited:\n{op.log_tail()}")
        deployments = set(watched_deployments.snapshot()) & names
        if (
            len(deployments) >= count
            and res.operator_deployments_seconds != res.operator_deployments_seconds
        ):
            res.operator_deployments_seconds = time.monotonic() - started
        services = set(watched_services.snapshot()) & names
        done = sum(
            1
            for name, (generation, observed, _reason) in watched_mds.snapshot().items()
            if name in deployments and name in services and observed == generation
        )
        progress.update(deployments=len(deployments), services=len(services), converged=done)
        return done == count and all(f.done() for f in futures)

    try:
        res.operator_seconds = wait_until(
            "every ModelDeployment to converge", converged, deadline, WATCH_CHECK_INTERVAL
        )
    except Timeout:
        note(f"  timed out: {progress}")
        raise
    finally:
        res.operator_cpu_converge = cpu_seconds(op.process.pid) - cpu0["operator"]
        res.phase("operator run", cpu_delta(cpu0, cpu_snapshot(pids)), time.monotonic() - started)
        res.converge_requests = audit.between(wall0, time.time())
        res.profile = stop_profiler(profiler)
    note(f"  {res.operator_seconds:.2f}s; waiting until every one is Ready")

    def all_ready() -> bool:
        if not op.alive():
            raise RuntimeError(f"the operator exited:\n{op.log_tail()}")
        if res.controllers_ready_seconds != res.controllers_ready_seconds:
            ready = sum(
                1 for name, n in watched_deployments.snapshot().items() if name in names and n >= 1
            )
            progress.update(pods_ready=ready)
            if ready == count:
                res.controllers_ready_seconds = time.monotonic() - started
        ready_mds = sum(
            1
            for name, (_g, _o, reason) in watched_mds.snapshot().items()
            if name in names and reason == "Ready"
        )
        progress.update(status_ready=ready_mds)
        return ready_mds == count and res.controllers_ready_seconds == res.controllers_ready_seconds

    try:
        wait_until("every ModelDeployment to be Ready", all_ready, deadline, WATCH_CHECK_INTERVAL)
        res.operator_ready_seconds = time.monotonic() - started
        note(
            f"  Ready after {res.operator_ready_seconds:.1f}s "
            f"(every Deployment's pod after {res.controllers_ready_seconds:.1f}s)"
        )
    except Timeout:
        note(f"  not all Ready: {progress}; going on")
    finally:
        for w in (watched_deployments, watched_services, watched_mds):
            w.__exit__()

    # 3. requests per minute once converged
    note(
        f"step 3: waiting for {args.quiet:g}s without an operator write "
        f"(at most {args.quiet_deadline:.0f}s)"
    )
    try:
        res.quiet_after = wait_until(
            "the operator to be quiet",
            lambda: operator_quiet_for(audit, args.quiet),
            deadline=args.quiet_deadline,
            interval=1.0,
        )
        res.quiet = True
    except Timeout:
        res.quiet_after = args.quiet_deadline
        note("  the operator did not go quiet; measuring anyway")
    note(f"  sampling /metrics now and after {args.window:g}s")
    cpu0, idle_started = cpu_snapshot(pids), time.monotonic()
    text0 = metrics_text(api)
    t0_wall = time.time()
    time.sleep(args.window)
    t1_wall = time.time()
    text1 = metrics_text(api)
    res.window = t1_wall - t0_wall
    res.phase("idle window", cpu_delta(cpu0, cpu_snapshot(pids)), time.monotonic() - idle_started)
    m0, m1 = request_totals(text0), request_totals(text1)
    res.metrics_delta = {k: m1[k] - m0.get(k, 0.0) for k in m1 if m1[k] - m0.get(k, 0.0) > 0}
    time.sleep(1.0)  # the audit log line of a request in flight at t1
    res.window_requests = audit.between(t0_wall, t1_wall)

    # 3b. single-edit latency with `count` ModelDeployments in the cluster
    note(f"step 3b: {args.edits} edits of {EDIT_NAME}, {count} other ModelDeployments around")
    res.edits_loaded = edit_latencies(api, ns, EDIT_NAME, "loaded", args.edits)
    note(f"  median {median(res.edits_loaded):.3f}s")

    # 4. operator process
    res.load.append(load_average())
    res.operator_rss = rss_bytes(op.process.pid)
    res.operator_peak_rss = memory_bytes(op.process.pid)[1]
    res.operator_cpu_total = cpu_seconds(op.process.pid)


def container_env(deployment: dict[str, Any], key: str) -> str | None:
    for container in deployment["spec"]["template"]["spec"].get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == key:
                value = env.get("value")
                return None if value is None else str(value)
    return None


def edit_latencies(
    api: client.ApiClient, ns: str, name: str, label: str, edits: int
) -> list[float]:
    """`edits` spec edits of one ModelDeployment (spec.env BENCH_EDIT=<label>-<i>), one at
    a time: seconds from the PATCH's response until a watch on its Deployment delivers the
    new value. The next edit waits until the status has caught up with the previous one."""
    deployments = COLLECTIONS["Deployment"].format(ns=ns)
    # The watch starts at the list's resourceVersion, not the object's: an object left
    # alone while 5,000 others changed has a version older than the watch cache keeps.
    listed = json.loads(
        call(api, "GET", deployments, query=[("fieldSelector", f"metadata.name={name}")])
    )
    seen: dict[str, float] = {}
    cond = threading.Condition()
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        # From the list read above, one watch request after another.
        rv = listed["metadata"]["resourceVersion"]
        try:
            while not stop.is_set():
                query = [("fieldSelector", f"metadata.name={name}"), ("resourceVersion", rv)]
                for event in watch_events(api, deployments, query, stop, timeout=30):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch error: {obj}")
                    rv = obj["metadata"]["resourceVersion"]
                    value = container_env(obj, EDIT_ENV)
                    now = time.monotonic()
                    with cond:
                        if value is not None and value not in seen:
                            seen[value] = now
                            cond.notify_all()
        except BaseException as e:  # reported by the waiting side
            errors.append(e)
            with cond:
                cond.notify_all()

    thread = threading.Thread(target=watch, name="bench-watch", daemon=True)
    thread.start()
    latencies = []
    path = f"{COLLECTIONS['ModelDeployment'].format(ns=ns)}/{name}"
    try:
        for i in range(edits):
            value = f"{label}-{i}"
            patch = {"spec": {"env": [{"name": EDIT_ENV, "value": value}]}}
            call(api, "PATCH", path, patch, content_type="application/merge-patch+json")
            answered = time.monotonic()

            def delivered(v: str = value) -> bool:
                return v in seen or bool(errors)

            with cond:
                if not cond.wait_for(delivered, timeout=60):
                    raise Timeout(f"edit {value}: the Deployment did not change within 60s")
            if errors:
                raise RuntimeError(f"the Deployment watch failed: {errors[0]}")
            latencies.append(max(0.0, seen[value] - answered))
            wait_until(f"{name}'s status to catch up", lambda: md_caught_up(api, ns, name), 60)
    finally:
        stop.set()
    return latencies


Profiler = tuple["subprocess.Popen[bytes]", Path]


def start_profiler(
    py_spy: str | None, pid: int, workdir: Path, stack: contextlib.ExitStack
) -> Profiler | None:
    """py-spy sampling the operator (all threads, GIL holders and waiters alike)."""
    if not py_spy:
        return None
    out = workdir / "operator-profile.txt"
    # --nonblocking: by default py-spy stops the operator at every sample.
    argv = [py_spy, "record", "--nonblocking", "--format", "raw", "--rate", "50"]
    proc = subprocess.Popen(
        [*argv, "-o", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "py-spy.log").open("wb"),
    )
    stack.callback(stop_if_running, proc)
    time.sleep(1.0)  # attached before the first create
    return proc, out


def stop_if_running(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()


def stop_profiler(profiler: Profiler | None) -> Path | None:
    if profiler is None:
        return None
    proc, out = profiler
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return out if out.exists() else None


def operator_quiet_for(audit: AuditLog, seconds: float) -> bool:
    """No operator write on our resources (leader-election leases aside) for `seconds`."""
    last = 0.0
    for r in reversed(audit.poll()):
        if r.client == "operator" and r.verb in AUDIT_WRITES and (r.group, r.resource) in OURS:
            last = r.t
            break
    return time.time() - last >= seconds


def operator_env(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    """Production settings rather than the e2e tests' (fast resync, fast autoscaler poll)."""
    config_file = workdir / "bench-platform-config.yaml"
    config_file.write_text(args.platform_config or "{}\n")  # every default unless given
    env = {
        "OPENMODEL_RESYNC_SECONDS": str(args.resync),
        "OPENMODEL_CONFIG": str(config_file),
        # The floors' namespaces are not the operator's.
        "OPENMODEL_NAMESPACES": namespaces_of(args).operator,
    }
    if args.operator_path:
        env["PYTHONPATH"] = str(Path(args.operator_path).resolve())
    elif args.rev:
        # The operator package exactly as committed at REV, ahead of the editable install.
        src = workdir / "operator-src"
        src.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.rev, "operator/openmodel"],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
        env["PYTHONPATH"] = str(src / "operator")
    return env


def operator_source(args: argparse.Namespace) -> str:
    if args.operator_path:
        return f"openmodel package from {args.operator_path} (an experiment, not the repo's)"
    if args.rev:
        return f"operator/openmodel at {args.rev} ({git('rev-parse', '--short', args.rev)})"
    dirty = git("status", "--porcelain", "--", "operator/openmodel").splitlines()
    state = f"with {len(dirty)} uncommitted change(s)" if dirty else "clean"
    return f"operator/openmodel from the work tree: {git('rev-parse', '--short', 'HEAD')}, {state}"
