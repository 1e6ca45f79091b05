"""Benchmark the operator against a plain client on its own fresh local control plane.

    .venv/bin/python hack/bench_reconcile.py [--count 200] [--concurrency 8] [--keep]

1. plain:    a plain kubernetes client POSTs the Deployments and Services the operator's
             own renderer (`make_plan(...).children`) gives for N ModelDeployments, into
             namespace bench-plain; wall time until every create has returned.
2. operator: with the CRD installed and the operator running (as the e2e tests run it),
             N ModelDeployments (examples/llama70b-awq.yaml, md-000.., GPU types cycled)
             are POSTed into bench-operator with the same client concurrency; wall time
             from the first create until every one has its Deployment and
             status.observedGeneration == metadata.generation (list polls only).
3. idle:     once the operator has made no write for a while, kube-apiserver's
             apiserver_request_total is sampled at t0 and t0+60 s: mutating requests per
             minute per resource. The apiserver also writes an audit log (Metadata level,
             watches excluded) so each write is attributed to its client by user agent
             (operator = kopf/* and OpenAPI-Generator/* from the operator process; this
             script's own client says openmodel-bench).
4. the operator process's RSS and CPU time.

Targets: operator/plain <= 2, and 0 writes/min by the operator on its resources once
converged. Everything is printed first; the exit status is 1 when a target is missed,
2 on an error. Every wait has a deadline; the control plane and the operator are
stopped on any exit (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from kubernetes import client, config  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from openmodel.api import parse_model_deployment  # noqa: E402
from openmodel.config import PlatformConfig  # noqa: E402
from openmodel.reconcile.plan import make_plan  # noqa: E402

from harness import ControlPlane, apply_node_pool, load_node_pool, wait_nodes_ready  # noqa: E402
from harness.launcher import Launch  # noqa: E402
from harness.process import rss_bytes  # noqa: E402
from openmodel_fixtures import install_crd, load_example, start_operator  # noqa: E402

PLAIN_NS = "bench-plain"
OPERATOR_NS = "bench-operator"
EXAMPLE = "llama70b-awq.yaml"
# h100/a100 nodes exist in gpu-nodes.yaml (a few replicas fit), h200/l40s do not
# (Unschedulable): both paths of the status code are exercised.
GPU_TYPES = ("nvidia-h100-80gb", "nvidia-a100-80gb", "nvidia-h200", "nvidia-l40s")
USER_AGENT = "openmodel-bench"
OWN_IDLE_CORES = 0.3  # this benchmark's cluster and operator, idle enough to start a step
NOISY_CORES = 0.5  # other processes' load during a timed step that makes it unreliable
WAIT_DEADLINE = 600.0  # every wait below stops by itself after this
POLL_INTERVAL = 0.5
MUTATING = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
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
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: None
    verbs: [watch]
  - level: None
    nonResourceURLs: ["*"]
  - level: Metadata
"""


class Timeout(RuntimeError):
    pass


# -- control plane with an audit log ----------------------------------------------


class BenchControlPlane(ControlPlane):
    """The harness's control plane, with kube-apiserver writing a JSON audit log, so that
    each request can be attributed to its client."""

    def _apiserver(self) -> Launch:
        base = super()._apiserver()
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        log = self.workdir / "audit.log"

        def argv(ports: list[int]) -> list[str]:
            return [
                *base.argv(ports),
                f"--audit-policy-file={policy}",
                f"--audit-log-path={log}",
                "--audit-log-format=json",
                "--audit-log-maxbackup=0",
            ]

        return dataclasses.replace(base, argv=argv)


@dataclasses.dataclass(frozen=True)
class Request:
    """One audited request, reduced to what the report needs."""

    t: float  # epoch seconds the response completed
    client: str
    verb: str  # audit verb: get list create update patch delete ...
    group: str
    resource: str
    subresource: str
    name: str
    code: int


def classify(user_agent: str, username: str) -> str:
    if user_agent.startswith(USER_AGENT):
        return "bench"
    if user_agent.startswith(("kopf/", "OpenAPI-Generator/")):
        return "operator"
    for prefix in ("kwok", "kube-scheduler", "kube-apiserver"):
        if user_agent.startswith(prefix):
            return prefix
    if user_agent.startswith("kube-controller-manager"):
        return "kcm:" + username.rsplit(":", 1)[-1]
    return "other:" + (user_agent.split("/", 1)[0] or username)


class AuditLog:
    """Incremental reader of kube-apiserver's JSON audit log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.requests: list[Request] = []

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            ev = json.loads(line)
            ref = ev.get("objectRef") or {}
            self.requests.append(
                Request(
                    t=dt.datetime.fromisoformat(ev["stageTimestamp"]).timestamp(),
                    client=classify(
                        ev.get("userAgent", ""), ev.get("user", {}).get("username", "")
                    ),
                    verb=ev.get("verb", ""),
                    group=ref.get("apiGroup", ""),
                    resource=ref.get("resource", ""),
                    subresource=ref.get("subresource", ""),
                    name=ref.get("name", ""),
                    code=int((ev.get("responseStatus") or {}).get("code") or 0),
                )
            )

    def between(self, start: float, end: float) -> list[Request]:
        self.poll()
        return [r for r in self.requests if start <= r.t < end]

    def last_write(self, client_name: str) -> float:
        self.poll()
        for r in reversed(self.requests):
            if r.client == client_name and r.verb in AUDIT_WRITES:
                return r.t
        return 0.0


# -- API access --------------------------------------------------------------------


def request(
    api: client.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    accept: str = "application/json",
    query: list[tuple[str, str]] | None = None,
) -> bytes:
    method, url, headers, serialized, _ = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Accept": accept, "Content-Type": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(
        method, url, header_params=headers, body=serialized, _request_timeout=60
    )
    data: bytes = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=data[:300].decode(errors="replace"))
    return data


COLLECTIONS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ModelDeployment": "/apis/openmodel.dev/v1alpha1/namespaces/{ns}/modeldeployments",
}
PARTIAL_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def create(api: client.ApiClient, obj: Mapping[str, Any]) -> None:
    path = COLLECTIONS[obj["kind"]].format(ns=obj["metadata"]["namespace"])
    request(api, "POST", path, obj)


def list_items(
    api: client.ApiClient, kind: str, ns: str, metadata_only: bool = False
) -> list[dict]:
    data = request(
        api,
        "GET",
        COLLECTIONS[kind].format(ns=ns),
        accept=PARTIAL_LIST if metadata_only else "application/json",
    )
    items: list[dict] = json.loads(data).get("items") or []
    return items


def create_namespace(api: client.ApiClient, name: str) -> None:
    request(
        api,
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )


def namespace_exists(api: client.ApiClient, name: str) -> bool:
    try:
        request(api, "GET", f"/api/v1/namespaces/{name}")
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


MetricKey = tuple[str, str, str, str]  # group, resource, subresource, verb


def metrics_text(api: client.ApiClient) -> str:
    return request(api, "GET", "/metrics", accept="text/plain").decode()


def request_totals(text: str) -> dict[MetricKey, float]:
    """apiserver_request_total summed over code/version/scope/component/dry_run."""
    wanted = "\n".join(ln for ln in text.splitlines() if ln.startswith("apiserver_request_total{"))
    totals: dict[MetricKey, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(wanted + "\n"):
        for s in family.samples:
            lab = s.labels
            key = (
                lab.get("group", ""),
                lab.get("resource", ""),
                lab.get("subresource", ""),
                lab.get("verb", ""),
            )
            totals[key] += s.value
    return totals


def wait_until(
    what: str,
    check: Callable[[], bool],
    deadline: float = WAIT_DEADLINE,
    interval: float = POLL_INTERVAL,
) -> float:
    """Poll `check` until true; returns seconds waited; raises Timeout past the deadline."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > deadline:
            raise Timeout(f"gave up after {deadline:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


# -- processes ---------------------------------------------------------------------


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


MACHINE = "machine, every process"


STEAL = "steal (the hypervisor ran others)"


def machine_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy in its processes (all cores), and stolen
    by the hypervisor, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(ticks[:7]) - ticks[3] - ticks[4]  # user..softirq, less idle and iowait
    return busy / CLK_TCK, ticks[7] / CLK_TCK


def cpu_snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    snap = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t = os.times()
    snap["bench (this script)"] = t.user + t.system
    snap[MACHINE], snap[STEAL] = machine_seconds()
    return snap


def wait_calm(pids: Mapping[str, int], cores: float, deadline: float) -> float:
    """Wait (at most `deadline` s) until, over a 5 s sample, processes outside this
    benchmark (and the hypervisor's steal) use less than `cores`, and the benchmark's own
    control plane and operator less than OWN_IDLE_CORES (still busy with the previous
    step, or starting up): either skews the next time measured. Returns the cores the
    others used in the last sample."""
    started = time.monotonic()
    while True:
        before = cpu_snapshot(pids)
        time.sleep(5.0)
        delta = cpu_delta(before, cpu_snapshot(pids))
        others = max(0.0, (delta["others on this machine"] + delta[STEAL]) / 5.0)
        own = sum(delta.get(name, 0.0) for name in pids) / 5.0
        if (others < cores and own < OWN_IDLE_CORES) or time.monotonic() - started > deadline:
            return others
        log(f"  others (and steal) use {others:.1f} cores, this cluster {own:.1f}; waiting")


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    ours = sum(v for k, v in delta.items() if k not in (MACHINE, STEAL) and v == v)
    delta["others on this machine"] = delta[MACHINE] - ours
    return delta


# -- the objects -------------------------------------------------------------------


def md_body(index: int, namespace: str) -> dict[str, Any]:
    body = load_example(EXAMPLE, namespace)
    body["metadata"]["name"] = f"md-{index:03d}"
    body["spec"]["gpu"] = {"type": GPU_TYPES[index % len(GPU_TYPES)], "count": 2}
    return body


def plain_objects(count: int) -> list[dict[str, Any]]:
    """What the operator would create for md-000.. (no owner reference: no uid yet)."""
    objects = []
    for i in range(count):
        plan = make_plan(parse_model_deployment(md_body(i, PLAIN_NS)), PlatformConfig(), None)
        objects += [plan.children.deployment, plan.children.service]
    return objects


def create_all(
    api: client.ApiClient, pool: ThreadPoolExecutor, objects: Iterable[Mapping[str, Any]]
) -> list[Future[None]]:
    return [pool.submit(create, api, obj) for obj in objects]


# -- the run -----------------------------------------------------------------------


@dataclasses.dataclass
class Results:
    source: str = ""
    count: int = 0
    concurrency: int = 0
    plain_seconds: float = float("nan")
    operator_creates_seconds: float = float("nan")
    operator_deployments_seconds: float = float("nan")
    operator_seconds: float = float("nan")
    quiet_after: float = float("nan")
    quiet: bool = False
    window: float = 0.0
    metrics_delta: dict[MetricKey, float] = dataclasses.field(default_factory=dict)
    window_requests: list[Request] = dataclasses.field(default_factory=list)
    converge_requests: list[Request] = dataclasses.field(default_factory=list)
    plain_requests: list[Request] = dataclasses.field(default_factory=list)
    cpu: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    operator_rss: int = 0
    operator_cpu_total: float = float("nan")
    operator_log: Path | None = None
    workdir: Path | None = None
    load: list[str] = dataclasses.field(default_factory=list)
    wall: dict[str, float] = dataclasses.field(default_factory=dict)
    calm: list[float] = dataclasses.field(default_factory=list)

    def phase(self, name: str, cpu: dict[str, float], wall: float) -> None:
        self.cpu[name] = cpu
        self.wall[name] = wall

    profile: Path | None = None


def run(args: argparse.Namespace, workdir: Path, res: Results, stack: contextlib.ExitStack) -> None:
    res.source = operator_source(args)
    res.count, res.concurrency, res.window, res.workdir = (
        args.count,
        args.concurrency,
        args.window,
        workdir,
    )
    res.load.append(Path("/proc/loadavg").read_text().split(" ", 1)[0])
    log(f"workdir {workdir}; starting the control plane")
    # As harness.start_local_cluster does, with the audited kube-apiserver.
    pool_spec = load_node_pool()
    plane = BenchControlPlane.start(workdir / "cluster", pod_network=pool_spec.pod_network)
    stack.callback(plane.stop)
    audit = AuditLog(plane.workdir / "audit.log")
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    api.user_agent = USER_AGENT
    pool = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="bench")
    stack.callback(pool.shutdown, wait=True, cancel_futures=True)
    wait_nodes_ready(api, apply_node_pool(api, pool_spec.with_pod_network(plane.pod_network)))
    install_crd(api)
    pids = {name: c.pid for name, c in plane.components.items()}

    # 1. plain client
    objects = plain_objects(args.count)
    create_namespace(api, PLAIN_NS)
    res.calm.append(wait_calm(pids, args.calm, args.calm_deadline))
    log(f"step 1: {len(objects)} plain creates, {args.concurrency} at a time")
    cpu0 = cpu_snapshot(pids)
    plain_wall0 = time.time()
    started = time.monotonic()
    for f in create_all(api, pool, objects):
        f.result()
    res.plain_seconds = time.monotonic() - started
    res.phase("plain", cpu_delta(cpu0, cpu_snapshot(pids)), res.plain_seconds)
    res.plain_requests = audit.between(plain_wall0, time.time())
    n_dep = len(list_items(api, "Deployment", PLAIN_NS, metadata_only=True))
    n_svc = len(list_items(api, "Service", PLAIN_NS, metadata_only=True))
    if (n_dep, n_svc) != (args.count, args.count):
        raise RuntimeError(f"{PLAIN_NS} holds {n_dep} Deployments and {n_svc} Services")
    log(f"  {res.plain_seconds:.2f}s; deleting {PLAIN_NS} so step 2 starts on an empty cluster")
    request(api, "DELETE", f"/api/v1/namespaces/{PLAIN_NS}")
    waited = wait_until(
        f"namespace {PLAIN_NS} to be deleted",
        lambda: not namespace_exists(api, PLAIN_NS),
        interval=1.0,
    )
    log(f"  deleted in {waited:.0f}s")

    # 2. operator
    started_at = time.time()
    op = start_operator(plane.kubeconfig, workdir, extra_env=operator_env(args, workdir))
    stack.callback(op.stop)
    res.operator_log = op.log_path
    pids["operator"] = op.process.pid
    # Let the operator's start-up (initial lists, watches) settle.
    wait_until(
        "the operator's start-up",
        lambda: time.time() - started_at > 3.0 and operator_quiet_for(audit, 3.0),
        deadline=120,
    )
    create_namespace(api, OPERATOR_NS)
    bodies = [md_body(i, OPERATOR_NS) for i in range(args.count)]
    res.calm.append(wait_calm(pids, args.calm, args.calm_deadline))
    log(
        f"step 2: {len(bodies)} ModelDeployments, {args.concurrency} at a time, "
        f"lists every {POLL_INTERVAL}s"
    )
    profiler = start_profiler(args.py_spy, op.process.pid, workdir, stack)
    cpu0 = cpu_snapshot(pids)
    wall0 = time.time()
    started = time.monotonic()
    futures = create_all(api, pool, bodies)
    progress = {"deployments": 0, "converged": 0}

    def converged() -> bool:
        for f in futures:
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        if res.operator_creates_seconds != res.operator_creates_seconds and all(
            f.done() for f in futures
        ):
            res.operator_creates_seconds = time.monotonic() - started
        if not op.alive():
            raise RuntimeError(f"the operator exited:\n{op.log_tail()}")
        deployments = {
            d["metadata"]["name"]
            for d in list_items(api, "Deployment", OPERATOR_NS, metadata_only=True)
        }
        if (
            len(deployments) >= args.count
            and res.operator_deployments_seconds != res.operator_deployments_seconds
        ):
            res.operator_deployments_seconds = time.monotonic() - started
        done = 0
        for md in list_items(api, "ModelDeployment", OPERATOR_NS):
            meta = md["metadata"]
            observed = (md.get("status") or {}).get("observedGeneration")
            if meta["name"] in deployments and observed == meta.get("generation"):
                done += 1
        progress.update(deployments=len(deployments), converged=done)
        return done == args.count and all(f.done() for f in futures)

    try:
        res.operator_seconds = wait_until("every ModelDeployment to converge", converged)
    except Timeout:
        log(f"  timed out: {progress}")
        raise
    finally:
        res.phase("operator run", cpu_delta(cpu0, cpu_snapshot(pids)), time.monotonic() - started)
        res.converge_requests = audit.between(wall0, time.time())
        res.profile = stop_profiler(profiler)
    log(f"  {res.operator_seconds:.2f}s")

    # 3. writes per minute once converged
    log(
        f"step 3: waiting for {args.quiet:.0f}s without an operator write "
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
        log("  the operator did not go quiet; measuring anyway")
    log(f"  sampling /metrics now and after {args.window:.0f}s")
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

    # 4. operator process
    res.load.append(Path("/proc/loadavg").read_text().split(" ", 1)[0])
    res.operator_rss = rss_bytes(op.process.pid)
    res.operator_cpu_total = cpu_seconds(op.process.pid)


def start_profiler(
    py_spy: str | None, pid: int, workdir: Path, stack: contextlib.ExitStack
) -> tuple[subprocess.Popen[bytes], Path] | None:
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
    stack.callback(lambda: proc.poll() is None and proc.kill())
    time.sleep(1.0)  # attached before the first create
    return proc, out


def stop_profiler(profiler: tuple[subprocess.Popen[bytes], Path] | None) -> Path | None:
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


def profile_summary(path: Path, top: int = 14) -> list[str]:
    """Where the operator's threads are, from py-spy's raw (collapsed) output: the kopf
    event loop vs handler threads, and inclusive samples per openmodel call site."""
    sites: collections.Counter[str] = collections.Counter()
    total = loop = handlers = locked = 0
    for line in path.read_text(errors="replace").splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack_text.split(";")
        loop += n if any(f.startswith("BaseEventLoop.run_forever") for f in frames) else 0
        handlers += n if any(f.startswith("_WorkItem.run") for f in frames) else 0
        ours = [f for f in frames if "(openmodel/" in f]
        if ours and ours[-1].startswith("KeyedLocks.hold"):
            locked += n  # the deepest openmodel frame waits for another pass's lock
        seen = set()
        for frame in frames:
            if "(openmodel/" in frame and "__main__" not in frame and frame not in seen:
                seen.add(frame)
                sites[frame.replace("openmodel/", "")] += n
    pct = 100 / max(total, 1)
    lines = [
        f"{total} samples at 50 Hz summed over threads (blocked in I/O counts too):",
        f"{loop * pct:5.1f}%  kopf's asyncio loop thread; {handlers * pct:5.1f}%  handler threads,"
        f" of which {locked * pct:.1f}% wait for another pass of the same object (KeyedLocks)",
        "inclusive share per openmodel frame (function, file:line):",
    ]
    lines += [f"{n * pct:5.1f}%  {frame}" for frame, n in sites.most_common(top)]
    return lines


def operator_quiet_for(audit: AuditLog, seconds: float) -> bool:
    """No operator write on our resources (leader-election leases aside) for `seconds`."""
    audit.poll()
    last = 0.0
    for r in reversed(audit.requests):
        if r.client == "operator" and r.verb in AUDIT_WRITES and (r.group, r.resource) in OURS:
            last = r.t
            break
    return time.time() - last >= seconds


def operator_env(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    """Production settings rather than the e2e tests' (fast resync, fast autoscaler poll)."""
    config_file = workdir / "bench-platform-config.yaml"
    config_file.write_text("{}\n")  # every default
    env = {"OPENMODEL_RESYNC_SECONDS": str(args.resync), "OPENMODEL_CONFIG": str(config_file)}
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
    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
        ).stdout.strip()

    if args.operator_path:
        return f"openmodel package from {args.operator_path} (an experiment, not the repo's)"
    if args.rev:
        return f"operator/openmodel at {args.rev} ({git('rev-parse', '--short', args.rev)})"
    dirty = git("status", "--porcelain", "--", "operator/openmodel").splitlines()
    state = f"with {len(dirty)} uncommitted change(s)" if dirty else "clean"
    return f"operator/openmodel from the work tree: {git('rev-parse', '--short', 'HEAD')}, {state}"


# -- report ------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def resource_name(group: str, resource: str, subresource: str) -> str:
    name = f"{resource}.{group}" if group else resource
    return f"{name}/{subresource}" if subresource else name


def row(label: str, value: float, unit: str = "", note: str = "") -> None:
    print(f"  {label:<58}{value:9.2f} {unit:<4}{note}")


def report(res: Results) -> bool:
    """Print everything; True when every target is met."""
    ok = True
    per_min = 60.0 / res.window if res.window else float("nan")
    ratio = res.operator_seconds / res.plain_seconds
    print(f"\n== Reconcile: {res.count} ModelDeployments, client concurrency {res.concurrency} ==")
    print(f"  {res.source}")
    print(f"  1-min load average at start/end: {' / '.join(res.load)} (2 cores)")
    print(
        "  cores used by other processes (and steal) just before steps 1 and 2: "
        + " / ".join(f"{c:.2f}" for c in res.calm)
        + " (during each step: 'others on this machine' below)"
    )
    row(
        f"plain client: {res.count} Deployments + {res.count} Services created",
        res.plain_seconds,
        "s",
    )
    row("operator: every ModelDeployment created", res.operator_creates_seconds, "s")
    row("operator: every Deployment exists", res.operator_deployments_seconds, "s")
    row("operator: converged (Deployment + observedGeneration)", res.operator_seconds, "s")
    ok &= ratio <= 2.0
    row("ratio operator/plain (target <= 2)", ratio, "", "ok" if ratio <= 2.0 else "MISSED")
    plain_reqs = 2 * res.count
    op_total = sum(
        1
        for r in res.converge_requests
        if r.client == "operator" or (r.client == "bench" and r.verb == "create")
    )
    row("requests, plain step (creates)", plain_reqs)
    row("requests, operator step (ModelDeployment creates + operator's)", op_total)
    noisy = {
        phase: (cpu.get("others on this machine", 0.0) + cpu.get(STEAL, 0.0)) / res.wall[phase]
        for phase, cpu in res.cpu.items()
        if phase in ("plain", "operator run") and res.wall.get(phase)
    }
    for phase, cores in noisy.items():
        if cores > NOISY_CORES:
            print(
                f"  NOISY: other processes (and steal) took {cores:.2f} of {os.cpu_count()}"
                f" cores in the {phase} step: its time is not comparable"
            )

    op_reqs = [r for r in res.converge_requests if r.client == "operator"]
    passes = sum(
        1
        for r in op_reqs
        if r.verb == "get" and r.resource == "modeldeployments" and r.name and not r.subresource
    )
    print(f"\n-- operator requests while converging ({res.operator_seconds:.1f}s), audit log:")
    row("requests", len(op_reqs))
    row("requests per second", len(op_reqs) / res.operator_seconds)
    row("reconcile passes (GETs of a ModelDeployment)", passes)
    row("passes per ModelDeployment", passes / res.count)
    row("requests per ModelDeployment", len(op_reqs) / res.count)
    by_kind = collections.Counter(
        (r.verb, resource_name(r.group, r.resource, r.subresource), r.code) for r in op_reqs
    )
    for (verb, name, code), n in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"    {n:6d}  {verb:<7} {name:<42} {code}")
    for step, reqs in (("plain", res.plain_requests), ("operator", res.converge_requests)):
        clients = collections.Counter(r.client for r in reqs)
        print(
            f"    all requests during the {step} step: {len(reqs)}: "
            + ", ".join(f"{c} {n}" for c, n in clients.most_common())
        )

    print("\n-- CPU seconds by process and phase:")
    phases = list(res.cpu)
    names = sorted(
        {n for p in res.cpu.values() for n in p},
        key=lambda n: -res.cpu.get("operator run", {}).get(n, 0.0),
    )
    print(f"    {'process':<26}" + "".join(f"{p:>14}" for p in phases))
    print(f"    {'(wall seconds)':<26}" + "".join(f"{res.wall[p]:14.1f}" for p in phases))
    for n in names:
        print(f"    {n:<26}" + "".join(f"{res.cpu[p].get(n, float('nan')):14.1f}" for p in phases))

    if res.profile is not None:
        print("\n-- py-spy, operator process during step 2:")
        for ln in profile_summary(res.profile):
            print(f"    {ln}")

    quiet = (
        f"operator quiet after {res.quiet_after:.0f}s"
        if res.quiet
        else f"operator NOT quiet within {res.quiet_after:.0f}s"
    )
    print(f"\n-- mutating requests per minute once converged ({quiet}; window {res.window:.0f}s):")
    print("    metrics: apiserver_request_total delta, all clients; who: audit log, per client")
    writes_by: dict[tuple[str, str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for r in res.window_requests:
        if r.verb in AUDIT_WRITES:
            writes_by[(r.group, r.resource, r.subresource)][r.client] += 1
    rows: dict[tuple[str, str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for (group, resource, sub, verb), n in res.metrics_delta.items():
        if verb in MUTATING:
            rows[(group, resource, sub)][verb] += round(n)
    for key in writes_by:
        rows.setdefault(key, collections.Counter())
    ours_total = 0.0
    print(f"    {'resource':<40}{'/min':>8}  {'verbs':<20} who (/min)")

    def line(key: tuple[str, str, str]) -> None:
        nonlocal ours_total
        verbs = rows.get(key, collections.Counter())
        who = writes_by.get(key, collections.Counter())
        if (key[0], key[1]) in OURS:
            ours_total += who.get("operator", 0) * per_min
        by_verb = " ".join(f"{v}:{n}" for v, n in sorted(verbs.items()))
        by_who = ", ".join(f"{c} {n * per_min:.1f}" for c, n in who.most_common()) or "-"
        total = sum(verbs.values()) * per_min
        print(f"    {resource_name(*key):<40}{total:8.1f}  {by_verb:<20} {by_who}")

    shown: set[tuple[str, str, str]] = set()

    def section(title: str, kinds: Iterable[tuple[str, str]]) -> None:
        print(f"   {title}")
        for group, resource in kinds:
            keys = sorted(k for k in rows if (k[0], k[1]) == (group, resource))
            for key in keys or [(group, resource, "")]:
                line(key)
                shown.add(key)

    section("ours (what the operator writes, or its children):", OURS)
    section("not ours (KWOK heartbeats; operator leases would be leader election):", NOT_OURS)
    rest = sorted(k for k in rows if k not in shown)
    if rest:
        section("other:", sorted({(k[0], k[1]) for k in rest}))
    if not any(r.client == "kwok" and r.resource == "leases" for r in res.window_requests):
        print(
            "    kwok renewed no node Lease: without Leases (kwok --node-lease-duration-seconds)"
            " the node controller marks the nodes Unknown every minute, and the writes that"
            " follow are the harness's, not the operator's"
        )
    ok &= ours_total == 0
    verdict = "ok" if ours_total == 0 else "MISSED"
    row("operator writes/min on our resources (target 0)", ours_total, "", verdict)
    reads = collections.Counter(
        (r.verb, resource_name(r.group, r.resource, r.subresource))
        for r in res.window_requests
        if r.client == "operator" and r.verb not in AUDIT_WRITES
    )
    print(
        "    operator reads in the window (one resync pass GETs every ModelDeployment): "
        + (", ".join(f"{v} {name} {n}" for (v, name), n in reads.most_common()) or "none")
    )
    print(
        "    pods, pods/status: kwok (plays the kubelet), the scheduler (binding, PodScheduled)\n"
        "    and the ReplicaSet controller (create); deployments/status, replicasets, endpoints\n"
        "    and core events: the controller-manager; events.k8s.io events: the scheduler\n"
        "    (FailedScheduling retries). Only the 'operator' column is openmodel's."
    )

    print("\n-- operator process at the end:")
    row("RSS", res.operator_rss / 2**20, "MiB")
    row("CPU time since start (user+system)", res.operator_cpu_total, "s")
    if res.operator_log is not None and res.operator_log.exists():
        text = res.operator_log.read_text(errors="replace").splitlines()
        counts: collections.Counter[str] = collections.Counter()
        for ln in text:
            for word in ("applied ", "WARNING", "ERROR", "Traceback"):
                if word in ln:
                    counts[word.strip()] += 1
        summary = ", ".join(f"{w} {n}" for w, n in counts.items())
        print(f"    operator log: {len(text)} lines; {summary}")
        for ln in [ln for ln in text if "ERROR" in ln or "WARNING" in ln][:5]:
            print(f"      {ln[:160]}")
    print(f"\nresult: {'every target met' if ok else 'a target was MISSED'}")
    return ok


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8, help="client threads, both steps")
    parser.add_argument(
        "--window", type=float, default=60.0, help="seconds between /metrics samples"
    )
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds without operator write")
    parser.add_argument("--quiet-deadline", type=float, default=180.0)
    parser.add_argument("--resync", type=float, default=60.0, help="OPENMODEL_RESYNC_SECONDS")
    parser.add_argument(
        "--rev", help="run the operator package as committed at this git revision (git archive)"
    )
    parser.add_argument(
        "--operator-path", help="directory holding an openmodel package to run instead (PYTHONPATH)"
    )
    parser.add_argument(
        "--calm",
        type=float,
        default=0.3,
        help="start a timed step once others use < this many cores",
    )
    parser.add_argument(
        "--calm-deadline", type=float, default=300.0, help="...waiting at most this"
    )
    parser.add_argument("--py-spy", help="path to py-spy: profile the operator during step 2")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (all logs)")
    args = parser.parse_args()

    # SIGINT too: a shell starts background jobs with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-bench-reconcile-"))
    res = Results()
    code = 0
    try:
        try:
            with contextlib.ExitStack() as stack:
                run(args, workdir, res, stack)
                log("stopping the operator and the control plane")
        except KeyboardInterrupt:
            log("interrupted; everything this script started was stopped")
            return 130
        except Exception as e:
            log(f"error: {type(e).__name__}: {e}")
            code = 2
        try:
            ok = report(res)
        except Exception as e:
            if code == 0:
                raise
            log(f"(partial report failed: {type(e).__name__}: {e})")
            ok = False
        return code or (0 if ok else 1)
    finally:
        if args.keep or code:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
