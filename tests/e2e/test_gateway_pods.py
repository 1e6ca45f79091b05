"""The gateway as real pods behind its Service: two replicas from the shipped manifests
on the process nodes, one deleted under load (its preStop sleep keeps it serving while
the endpoints let it go, then it drains: nothing lost), then one SIGKILLed (what was on
it is lost). The numbers are printed (``-s``) and recorded in docs/reliability.md,
section 10.

What is installed: manifests/gateway.yaml and the platform config of manifests/config.yaml
(auth ``enforce`` as shipped), as objects patched in this test only (the shipped files
stay as a user gets them): the namespace is the test's own; the ClusterRole and its
binding get names of the test's own (they are cluster-wide, and test_install.py installs
the originals); the Deployment gets 2 replicas, a toleration for the GPU taint and a
nodeSelector for the process nodes (the only nodes that really run pods, and all of them
carry the taint); the config routes only the test's model namespace. The pods run image
``openmodel/operator:0.1.0`` as rendered (harness/process_nodes.py: the repository's
venv), with their ServiceAccount's token, the API server at 10.0.0.1:443 and the
simulated engines on the KWOK pods' addresses (harness/process_node/).

How clients reach it: there is no kube-proxy, so the Service's ClusterIP leads nowhere.
The clients here do what a client-side balancer does with a Service: they watch its
EndpointSlices and spread requests over the endpoints that are ``ready`` (a terminating
pod's endpoint is not), each request on a new connection. A connection refused before
anything was sent is tried on the next endpoint (what a balancer does on a connect
failure, e.g. Envoy's ``connect-failure`` retry); it is counted, and a request fails when
every endpoint refused it or anything else than a 200 came back. That is the Service as
a client-side balancer sees it, not through a ClusterIP.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client, watch

from openmodel.config import GATEWAY_METRICS_PORT

from harness import Cluster, NotYet, binaries, describe_namespace, wait_for
from harness.engine_fleet import EngineFleet
from harness.k8s import create_namespace, delete_namespace, service_account_token
from harness.nodepool import RUNTIME_LABEL
from harness.operator import API_KEY_CRD_FILE
from openmodel_fixtures import GROUP, VERSION, OperatorProcess, create_md, install_crd

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
SERVICE = "openmodel-gateway"
GATEWAY_LABELS = "app.kubernetes.io/name=openmodel,app.kubernetes.io/component=gateway"
REPLICAS = 2
CLIENTS = 8
# Requests each pod answers before a step: the load is steady before each disruption.
STEADY = 300
MODEL = "gwpods"


def gateway_objects(namespace: str, model_namespace: str) -> list[dict[str, Any]]:
    """The gateway's shipped objects and platform config, patched for this test (see
    the module docstring for each patch and why)."""
    objects = [
        obj
        for name in ("config.yaml", "gateway.yaml")
        for obj in yaml.safe_load_all((REPO / "manifests" / name).read_text())
        if obj
    ]
    cluster_name = f"{SERVICE}-{namespace}"
    for obj in objects:
        meta = obj["metadata"]
        if "namespace" in meta:
            meta["namespace"] = namespace
        if obj["kind"] == "ClusterRole":
            meta["name"] = cluster_name
        elif obj["kind"] == "ClusterRoleBinding":
            meta["name"] = obj["roleRef"]["name"] = cluster_name
            for subject in obj["subjects"]:
                subject["namespace"] = namespace
        elif obj["kind"] == "Deployment":
            obj["spec"]["replicas"] = REPLICAS
            pod = obj["spec"]["template"]["spec"]
            pod.setdefault("tolerations", []).append(
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            )
            pod.setdefault("nodeSelector", {})[RUNTIME_LABEL] = "process"
        elif obj["kind"] == "ConfigMap" and meta["name"] == "openmodel-config":
            config = yaml.safe_load(obj["data"]["config.yaml"]) or {}
            gateway = config.setdefault("gateway", {})
            assert gateway["auth"]["mode"] == "enforce", config  # as shipped
            gateway["namespaces"] = [model_namespace]
            gateway["demandNamespace"] = namespace
            # Limits on (far above the load), shared by `replicas: auto`: each gateway
            # counts the ready gateway pods and enforces its share.
            gateway["limits"] = {"perIdentity": {"requestsPerMinute": 10_000_000}}
            obj["data"]["config.yaml"] = yaml.safe_dump(config)
    return objects


LIMIT_REPLICAS = "openmodel_gateway_limit_replicas"


def gauge(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    (value,) = [
        float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
    ]
    return value


def kubectl_apply(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    done = subprocess.run(
        [
            str(binaries.require_bin_dir() / "kubectl"),
            f"--kubeconfig={cluster.kubeconfig}",
            "apply",
            "--server-side",
            "-f",
            "-",
        ],
        input=yaml.safe_dump_all(objects),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@dataclass
class Install:
    namespace: str  # the gateway's
    token: str  # the caller's: a ServiceAccount of the model namespace allowed to `use`


@pytest.fixture
def install(
    cluster: Cluster, api_client: client.ApiClient, operator: OperatorProcess, namespace: str
) -> Iterator[Install]:
    cluster.require_process_nodes()
    install_crd(api_client, API_KEY_CRD_FILE)  # the gateway watches APIKeys
    gateway_namespace = create_namespace(api_client, "e2e-gwpods-sys")
    rbac = client.RbacAuthorizationV1Api(api_client)
    fleet = EngineFleet(api_client, namespace, MODEL, slots=32, service_time=0.01)
    try:
        create_md(api_client, model_deployment(namespace))
        client.CoreV1Api(api_client).create_namespaced_service_account(
            namespace, {"metadata": {"name": "client"}}
        )
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "use"},
                "rules": [
                    {"apiGroups": [GROUP], "resources": ["modeldeployments"], "verbs": ["use"]}
                ],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "use"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "use"},
                "subjects": [{"kind": "ServiceAccount", "name": "client", "namespace": namespace}],
            },
        )
        fleet.start()
        wait_for(lambda: len(fleet.urls()) == 1 or NotYet(fleet.urls()), 60, "an engine")
        kubectl_apply(cluster, gateway_objects(gateway_namespace, namespace))
        token = service_account_token(api_client, namespace, "client")
        yield Install(gateway_namespace, token)
    finally:
        fleet.stop()
        delete_namespace(api_client, gateway_namespace)
        name = f"{SERVICE}-{gateway_namespace}"
        for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            try:
                delete(name)
            except client.ApiException as e:
                if e.status != 404:
                    raise


def model_deployment(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL, "namespace": namespace},
        "spec": {
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "servedModelName": MODEL,
            "gpu": {"type": "nvidia-h100-80gb", "count": 1},
            "maxModelLen": 4096,
            "replicas": 1,
        },
    }


class ServiceEndpoints:
    """The Service's ready endpoints as a client-side balancer sees them: a watch on its
    EndpointSlices, each change stamped with the time it arrived."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.ready: tuple[str, ...] = ()
        self.history: list[tuple[float, tuple[str, ...]]] = []
        self._slices: dict[str, tuple[str, ...]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endpointslices", daemon=True)

    def start(self) -> ServiceEndpoints:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        discovery = client.DiscoveryV1Api(self.api)
        selector = f"kubernetes.io/service-name={SERVICE}"
        while not self._stop.is_set():
            stream = watch.Watch()
            for event in stream.stream(
                discovery.list_namespaced_endpoint_slice,
                self.namespace,
                label_selector=selector,
                timeout_seconds=2,
            ):
                if event["type"] == "ERROR":
                    break
                obj: client.V1EndpointSlice = event["object"]
                name = obj.metadata.name
                if event["type"] == "DELETED":
                    self._slices.pop(name, None)
                else:
                    self._slices[name] = tuple(
                        ep.addresses[0]
                        for ep in obj.endpoints or []
                        # A nil `ready` means ready (discovery/v1); terminating ones are not.
                        if ep.conditions is None or ep.conditions.ready is not False
                    )
                ready = tuple(sorted({ip for ips in self._slices.values() for ip in ips}))
                if ready != self.ready:
                    self.ready = ready
                    self.history.append((time.monotonic(), ready))
                if self._stop.is_set():
                    stream.stop()

    def dropped_at(self, ip: str, after: float) -> float | None:
        """When `ip` first left the ready endpoints after `after`."""
        return next((t for t, ips in self.history if t > after and ip not in ips), None)

    def joined_at(self, ip: str, after: float) -> float | None:
        return next((t for t, ips in self.history if t > after and ip in ips), None)


@dataclass
class Outcome:
    started: float
    ended: float
    ip: str  # the endpoint that answered (or the last one tried)
    status: int | None
    error: str | None = None
    refused: list[str] = field(default_factory=list)  # endpoints that refused it first

    @property
    def ok(self) -> bool:
        return self.status == 200


class Load:
    """CLIENTS clients sending chat completions over the ready endpoints, round robin,
    until stopped; every outcome kept."""

    def __init__(self, endpoints: ServiceEndpoints, token: str, model: str) -> None:
        self.endpoints = endpoints
        self.token = token
        self.model = model
        self.outcomes: list[Outcome] = []
        self._next = itertools.count()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        # A new connection for each request: see the module docstring.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._client(session) for _ in range(CLIENTS)))

    def stop(self) -> None:
        self._stop.set()

    async def _client(self, session: aiohttp.ClientSession) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
        }
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self._stop.is_set():
            view = self.endpoints.ready
            assert view, "no ready endpoint"
            start = next(self._next)
            outcome = Outcome(time.monotonic(), 0.0, "", None)
            for attempt in range(len(view)):
                outcome.ip = view[(start + attempt) % len(view)]
                try:
                    async with session.post(
                        f"http://{outcome.ip}:8080/v1/chat/completions", json=body, headers=headers
                    ) as r:
                        answer = await r.read()
                        outcome.status = r.status
                        if r.status != 200:
                            outcome.error = answer[:120].decode(errors="replace")
                    break
                except aiohttp.ClientConnectorError:
                    outcome.refused.append(outcome.ip)  # nothing was sent
                except (aiohttp.ClientError, TimeoutError) as e:
                    outcome.error = f"{type(e).__name__}: {e}"
                    break
            outcome.ended = time.monotonic()
            self.outcomes.append(outcome)

    def since(self, start: float) -> int:
        return sum(1 for o in self.outcomes if o.started >= start)

    def served_by(self, ip: str, after: float) -> int:
        return sum(1 for o in self.outcomes if o.ok and o.ip == ip and o.started >= after)


def gateway_pods(api: client.ApiClient, namespace: str) -> list[client.V1Pod]:
    return list(
        client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=GATEWAY_LABELS).items
    )


def ready_pod_ips(pods: list[client.V1Pod]) -> set[str]:
    return {
        p.status.pod_ip
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    }


def gateway_logs(cluster: Cluster, namespace: str) -> str:
    """The tail of every gateway container log on the process nodes."""
    logs = sorted((cluster.workdir / "nodes").glob(f"*/pods/{namespace}_*/logs/gateway/*.log"))
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


def summary(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if not o.ok]
    refused = sum(len(o.refused) for o in outcomes)
    seen = {(o.status, o.error) for o in failed}
    return (
        f"{len(outcomes)} requests, {len(failed)} failed {sorted(seen, key=str)[:5]}, "
        f"{refused} connections refused and tried elsewhere"
    )


@dataclass
class Disruption:
    """One gateway pod taken away under load, as the clients lived it."""

    pod: str
    ip: str
    at: float
    dropped: float  # seconds until the clients' view no longer had it
    in_flight: list[Outcome]  # requests on it when it was taken away
    outcomes: list[Outcome]  # every request that ended from `at` to the step's end
    replaced: float | None = None  # seconds until a replacement was in the clients' view

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def exposed(self) -> list[Outcome]:
        """The requests that went to it from `at` until the clients' view dropped it
        (those in flight at `at` included)."""
        return [o for o in self.outcomes if o.ip == self.ip and o.started <= self.at + self.dropped]

    def line(self, what: str) -> str:
        replaced = "" if self.replaced is None else f", replaced after {self.replaced:.2f}s"
        return (
            f"{what} {self.pod} ({self.ip}): the EndpointSlice dropped it after "
            f"{self.dropped:.3f}s{replaced}; {len(self.in_flight)} requests in flight on it, "
            f"{sum(o.ok for o in self.in_flight)} answered 200; {len(self.exposed)} sent to "
            f"it before the drop; {summary(self.outcomes)}"
        )


class Scenario:
    """Load over the Service's endpoints and the steps that disrupt it, each awaited
    with a deadline (wait_for in a thread, so the clients keep running)."""

    def __init__(
        self, api: client.ApiClient, install: Install, endpoints: ServiceEndpoints, what: Any
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.namespace = install.namespace
        self.endpoints = endpoints
        self.load = Load(endpoints, install.token, MODEL)
        self.what = what

    async def until(self, predicate: Any, timeout: float, describe: Any) -> Any:
        return await asyncio.to_thread(wait_for, predicate, timeout, describe, interval=0.05)

    async def steady(self, since: float) -> None:
        """Until every ready endpoint has answered STEADY requests since `since`."""
        load = self.load
        await self.until(
            lambda: (
                all(load.served_by(ip, since) >= STEADY for ip in self.endpoints.ready)
                or NotYet({ip: load.served_by(ip, since) for ip in self.endpoints.ready})
            ),
            60,
            lambda: f"steady load ({summary(load.outcomes)})\n{self.what()}",
        )

    def pod_at(self, ip: str) -> client.V1Pod:
        return next(p for p in gateway_pods(self.api, self.namespace) if p.status.pod_ip == ip)

    async def delete(self, ip: str) -> Disruption:
        """Delete the pod at `ip` (graceful: it drains); over once it is gone, its
        replacement is in the EndpointSlice and has had its share of the load."""
        pod = self.pod_at(ip).metadata.name
        before = set(self.endpoints.ready)
        at = time.monotonic()
        await asyncio.to_thread(self.core.delete_namespaced_pod, pod, self.namespace)

        def replaced() -> bool | NotYet:
            names = {p.metadata.name for p in gateway_pods(self.api, self.namespace)}
            ips = set(self.endpoints.ready)
            done = pod not in names and len(ips) == REPLICAS and ips - before
            return True if done else NotYet(ips)

        await self.until(replaced, 90, self.what)
        await self.steady(time.monotonic())
        disruption = self._disruption(pod, ip, at)
        joined = [self.endpoints.joined_at(new, at) for new in set(self.endpoints.ready) - before]
        disruption.replaced = min(t for t in joined if t is not None) - at
        return disruption

    async def kill(self, ip: str) -> Disruption:
        """SIGKILL the gateway process of the pod at `ip` (the node restarts it later,
        with back-off); over once the clients' view dropped it and the others took
        STEADY requests more."""
        pod = self.pod_at(ip)
        pid = int(pod.status.container_statuses[0].container_id.removeprefix("process://"))
        at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await self.until(
            lambda: self.endpoints.dropped_at(ip, at) or NotYet(self.endpoints.ready),
            30,
            "the killed pod to leave the EndpointSlice",
        )
        await self.steady(time.monotonic())
        return self._disruption(pod.metadata.name, ip, at)

    def _disruption(self, pod: str, ip: str, at: float) -> Disruption:
        dropped = self.endpoints.dropped_at(ip, at)
        assert dropped is not None, self.endpoints.history
        outcomes = self.load.outcomes
        return Disruption(
            pod,
            ip,
            at,
            dropped - at,
            [o for o in outcomes if o.ip == ip and o.started < at < o.ended],
            [o for o in outcomes if o.ended >= at],
        )

    async def run(self, *steps: Any) -> list[Disruption]:
        """Start the load, wait for it to be steady, run the steps in order (each an
        async callable returning a Disruption), stop the load."""
        running = asyncio.create_task(self.load.run())
        try:
            await self.steady(time.monotonic())
            return [await step() for step in steps]
        finally:
            self.load.stop()
            await running


def test_a_gateway_pod_deleted_or_killed_under_load(
    api_client: client.ApiClient, cluster: Cluster, install: Install
) -> None:
    gw = install.namespace

    def what() -> str:
        return describe_namespace(api_client, gw) + "\n" + gateway_logs(cluster, gw)

    def two_ready() -> set[str] | NotYet:
        pods = gateway_pods(api_client, gw)
        ips = ready_pod_ips(pods)
        return ips if len(ips) == REPLICAS == len(pods) else NotYet(ips)

    pod_ips = wait_for(two_ready, 90, what)
    (hook,) = {
        p.spec.containers[0].lifecycle.pre_stop.sleep.seconds for p in gateway_pods(api_client, gw)
    }
    assert hook > 0, "the shipped gateway keeps serving a moment before it drains"

    def limit_shares() -> list[float] | NotYet:
        shares = [
            gauge(f"http://{ip}:{GATEWAY_METRICS_PORT}/metrics", LIMIT_REPLICAS)
            for ip in sorted(pod_ips)
        ]
        return shares if shares == [REPLICAS] * REPLICAS else NotYet(shares)

    # `replicas: auto`: each pod found the other and takes half of every budget.
    wait_for(limit_shares, 30, "each gateway pod to count two replicas for its limits")
    endpoints = ServiceEndpoints(api_client, gw).start()
    try:
        # Every process-node pod IP is in the Service's EndpointSlice (no kube-proxy:
        # the clients take the addresses from there).
        wait_for(
            lambda: set(endpoints.ready) == pod_ips or NotYet(endpoints.ready),
            30,
            "the EndpointSlice to list both gateway pods",
        )
        first, second = sorted(pod_ips)
        shipped = Scenario(api_client, install, endpoints, what)
        deleted, killed = asyncio.run(
            shipped.run(lambda: shipped.delete(first), lambda: shipped.kill(second))
        )

    finally:
        endpoints.stop()

    rate = len(shipped.load.outcomes) / (
        shipped.load.outcomes[-1].ended - shipped.load.outcomes[0].started
    )
    print(
        f"\ngateway pods under load ({CLIENTS} clients, {rate:.0f} requests/s):\n"
        f"  {deleted.line('deleted')}\n"
        f"  {killed.line('SIGKILL of the gateway in')}"
    )
    # A deleted pod keeps serving through its preStop sleep while the clients' view
    # drops it, then drains: every request it had answers, none is refused or lost.
    assert all(o.ok for o in deleted.in_flight), summary(deleted.in_flight)
    assert not deleted.failed, summary(deleted.outcomes)
    assert not [o for o in deleted.outcomes if o.refused], summary(deleted.outcomes)
    # A SIGKILL loses at most what went to the process: the requests in flight on it
    # and the connections made to it before the clients' view dropped it.
    assert set(map(id, killed.failed)) <= set(map(id, killed.exposed)), summary(killed.outcomes)
    assert {ip for o in killed.outcomes for ip in o.refused} <= {second}
