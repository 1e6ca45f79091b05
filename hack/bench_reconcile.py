"""Benchmark the operator against two plain-client floors on its own fresh local control plane.

    .venv/bin/python hack/bench_reconcile.py [--count 200 | --counts 200,1000,5000]
        [--concurrency 8] [--rev REV] [--py-spy PATH [--py-spy-from N]] [--keep]

For each count, a fresh control plane (audited kube-apiserver; controller-manager and
scheduler with client rate limits raised, Endpoints controllers off: see
CONTROLLER_MANAGER_FLAGS) with KWOK h100 and a100 nodes sized for the count
(node_pool_for), so every pod is scheduled and marked Ready:

1.  plain:       a plain kubernetes client POSTs the Deployments and Services the
                 operator's own renderer (`make_plan(...).children`) gives for N
                 ModelDeployments, into bench-plain; wall time until every create has
                 returned. The namespace is deleted (and waited for) afterwards.
1b. same writes: the same client does the operator's necessary writes for N
                 ModelDeployments in bench-same: the create, server-side apply of the
                 Deployment and Service as rendered (owner reference included), one status
                 apply shaped like the operator's (build_status); no operator runs, and
                 the operator only ever serves bench-operator (OPENMODEL_NAMESPACES).
2a. edit baseline: the operator runs (as the e2e tests run it, production settings);
                 one ModelDeployment md-edit, 20 spec edits (spec.env), each timed from the
                 PATCH's response until a watch on its Deployment shows the change.
2.  operator:    N ModelDeployments (examples/llama70b-awq.yaml, md-000.., h100 and a100
                 cycled) are POSTed into bench-operator with the same client concurrency;
                 wall time from the first create until every one has its Deployment and
                 Service and status.observedGeneration == metadata.generation (followed
                 by watches, not polls), then until every status is Ready, and apart when every
                 Deployment's pod is Ready (the controllers' own lag).
3.  idle:        once the operator has made no write for a while, apiserver_request_total
                 is sampled at t0 and t0+60 s, and the audit log (Metadata level, watches
                 excluded) attributes every request to its client by user agent (operator
                 = kopf/* and OpenAPI-Generator/*; this script says openmodel-bench):
                 reads and writes per minute by client.
3b. edits:       the 20 edits again, with N ModelDeployments in the cluster.
4.  the operator process's RSS (and peak), CPU time.

Targets (PASS/MISS per count, then a summary table over every count): operator <= 1.3x
the same-writes floor and <= 2x the plain floor; 0 reads and 0 writes per idle minute
by the operator (its Lease aside); peak RSS <= 250 MiB at 1,000 and <= 1 GiB at 5,000;
single-edit median <= 1 s and not slower than the baseline by more than its noise. Also
kept from before: 0 writes/min by the operator on its resources. Everything is printed
first; the exit status is 1 when a target is missed, 2 on an error. Every wait has a
deadline (scaled with the count); the control plane and the operator are stopped on any
exit (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from kubernetes import client, config  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from openmodel.clock import utc_now  # noqa: E402
from openmodel.config import PlatformConfig  # noqa: E402
from openmodel.engines import parse_model_deployment  # noqa: E402
from openmodel.reconcile.plan import make_plan  # noqa: E402
from openmodel.reconcile.render import endpoint, label_selector  # noqa: E402
from openmodel.reconcile.status import Observation, build_status  # noqa: E402

from harness import ControlPlane, apply_node_pool, load_node_pool, wait_nodes_ready  # noqa: E402
from harness.launcher import Launch  # noqa: E402
from harness.nodepool import NodePool  # noqa: E402
from harness.process import rss_bytes  # noqa: E402
from openmodel_fixtures import install_crd, load_example, start_operator  # noqa: E402

PLAIN_NS = "bench-plain"
SAME_NS = "bench-same"
OPERATOR_NS = "bench-operator"  # the only namespace the operator serves
EDIT_NAME = "md-edit"  # the ModelDeployment of the single-edit latency, in OPERATOR_NS
EXAMPLE = "llama70b-awq.yaml"
# Both have nodes (node_pool_for sizes them), so every pod is scheduled and KWOK marks
# it Ready, and the status converges to Ready.
GPU_TYPES = ("nvidia-h100-80gb", "nvidia-a100-80gb")
GPU_GROUPS = {"nvidia-h100-80gb": "h100", "nvidia-a100-80gb": "a100"}
PODS_PER_NODE = 200  # a node's pod IPs come from its /24
EDITS = 20
USER_AGENT = "openmodel-bench"
OWN_IDLE_CORES = 0.3  # this benchmark's cluster and operator, idle enough to start a step
NOISY_CORES = 0.5  # other processes' load during a timed step that makes it unreliable
WAIT_DEADLINE = 600.0  # every wait below stops by itself after this
POLL_INTERVAL = 0.5
# Step 2 checks what its watches hold (no request): this is the precision of its times.
WATCH_CHECK_INTERVAL = 0.1
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
                # No rotation (default: at 100 MB, which a 1,000-object run of the
                # operator before the cache passed; AuditLog reads one file by offset).
                "--audit-log-maxsize=0",
                # The harness's /24 holds 254 Services; pflag keeps the last value.
                f"--service-cluster-ip-range={SERVICE_RANGE}",
            ]

        return dataclasses.replace(base, argv=argv)

    def _controller_manager(self) -> Launch:
        return _with_flags(super()._controller_manager(), CONTROLLER_MANAGER_FLAGS)

    def _scheduler(self) -> Launch:
        return _with_flags(super()._scheduler(), SCHEDULER_FLAGS)


# The controller-manager's client defaults to 20 requests/s (burst 30): at 5,000
# ModelDeployments its ReplicaSet and pod creates alone would take minutes, and the
# namespace deletions between steps longer. Five workers per controller likewise. The
# scheduler's default is 50/s (burst 100). kube-apiserver's defaults (400 read and 200
# mutating requests in flight, shared by API Priority and Fairness) are far above what
# 8 client threads, the operator and these controllers keep in flight, and etcd's 2 GiB
# quota above what 5,000 of each object take.
#
# The Endpoints and EndpointSlice controllers are off: KWOK gives pods loopback IPs
# (127.64.x.y, so local processes can serve them), which the API server refuses in
# Endpoints and EndpointSlices, and both controllers retry without end: ~1,200 failed
# creates and ~1,200 warning events per minute at 200 Ready pods, a core of
# kube-apiserver at a few thousand. Nothing here reads Endpoints.
SERVICE_RANGE = "10.96.0.0/16"  # 65,534 ClusterIPs
CONTROLLER_MANAGER_FLAGS = (
    # pflag appends a repeated string list to the harness's --controllers=*
    "--controllers=-endpoints-controller,-endpointslice-controller,"
    "-endpointslice-mirroring-controller",
    "--kube-api-qps=400",
    "--kube-api-burst=600",
    "--concurrent-deployment-syncs=20",
    "--concurrent-replicaset-syncs=20",
    f"--service-cluster-ip-range={SERVICE_RANGE}",
)
SCHEDULER_FLAGS = ("--kube-api-qps=400", "--kube-api-burst=600")


def _with_flags(base: Launch, flags: Iterable[str]) -> Launch:
    extra = list(flags)

    def argv(ports: list[int]) -> list[str]:
        return [*base.argv(ports), *extra]

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
    content_type: str = "application/json",
) -> bytes:
    method, url, headers, serialized, _ = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Accept": accept, "Content-Type": content_type},
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
        # From the API server's watch cache, not etcd: the polls of 5,000 objects stay
        # cheap for the API server the operator shares.
        query=[("resourceVersion", "0")],
    )
    items: list[dict] = json.loads(data).get("items") or []
    return items


def watch_events(
    api: client.ApiClient,
    path: str,
    query: list[tuple[str, str]],
    stop: threading.Event,
    timeout: int = 60,
) -> Iterator[dict]:
    """One raw watch request on `path` (one JSON event a line) from the query's
    resourceVersion: every event, ERROR ones included, until the server ends the watch
    after `timeout` s or `stop` is set."""
    response = api.call_api(
        *api.param_serialize(
            "GET",
            path,
            query_params=[("watch", "true"), ("timeoutSeconds", str(timeout)), *query],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )[:4],
        _request_timeout=(10, timeout + 30),
    )
    buffer = b""
    try:
        for chunk in response.response.stream(65536, decode_content=True):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
            if stop.is_set():
                return
    finally:
        response.response.release_conn()


class CollectionWatch:
    """One kind in one namespace as a watch delivers it: name -> summary(object), kept
    by a thread from a list (the watch cache) and a watch from its resourceVersion (a
    410 relists). Measuring by watch costs the API server one event per change, where a
    poll re-serializes every object each time (at 1,000 objects, three lists every 0.5 s
    took as much kube-apiserver CPU as a tenth of the run)."""

    def __init__(
        self, api: client.ApiClient, kind: str, ns: str, summary: Callable[[dict], Any]
    ) -> None:
        self.api, self.path, self.summary = api, COLLECTIONS[kind].format(ns=ns), summary
        self.kind = kind
        self.items: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"watch-{kind}", daemon=True)

    def __enter__(self) -> CollectionWatch:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stopping.set()

    def snapshot(self) -> dict[str, Any]:
        if self.error is not None:
            raise RuntimeError(f"the {self.kind} watch failed: {self.error}")
        with self.lock:
            return dict(self.items)

    def _list(self) -> str:
        data = json.loads(request(self.api, "GET", self.path, query=[("resourceVersion", "0")]))
        with self.lock:
            self.items = {i["metadata"]["name"]: self.summary(i) for i in data.get("items") or []}
        return str(data["metadata"]["resourceVersion"])

    def _run(self) -> None:
        try:
            rv = self._list()
            while not self.stopping.is_set():
                rv = self._watch(rv) or self._list()
        except BaseException as e:  # reported by snapshot()
            self.error = e

    def _watch(self, rv: str) -> str | None:
        """Follow the watch from `rv` until the server ends it; None: relist (410)."""
        query = [("resourceVersion", rv), ("allowWatchBookmarks", "true")]
        for event in watch_events(self.api, self.path, query, self.stopping):
            obj = event["object"]
            if event["type"] == "ERROR":
                if obj.get("code") == 410:
                    return None
                raise RuntimeError(f"watch error: {obj}")
            rv = obj["metadata"]["resourceVersion"]
            if event["type"] == "BOOKMARK":
                continue
            name = obj["metadata"]["name"]
            with self.lock:
                if event["type"] == "DELETED":
                    self.items.pop(name, None)
                else:
                    self.items[name] = self.summary(obj)
        return rv


def md_summary(md: dict) -> tuple[Any, Any, Any]:
    status = md.get("status") or {}
    return (
        md["metadata"].get("generation"),
        status.get("observedGeneration"),
        status.get("reason"),
    )


def ready_replicas(deployment: dict) -> int:
    return int((deployment.get("status") or {}).get("readyReplicas") or 0)


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


def machine_probe(rounds: int = 3) -> float:
    """Seconds for a fixed piece of pure-Python work (best of `rounds`), taken before the
    control plane starts: runs at different hours can only be compared by their ratios
    unless the machine was as fast, and this says whether it was (the same code took 52 s
    at 1,000 one morning and 160 s one afternoon, the plain floor 37 s and 84 s)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        sum(i * i for i in range(5_000_000))
        best = min(best, time.perf_counter() - started)
    return best


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


def node_pool_for(count: int) -> NodePool:
    """The harness's h100 and a100 groups (labels, taint), with enough nodes of
    PODS_PER_NODE pods (2 GPUs each) for `count` ModelDeployments spread over GPU_TYPES,
    plus room for the edited one's rollouts; no other group."""
    base = load_node_pool()
    per_type = -(-count // len(GPU_TYPES)) + 8
    groups = []
    for group in base.groups:
        if group.name not in GPU_GROUPS.values() or group.gpu is None:
            continue
        groups.append(
            dataclasses.replace(
                group,
                count=-(-per_type // PODS_PER_NODE),
                pods=PODS_PER_NODE,
                gpu=dataclasses.replace(group.gpu, count=2 * PODS_PER_NODE),
            )
        )
    return dataclasses.replace(base, groups=tuple(groups))


def apply_body(
    api: client.ApiClient, obj: Mapping[str, Any], subresource: str | None = None
) -> dict[str, Any]:
    """Server-side apply as the operator does it (kube/calls.py apply): field manager
    openmodel, forced."""
    meta = obj["metadata"]
    path = f"{COLLECTIONS[obj['kind']].format(ns=meta['namespace'])}/{meta['name']}"
    if subresource:
        path = f"{path}/{subresource}"
    data = request(
        api,
        "PATCH",
        path,
        obj,
        content_type="application/apply-patch+yaml",
        query=[("fieldManager", "openmodel"), ("force", "true")],
    )
    result: dict[str, Any] = json.loads(data)
    return result


def same_writes(api: client.ApiClient, body: Mapping[str, Any]) -> None:
    """The writes the operator must make for one ModelDeployment, by a plain client: its
    create, server-side apply of its Deployment and Service as the operator renders them
    (owner reference included), and one status apply shaped like the operator's first."""
    ns = body["metadata"]["namespace"]
    created = json.loads(request(api, "POST", COLLECTIONS["ModelDeployment"].format(ns=ns), body))
    md = parse_model_deployment(created)
    cfg = PlatformConfig()
    plan = make_plan(md, cfg, None)
    deployment = apply_body(api, plan.children.deployment)
    apply_body(api, plan.children.service)
    name = created["metadata"]["name"]
    obs = Observation(
        generation=int(created["metadata"].get("generation") or 0),
        name=name,
        label_selector=label_selector(name),
        endpoint=endpoint(md, cfg),
        desired_replicas=plan.replicas,
        deployment=deployment,
        pods=(),
        gpu=f"{plan.gpu.count}x {md.spec.gpu.type}",
        sizing=plan.gpu.estimate,
    )
    status = build_status(obs, None, utc_now()).status
    apply_body(
        api,
        {
            "apiVersion": created["apiVersion"],
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": ns},
            "status": status,
        },
        subresource="status",
    )


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
    same_seconds: float = float("nan")  # the same-writes floor
    operator_creates_seconds: float = float("nan")
    operator_deployments_seconds: float = float("nan")
    operator_seconds: float = float("nan")  # every Deployment + Service + observedGeneration
    operator_ready_seconds: float = float("nan")  # every status Ready
    controllers_ready_seconds: float = float("nan")  # every Deployment readyReplicas >= 1
    quiet_after: float = float("nan")
    quiet: bool = False
    window: float = 0.0
    metrics_delta: dict[MetricKey, float] = dataclasses.field(default_factory=dict)
    window_requests: list[Request] = dataclasses.field(default_factory=list)
    converge_requests: list[Request] = dataclasses.field(default_factory=list)
    plain_requests: list[Request] = dataclasses.field(default_factory=list)
    same_requests: list[Request] = dataclasses.field(default_factory=list)
    cpu: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    operator_rss: int = 0
    operator_peak_rss: int = 0
    operator_cpu_total: float = float("nan")
    operator_cpu_converge: float = float("nan")
    operator_log: Path | None = None
    workdir: Path | None = None
    load: list[str] = dataclasses.field(default_factory=list)
    machine_probe: float = float("nan")
    wall: dict[str, float] = dataclasses.field(default_factory=dict)
    calm: list[float] = dataclasses.field(default_factory=list)
    edits_empty: list[float] = dataclasses.field(default_factory=list)
    edits_loaded: list[float] = dataclasses.field(default_factory=list)
    nodes: int = 0

    def phase(self, name: str, cpu: dict[str, float], wall: float) -> None:
        self.cpu[name] = cpu
        self.wall[name] = wall

    profile: Path | None = None


def deadline_for(count: int) -> float:
    """Waits on the whole set scale with it (600 s at 200, 2,500 s at 5,000)."""
    return max(WAIT_DEADLINE, 0.5 * count)


def delete_namespace(api: client.ApiClient, name: str, count: int) -> None:
    request(api, "DELETE", f"/api/v1/namespaces/{name}")
    waited = wait_until(
        f"namespace {name} to be deleted",
        lambda: not namespace_exists(api, name),
        deadline=deadline_for(count),
        interval=1.0,
    )
    log(f"  {name} deleted in {waited:.0f}s")


def floors(
    args: argparse.Namespace,
    count: int,
    api: client.ApiClient,
    audit: AuditLog,
    pool: ThreadPoolExecutor,
    pids: dict[str, int],
    res: Results,
) -> None:
    """Steps 1 and 1b: the plain and the same-writes floor, each namespace deleted after."""
    # 1. plain client
    objects = plain_objects(count)
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
    if (n_dep, n_svc) != (count, count):
        raise RuntimeError(f"{PLAIN_NS} holds {n_dep} Deployments and {n_svc} Services")
    log(
        f"  {res.plain_seconds:.2f}s; deleting {PLAIN_NS}: the next step starts on an empty cluster"
    )
    delete_namespace(api, PLAIN_NS, count)

    # 1b. the same writes as the operator, by a plain client (no operator running yet,
    # and the operator serves only OPERATOR_NS once it runs)
    create_namespace(api, SAME_NS)
    same_bodies = [md_body(i, SAME_NS) for i in range(count)]
    res.calm.append(wait_calm(pids, args.calm, args.calm_deadline))
    log(
        f"step 1b: {count} x (ModelDeployment create, Deployment and Service apply, status "
        f"apply), {args.concurrency} at a time"
    )
    cpu0 = cpu_snapshot(pids)
    same_wall0 = time.time()
    started = time.monotonic()
    for f in [pool.submit(same_writes, api, body) for body in same_bodies]:
        f.result()
    res.same_seconds = time.monotonic() - started
    res.phase("same writes", cpu_delta(cpu0, cpu_snapshot(pids)), res.same_seconds)
    res.same_requests = audit.between(same_wall0, time.time())
    with_status = sum(
        1
        for md in list_items(api, "ModelDeployment", SAME_NS)
        if (md.get("status") or {}).get("observedGeneration") == md["metadata"].get("generation")
    )
    if with_status != count:
        raise RuntimeError(f"{SAME_NS}: {with_status} of {count} ModelDeployments have a status")
    log(f"  {res.same_seconds:.2f}s; deleting {SAME_NS}")
    delete_namespace(api, SAME_NS, count)


def run(
    args: argparse.Namespace,
    count: int,
    workdir: Path,
    res: Results,
    stack: contextlib.ExitStack,
) -> None:
    res.source = operator_source(args)
    res.count, res.concurrency, res.workdir = count, args.concurrency, workdir
    res.load.append(Path("/proc/loadavg").read_text().split(" ", 1)[0])
    res.machine_probe = machine_probe()
    log(f"{count} ModelDeployments: workdir {workdir}; starting the control plane")
    # As harness.start_local_cluster does, with the audited kube-apiserver.
    pool_spec = node_pool_for(count)
    plane = BenchControlPlane.start(workdir / "cluster", pod_network=pool_spec.pod_network)
    stack.callback(plane.stop)
    audit = AuditLog(plane.workdir / "audit.log")
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    api.user_agent = USER_AGENT
    pool = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="bench")
    stack.callback(pool.shutdown, wait=True, cancel_futures=True)
    nodes = apply_node_pool(api, pool_spec.with_pod_network(plane.pod_network))
    res.nodes = len(nodes)
    wait_nodes_ready(api, nodes)
    install_crd(api)
    pids = {name: c.pid for name, c in plane.components.items()}
    deadline = deadline_for(count)

    if args.floors:
        floors(args, count, api, audit, pool, pids, res)
    else:
        log("floors skipped (--no-floors)")

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

    # 2a. single-edit latency on the (nearly) empty cluster: the baseline
    edit_body = md_body(0, OPERATOR_NS)
    edit_body["metadata"]["name"] = EDIT_NAME
    create(api, edit_body)
    wait_until(f"{EDIT_NAME} to be Ready", lambda: md_ready(api, OPERATOR_NS, EDIT_NAME))
    log(f"step 2a: {EDITS} edits of {EDIT_NAME}, one ModelDeployment in the cluster")
    res.edits_empty = edit_latencies(api, OPERATOR_NS, EDIT_NAME, "empty", EDITS)
    log(f"  median {median(res.edits_empty):.3f}s")

    bodies = [md_body(i, OPERATOR_NS) for i in range(count)]
    names = {b["metadata"]["name"] for b in bodies}
    res.calm.append(wait_calm(pids, args.calm, args.calm_deadline))
    log(
        f"step 2: {len(bodies)} ModelDeployments, {args.concurrency} at a time, followed by watches"
    )
    profiler = start_profiler(
        args.py_spy if count >= args.py_spy_from else None, op.process.pid, workdir, stack
    )
    watched_deployments = CollectionWatch(api, "Deployment", OPERATOR_NS, ready_replicas)
    watched_services = CollectionWatch(api, "Service", OPERATOR_NS, lambda _s: True)
    watched_mds = CollectionWatch(api, "ModelDeployment", OPERATOR_NS, md_summary)
    for w in (watched_deployments, watched_services, watched_mds):
        w.__enter__()
    cpu0 = cpu_snapshot(pids)
    wall0 = time.time()
    started = time.monotonic()
    futures = create_all(api, pool, bodies)
    progress = {"deployments": 0, "services": 0, "converged": 0}

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
        log(f"  timed out: {progress}")
        raise
    finally:
        res.operator_cpu_converge = cpu_seconds(op.process.pid) - cpu0["operator"]
        res.phase("operator run", cpu_delta(cpu0, cpu_snapshot(pids)), time.monotonic() - started)
        res.converge_requests = audit.between(wall0, time.time())
        res.profile = stop_profiler(profiler)
    log(f"  {res.operator_seconds:.2f}s; waiting until every one is Ready")

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
        log(
            f"  Ready after {res.operator_ready_seconds:.1f}s "
            f"(every Deployment's pod after {res.controllers_ready_seconds:.1f}s)"
        )
    except Timeout:
        log(f"  not all Ready: {progress}; going on")
    finally:
        for w in (watched_deployments, watched_services, watched_mds):
            w.__exit__()

    # 3. requests per minute once converged
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

    # 3b. single-edit latency with `count` ModelDeployments in the cluster
    log(f"step 3b: {EDITS} edits of {EDIT_NAME}, {count} other ModelDeployments in the cluster")
    res.edits_loaded = edit_latencies(api, OPERATOR_NS, EDIT_NAME, "loaded", EDITS)
    log(f"  median {median(res.edits_loaded):.3f}s")

    # 4. operator process
    res.load.append(Path("/proc/loadavg").read_text().split(" ", 1)[0])
    res.operator_rss = rss_bytes(op.process.pid)
    res.operator_peak_rss = peak_rss_bytes(op.process.pid)
    res.operator_cpu_total = cpu_seconds(op.process.pid)


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def md_ready(api: client.ApiClient, ns: str, name: str) -> bool:
    md = json.loads(request(api, "GET", f"{COLLECTIONS['ModelDeployment'].format(ns=ns)}/{name}"))
    st = md.get("status") or {}
    return bool(
        st.get("reason") == "Ready" and st.get("observedGeneration") == md["metadata"]["generation"]
    )


def md_caught_up(api: client.ApiClient, ns: str, name: str) -> bool:
    md = json.loads(request(api, "GET", f"{COLLECTIONS['ModelDeployment'].format(ns=ns)}/{name}"))
    observed = (md.get("status") or {}).get("observedGeneration")
    return bool(observed == md["metadata"]["generation"])


def container_env(deployment: Mapping[str, Any], key: str) -> str | None:
    for container in deployment["spec"]["template"]["spec"].get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == key:
                value = env.get("value")
                return None if value is None else str(value)
    return None


EDIT_ENV = "BENCH_EDIT"


def edit_latencies(
    api: client.ApiClient, ns: str, name: str, label: str, edits: int
) -> list[float]:
    """`edits` spec edits of one ModelDeployment (spec.env BENCH_EDIT=<label>-<i>), one at
    a time: seconds from the PATCH's response until a watch on its Deployment delivers the
    new value. The next edit waits until the status has caught up with the previous one."""
    deployments = f"/apis/apps/v1/namespaces/{ns}/deployments"
    # The watch starts at the list's resourceVersion, not the object's: an object left
    # alone while 5,000 others changed has a version older than the watch cache keeps.
    listed = json.loads(
        request(api, "GET", deployments, query=[("fieldSelector", f"metadata.name={name}")])
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
            request(api, "PATCH", path, patch, content_type="application/merge-patch+json")
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


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p90(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


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
    config_file.write_text(args.platform_config or "{}\n")  # every default unless given
    env = {
        "OPENMODEL_RESYNC_SECONDS": str(args.resync),
        "OPENMODEL_CONFIG": str(config_file),
        # The floors' namespaces are not the operator's.
        "OPENMODEL_NAMESPACES": OPERATOR_NS,
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
        f"  machine speed: {res.machine_probe:.3f} s for a fixed Python loop before the "
        "control plane started (lower is faster; compare runs of different hours by it)"
    )
    print(
        "  cores used by other processes (and steal) just before steps 1, 1b and 2: "
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
    ok &= scale_report(res)
    print(f"\nresult: {'every target met' if ok else 'a target was MISSED'}")
    return ok


READS = ("get", "list")


@dataclasses.dataclass(frozen=True)
class Verdict:
    count: int
    target: str
    value: str
    ok: bool


def idle_by_client(res: Results) -> dict[str, tuple[float, float]]:
    """(reads, writes) per minute in the idle window, per client; the operator's Lease
    requests (leader election) as a client of their own."""
    per_min = 60.0 / res.window if res.window else float("nan")
    reads: collections.Counter[str] = collections.Counter()
    writes: collections.Counter[str] = collections.Counter()
    for r in res.window_requests:
        who = r.client
        if who == "operator" and r.resource == "leases":
            who = "operator (Lease)"
        if r.verb in READS:
            reads[who] += 1
        elif r.verb in AUDIT_WRITES:
            writes[who] += 1
    return {c: (reads[c] * per_min, writes[c] * per_min) for c in sorted({*reads, *writes})}


def edit_noise(res: Results) -> float:
    """What the baseline's own spread allows: p90 - median of the empty-cluster edits,
    at least 0.1 s."""
    return max(0.1, p90(res.edits_empty) - median(res.edits_empty))


def verdicts(res: Results) -> list[Verdict]:
    n = res.count
    same_ratio = res.operator_seconds / res.same_seconds
    plain_ratio = res.operator_seconds / res.plain_seconds
    idle = idle_by_client(res)
    op_reads, op_writes = idle.get("operator", (0.0, 0.0))
    out = []
    if res.same_seconds == res.same_seconds:  # not NaN: the floors ran
        out += [
            Verdict(
                n, "operator / same-writes floor <= 1.3", f"{same_ratio:.2f}x", same_ratio <= 1.3
            ),
            Verdict(n, "operator / plain floor <= 2", f"{plain_ratio:.2f}x", plain_ratio <= 2.0),
        ]
    out += [
        Verdict(
            n,
            "idle: 0 operator reads and writes/min (Lease aside)",
            f"{op_reads:.1f} r, {op_writes:.1f} w",
            res.window > 0 and op_reads == 0 and op_writes == 0,
        ),
    ]
    limit = {1000: 250 * 2**20, 5000: 2**30}.get(n)
    if limit is not None:
        out.append(
            Verdict(
                n,
                f"operator peak RSS <= {limit // 2**20} MiB",
                f"{res.operator_peak_rss / 2**20:.0f} MiB",
                0 < res.operator_peak_rss <= limit,
            )
        )
    loaded, empty = median(res.edits_loaded), median(res.edits_empty)
    out.append(Verdict(n, "single edit: median <= 1 s", f"{loaded:.3f} s", loaded <= 1.0))
    noise = edit_noise(res)
    out.append(
        Verdict(
            n,
            f"single edit: median <= baseline + noise ({empty:.3f} + {noise:.3f} s)",
            f"{loaded:.3f} s",
            loaded <= empty + noise,
        )
    )
    return out


def scale_report(res: Results) -> bool:
    """The same-writes floor, readiness, requests per ModelDeployment by verb, idle
    requests by client, the operator's peak RSS and the single-edit latency."""
    n = res.count
    print(f"\n-- scale: {n} ModelDeployments, {res.nodes} KWOK GPU nodes")
    row(f"plain floor: {n} Deployment + {n} Service creates", res.plain_seconds, "s")
    row(f"same-writes floor: {n} x (MD create, 2 applies, status apply)", res.same_seconds, "s")
    same_reqs = collections.Counter(r.verb for r in res.same_requests if r.client == "bench")
    print("    same-writes floor requests: " + ", ".join(f"{v} {c}" for v, c in same_reqs.items()))
    row("operator: every Deployment + Service + observedGeneration", res.operator_seconds, "s")
    row("operator: every status Ready", res.operator_ready_seconds, "s")
    row(
        "controllers: every Deployment's pod Ready (kcm, scheduler, kwok)",
        res.controllers_ready_seconds,
        "s",
    )
    row(
        "  operator's lag behind the controllers (status Ready)",
        res.operator_ready_seconds - res.controllers_ready_seconds,
        "s",
    )
    row(
        "ratio operator / same-writes floor (target <= 1.3)",
        res.operator_seconds / res.same_seconds,
    )
    row("ratio operator / plain floor (target <= 2)", res.operator_seconds / res.plain_seconds)
    op_reqs = [r for r in res.converge_requests if r.client == "operator"]
    by_verb = collections.Counter(r.verb for r in op_reqs)
    print(
        "    operator requests per ModelDeployment while converging, by verb: "
        + ", ".join(f"{v} {c / n:.2f}" for v, c in by_verb.most_common())
        + f"  (total {len(op_reqs) / n:.2f})"
    )
    row("operator CPU seconds while converging", res.operator_cpu_converge, "s")
    row("operator CPU seconds since start", res.operator_cpu_total, "s")
    row("operator peak RSS (VmHWM)", res.operator_peak_rss / 2**20, "MiB")
    print(
        f"    requests per idle minute by client (audit log, watches not logged; window "
        f"{res.window:.0f}s):"
    )
    print(f"      {'client':<40}{'reads':>8}{'writes':>8}")
    for who, (r, w) in idle_by_client(res).items():
        print(f"      {who:<40}{r:8.1f}{w:8.1f}")
    for label, values in (
        ("empty cluster", res.edits_empty),
        (f"{n} in the cluster", res.edits_loaded),
    ):
        print(
            f"    single edit -> Deployment changed ({label}, {len(values)} edits): median "
            f"{median(values):.3f}s, p90 {p90(values):.3f}s, "
            f"max {max(values, default=float('nan')):.3f}s"
        )
    ok = True
    for v in verdicts(res):
        print(f"    {'PASS' if v.ok else 'MISS'}  {v.target}: {v.value}")
        ok &= v.ok
    return ok


def summary(results: list[Results]) -> bool:
    """One table over every count, then every target as PASS/MISS."""
    print("\n== Scale summary ==")
    if results:
        print(f"  {results[0].source}")
    head = (
        "count",
        "plain s",
        "same s",
        "operator s",
        "Ready s",
        "ctrl Ready s",
        "op/same",
        "op/plain",
        "req/MD",
        "op CPU s",
        "peak RSS MiB",
        "idle op r/w per min",
        "edit med s (empty)",
        "edit p90 s (empty)",
    )
    print("  | " + " | ".join(head) + " |")
    print("  |" + "---|" * len(head))
    for res in results:
        op_reqs = sum(1 for r in res.converge_requests if r.client == "operator")
        r_, w_ = idle_by_client(res).get("operator", (0.0, 0.0))
        cells = (
            f"{res.count:,}",
            f"{res.plain_seconds:.2f}",
            f"{res.same_seconds:.2f}",
            f"{res.operator_seconds:.2f}",
            f"{res.operator_ready_seconds:.1f}",
            f"{res.controllers_ready_seconds:.1f}",
            f"{res.operator_seconds / res.same_seconds:.2f}",
            f"{res.operator_seconds / res.plain_seconds:.2f}",
            f"{op_reqs / res.count:.1f}" if res.count else "nan",
            f"{res.operator_cpu_converge:.1f}",
            f"{res.operator_cpu_converge / res.operator_seconds:.2f}",
            f"{res.operator_peak_rss / 2**20:.0f}",
            f"{r_:.0f} / {w_:.0f}",
            f"{median(res.edits_loaded):.3f} ({median(res.edits_empty):.3f})",
            f"{p90(res.edits_loaded):.3f} ({p90(res.edits_empty):.3f})",
        )
        print("  | " + " | ".join(cells) + " |")
    ok = True
    for res in results:
        for v in verdicts(res):
            print(f"  {'PASS' if v.ok else 'MISS'}  {v.count:>5}: {v.target}: {v.value}")
            ok &= v.ok
    return ok


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200, help="one count (see --counts)")
    parser.add_argument(
        "--counts", help="comma-separated counts, a fresh control plane each, e.g. 200,1000,5000"
    )
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
    parser.add_argument(
        "--no-floors",
        dest="floors",
        action="store_false",
        help="skip both floors (their ratios are then not measured)",
    )
    parser.add_argument(
        "--platform-config",
        help="the operator's platform config (YAML text), e.g. 'operator: {apiQPS: 200}'; "
        "default: every default",
    )
    parser.add_argument("--py-spy", help="path to py-spy: profile the operator during step 2")
    parser.add_argument(
        "--py-spy-from", type=int, default=0, help="profile only at counts of at least this"
    )
    parser.add_argument("--keep", action="store_true", help="keep the workdir (all logs)")
    args = parser.parse_args()

    # SIGINT too: a shell starts background jobs with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    counts = [int(c) for c in args.counts.split(",")] if args.counts else [args.count]
    if args.rev:
        # One commit for every count, even if the branch moves during the run.
        args.rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--verify", f"{args.rev}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-bench-reconcile-"))
    results: list[Results] = []
    code = 0
    ok = True
    try:
        for count in counts:
            # A fresh control plane (and operator) for each count.
            res = Results()
            results.append(res)
            try:
                with contextlib.ExitStack() as stack:
                    run(args, count, workdir / f"n{count}", res, stack)
                    log("stopping the operator and the control plane")
            except KeyboardInterrupt:
                log("interrupted; everything this script started was stopped")
                return 130
            except Exception as e:
                log(f"error: {type(e).__name__}: {e}")
                code = 2
            try:
                ok &= report(res)
            except Exception as e:
                if code == 0:
                    raise
                log(f"(partial report failed: {type(e).__name__}: {e})")
                ok = False
            if code:
                break
        try:
            ok &= summary(results)
        except Exception as e:
            if code == 0:
                raise
            log(f"(partial summary failed: {type(e).__name__}: {e})")
            ok = False
        print(f"\nresult over every count: {'every target met' if ok else 'a target was MISSED'}")
        return code or (0 if ok else 1)
    finally:
        if args.keep or code:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
