"""Replicas across nodes on the real LeaderWorkerSet controller: sigs.k8s.io/lws built from
its Go module (hack/build-lws.sh) and run as a host process whose admission webhooks the
API server reaches by url (harness/lws.py), the operator process, the real scheduler and
KWOK H100 nodes.

The pool has two 8 x H100 nodes; the module adds two more of the same type (and removes
them after), so two groups of 2 x 8 fit while other tests' scheduler messages, which
count the pool's nodes, are untouched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import test_kstatus
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from test_argocd_health_vm import argocd_health
from test_engine_network_policy import ENGINE_PORT, process_pod
from test_kstatus import Judge

from openmodel.api import OWNER_LABEL
from openmodel.cli import plan_document
from openmodel.config import parse_config

from harness import Cluster, NotYet, describe_namespace, wait_for
from harness.engine_fleet import EngineFleet
from harness.lws import LwsController, start_lws
from harness.netpol import connects, connects_from
from harness.nodepool import apply_node_pool, wait_nodes_ready
from harness.process_node.sandbox import Sandbox
from openmodel_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    GatewayProcess,
    OperatorProcess,
    condition,
    create_md,
    get_md,
)

pytestmark = pytest.mark.cluster

# test_kstatus.py's fixtures: the kstatus program, with the Flux expressions docs/gitops.md
# shows.
kstatus_bin = test_kstatus.kstatus_bin
kustomization = test_kstatus.kustomization
kstatus_judge = test_kstatus.judge

NAME = "ds"
LWS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"
EXTRA_H100_NODES = 2


def md(namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": "deepseek-ai/DeepSeek-V3",
            "quantization": "fp8",
            "gpu": {"type": "nvidia-h100-80gb"},
        },
    }
    body["spec"].update(spec)
    return body


@pytest.fixture(scope="module")
def extra_h100_nodes(cluster: Cluster, api_client: client.ApiClient) -> Iterator[list[str]]:
    """Two more KWOK 8 x H100 nodes, their pod CIDRs from the end of the pool's network."""
    (h100,) = [g for g in cluster.pool.groups if g.name == "h100"]
    subnets = list(cluster.pool.pod_network.subnets(new_prefix=20))
    extra = dataclasses.replace(
        cluster.pool,
        name_prefix="kwok-lws-",
        groups=(dataclasses.replace(h100, count=EXTRA_H100_NODES),),
        pod_network=subnets[-1],
        node_network=ipaddress.IPv4Network("127.63.0.192/26"),
    )
    names = apply_node_pool(api_client, extra)
    wait_nodes_ready(api_client, names)
    yield names
    core = client.CoreV1Api(api_client)
    for name in names:
        try:
            core.delete_node(name)
        except ApiException as error:
            if error.status != 404:
                raise


@pytest.fixture(scope="module")
def lws(
    cluster: Cluster,
    api_client: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
    extra_h100_nodes: list[str],
) -> Iterator[LwsController]:
    workdir: Path = tmp_path_factory.mktemp("lws")
    controller = start_lws(api_client, cluster.kubeconfig, workdir, keep_crds=False)
    yield controller
    controller.stop()


def pods_of(api: client.ApiClient, namespace: str) -> list[client.V1Pod]:
    return list(
        client.CoreV1Api(api)
        .list_namespaced_pod(namespace, label_selector=f"openmodel.dev/model-deployment={NAME}")
        .items
    )


def ready_md(api: client.ApiClient, namespace: str, lws: LwsController, replicas: int) -> Any:
    def check() -> dict[str, Any] | NotYet:
        lws.check_alive()
        body = get_md(api, namespace, NAME)
        ready = condition(body, "Ready")
        status = body.get("status") or {}
        if ready.get("status") != "True" or status.get("readyReplicas") != replicas:
            return NotYet((ready, status.get("readyReplicas"), condition(body, "Degraded")))
        return body

    return wait_for(check, 90, lambda: describe_namespace(api, namespace) + "\n" + lws.log_tail(30))


def group_pods(
    api: client.ApiClient, namespace: str, groups: int, size: int, lws: LwsController
) -> list[client.V1Pod]:
    """Wait for `groups` groups of `size` running pods, and return them."""

    def check() -> list[client.V1Pod] | NotYet:
        lws.check_alive()
        pods = [p for p in pods_of(api, namespace) if not p.metadata.deletion_timestamp]
        running = [p for p in pods if p.status.phase == "Running" and p.spec.node_name]
        if len(running) != groups * size or len(pods) != groups * size:
            return NotYet([(p.metadata.name, p.status.phase, p.spec.node_name) for p in pods])
        return running

    return wait_for(check, 90, lambda: describe_namespace(api, namespace) + "\n" + lws.log_tail(30))


def verdicts(judge: Judge, obj: dict[str, Any], workdir: Path) -> tuple[str, str, str]:
    """kstatus's status, Flux's (the documented expressions) and Argo CD's health (the
    shipped check, in Argo CD's own Lua VM) of one ModelDeployment object."""
    path = workdir / f"{NAME}-{obj['metadata']['resourceVersion']}.json"
    path.write_text(json.dumps(obj))
    kstatus = judge.of(obj)
    return kstatus["status"], kstatus.get("flux", ""), argocd_health(path)[0]


Change = tuple[str, str, dict[str, Any]]  # kind, watch event type, the object


@contextlib.contextmanager
def recorded(api: client.ApiClient, namespace: str) -> Iterator[list[Change]]:
    """Every change the API server makes from now on to the ModelDeployment, its
    Deployment and its LeaderWorkerSet, as watches deliver them, in arrival order: states
    that last too short for a poll to see (a group or a pod coming up on KWOK) are
    there, and a change caused by another (the operator's reaction to a status) arrives
    after it."""
    # A client of their own: stop() shuts a stream's socket, which must not go back to
    # the test's connection pool.
    api = client.ApiClient(api.configuration)
    custom = client.CustomObjectsApi(api)
    apps = client.AppsV1Api(api)
    lists: dict[str, Callable[..., Any]] = {
        "ModelDeployment": lambda **kw: custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, **kw
        ),
        "Deployment": lambda **kw: apps.list_namespaced_deployment(namespace, **kw),
        "LeaderWorkerSet": lambda **kw: custom.list_namespaced_custom_object(
            *LWS[:2], namespace, LWS[2], **kw
        ),
    }
    # Each watch from its list's version: nothing after this line is missed.
    versions = {kind: as_dict(api, listing())["metadata"]["resourceVersion"]
                for kind, listing in lists.items()}  # fmt: skip
    changes: list[Change] = []
    failures: list[BaseException] = []
    stopping = threading.Event()
    streams = {kind: watch.Watch() for kind in lists}

    def record(kind: str) -> None:
        try:
            for event in streams[kind].stream(
                lists[kind], resource_version=versions[kind], timeout_seconds=300
            ):
                obj = as_dict(api, event["object"])
                if obj["metadata"]["name"] == NAME:
                    changes.append((kind, event["type"], obj))
        except Exception as error:  # stop() cuts the stream's socket
            if not stopping.is_set():
                failures.append(error)

    for kind in lists:
        threading.Thread(target=record, args=(kind,), daemon=True).start()
    try:
        yield changes
    finally:
        stopping.set()
        for stream in streams.values():
            stream.stop()
    assert not failures, failures


def as_dict(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    """An object as the API server serves it (typed client models turned back into JSON)."""
    return obj if isinstance(obj, dict) else api.sanitize_for_serialization(obj)  # type: ignore[no-any-return]


def node_products(api: client.ApiClient, pods: list[client.V1Pod]) -> dict[str, str]:
    core = client.CoreV1Api(api)
    return {
        p.metadata.name: core.read_node(p.spec.node_name).metadata.labels["nvidia.com/gpu.product"]
        for p in pods
    }


@pytest.mark.parametrize(
    ("model", "quantization"),
    [("deepseek-ai/DeepSeek-V3", "fp8"), ("meta-llama/Llama-3.1-405B-Instruct", "none")],
    ids=["deepseek-v3-fp8", "llama-405b-bf16"],
)
def test_a_replica_lands_as_two_pods_on_two_distinct_h100_nodes(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    lws: LwsController,
    model: str,
    quantization: str,
) -> None:
    create_md(api_client, md(namespace, model=model, quantization=quantization))
    body = ready_md(api_client, namespace, lws, 1)
    status = body["status"]
    assert status["gpu"] == "2 nodes x 8x nvidia-h100-80gb"
    assert (status["sizing"]["nodes"], status["sizing"]["gpuCount"]) == (2, 8)
    assert status["sizing"]["layout"] == "2 x 8 x nvidia-h100-80gb"
    # No Deployment: the LeaderWorkerSet the real controller turned into a group.
    apps = client.AppsV1Api(api_client)
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment(NAME, namespace)
    assert missing.value.status == 404
    group = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        *LWS[:2], namespace, LWS[2], NAME
    )
    assert group["spec"]["leaderWorkerTemplate"]["size"] == 2
    pods = group_pods(api_client, namespace, 1, 2, lws)
    nodes = {p.spec.node_name for p in pods}
    assert len(nodes) == 2, [(p.metadata.name, p.spec.node_name) for p in pods]
    assert set(node_products(api_client, pods).values()) == {H100_PRODUCT}
    for p in pods:
        limits = p.spec.containers[0].resources.limits
        assert limits["nvidia.com/gpu"] == "8"
    leader = next(p for p in pods if p.metadata.labels["openmodel.dev/role"] == "leader")
    worker = next(p for p in pods if p.metadata.labels["openmodel.dev/role"] == "worker")
    # The LWS webhook's own variables reach the pods, and the engine's flags use them.
    env = {e.name for e in worker.spec.containers[0].env}
    assert {"LWS_LEADER_ADDRESS", "LWS_WORKER_INDEX"} <= env
    args = worker.spec.containers[0].args
    assert args[args.index("--node-rank") + 1] == "$(LWS_WORKER_INDEX)" and "--headless" in args
    # The Service sends requests to the leader only. (Its EndpointSlices stay empty here:
    # KWOK pods have loopback addresses, which an EndpointSlice may not hold.)
    service = client.CoreV1Api(api_client).read_namespaced_service(NAME, namespace)
    selector = service.spec.selector
    assert selector.items() <= leader.metadata.labels.items(), (selector, leader.metadata.labels)
    assert not selector.items() <= worker.metadata.labels.items(), worker.metadata.labels
    assert service.spec.cluster_ip != "None"
    # The group's own headless Service (by LWS), which the leader's address resolves through.
    leader_address = next(
        e.value for e in worker.spec.containers[0].env if e.name == "LWS_LEADER_ADDRESS"
    )
    assert leader_address == f"{NAME}-0.{NAME}-0.{namespace}"
    headless = wait_for(
        lambda: _service(api_client, namespace, f"{NAME}-0") or NotYet("no Service ds-0"),
        30,
        lambda: lws.log_tail(30),
    )
    assert headless.spec.cluster_ip == "None"


def _service(api: client.ApiClient, namespace: str, name: str) -> client.V1Service | None:
    try:
        return client.CoreV1Api(api).read_namespaced_service(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def test_a_layout_that_cannot_be_placed_is_degraded_naming_the_pod(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    lws: LwsController,
    kstatus_judge: Judge,
    tmp_path: Path,
) -> None:
    # Three 8 x A100 pods per replica; the pool has two A100 nodes.
    create_md(
        api_client,
        md(
            namespace,
            model="meta-llama/Llama-3.1-405B-Instruct",
            quantization="none",
            gpu={"type": "nvidia-a100-80gb", "count": 8, "nodes": 3},
        ),
    )

    def degraded() -> dict[str, Any] | NotYet:
        lws.check_alive()
        c = condition(get_md(api_client, namespace, NAME), "Degraded")
        if c.get("status") != "True" or c.get("reason") != "Unschedulable":
            return NotYet(c)
        return c

    c = wait_for(degraded, 90, lambda: describe_namespace(api_client, namespace))
    assert "pod ds-0" in c["message"], c
    assert "Insufficient nvidia.com/gpu" in c["message"] or "didn't match" in c["message"], c
    live = get_md(api_client, namespace, NAME)
    assert verdicts(kstatus_judge, live, tmp_path) == ("Failed", "Failed", "Degraded"), live


def test_deleting_a_worker_recreates_the_group(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    lws: LwsController,
    kstatus_judge: Judge,
    tmp_path: Path,
) -> None:
    """The group comes up, loses a worker, comes back whole; kstatus, Flux and Argo CD
    read it as the conditions say: in progress while a group is incomplete, current
    (healthy) once every group is ready."""
    with recorded(api_client, namespace) as changes:
        create_md(api_client, md(namespace))
        ready_md(api_client, namespace, lws, 1)
        assert_group_verdicts(api_client, namespace, kstatus_judge, tmp_path, changes)
        recreate_the_group(api_client, namespace, lws)
        ready_md(api_client, namespace, lws, 1)
        assert_group_verdicts(api_client, namespace, kstatus_judge, tmp_path, changes)


def assert_group_verdicts(
    api: client.ApiClient,
    namespace: str,
    judge: Judge,
    workdir: Path,
    changes: list[Change],
) -> None:
    versions = [obj for kind, _, obj in changes if kind == "ModelDeployment"]
    live = get_md(api, namespace, NAME)
    assert verdicts(judge, live, workdir) == ("Current", "Current", "Healthy"), live["status"]
    # The statuses written before, of this layout, not ready: the last of them.
    coming = [
        v for v in versions
        if "nodes" in (v.get("status") or {}).get("gpu", "")
        and condition(v, "Ready").get("status") == "False"
        and condition(v, "Degraded").get("status") != "True"
    ]  # fmt: skip
    assert coming, [v.get("status") for v in versions]
    last = coming[-1]
    print("incomplete group:", last["status"].get("readyReplicas"), condition(last, "Ready"))
    assert verdicts(judge, last, workdir) == ("InProgress", "InProgress", "Progressing"), last


def recreate_the_group(api_client: client.ApiClient, namespace: str, lws: LwsController) -> None:
    pods = group_pods(api_client, namespace, 1, 2, lws)
    leader = next(p for p in pods if p.metadata.labels["openmodel.dev/role"] == "leader")
    worker = next(p for p in pods if p.metadata.labels["openmodel.dev/role"] == "worker")
    core = client.CoreV1Api(api_client)
    core.delete_namespaced_pod(worker.metadata.name, namespace, grace_period_seconds=0)

    # RecreateGroupOnPodRestart: the leader goes too, and the group comes back whole.
    def recreated() -> list[client.V1Pod] | NotYet:
        now = group_pods(api_client, namespace, 1, 2, lws)
        uids = {p.metadata.uid for p in now}
        if leader.metadata.uid in uids or worker.metadata.uid in uids:
            return NotYet([(p.metadata.name, p.metadata.uid) for p in now])
        return now

    again = wait_for(recreated, 90, lambda: describe_namespace(api_client, namespace))
    assert len({p.spec.node_name for p in again}) == 2


def test_a_layout_edit_switches_deployment_and_group_as_a_rollout(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    lws: LwsController,
) -> None:
    """405B in fp8 fits one node (a Deployment); in bf16 it spans two (a group). Each
    edit brings the new kind up beside the serving old one, which goes once the new one
    is ready (Event WorkloadReplaced both ways): there and back."""
    create_md(
        api_client,
        md(namespace, model="meta-llama/Llama-3.1-405B-Instruct", quantization="fp8"),
    )
    ready_md(api_client, namespace, lws, 1)
    apps = client.AppsV1Api(api_client)
    assert apps.read_namespaced_deployment(NAME, namespace).spec.replicas == 1
    with recorded(api_client, namespace) as changes:
        switch_layout(api_client, namespace, lws, "none")
        body = ready_md(api_client, namespace, lws, 1)
        assert body["status"]["gpu"] == "2 nodes x 8x nvidia-h100-80gb"
        group_pods(api_client, namespace, 1, 2, lws)
        forth = len(changes)
        # Back to one node.
        switch_layout(api_client, namespace, lws, "fp8")
        body = ready_md(api_client, namespace, lws, 1)
        assert body["status"]["gpu"] == "8x nvidia-h100-80gb"
    # The group was created while the Deployment still served (KWOK pods are ready at
    # once; readiness of a group is counted from its pods, so its creation is what
    # the watch shows), and the Deployment went only after.
    there, back = changes[:forth], changes[forth:]
    steps = [(kind, kind_event) for kind, kind_event, _ in there]
    assert steps.index(("LeaderWorkerSet", "ADDED")) < steps.index(("Deployment", "DELETED"))
    # Back: the new Deployment was created, then ready (as its status says), and only
    # then was the group deleted.
    timeline = [
        (kind, kind_event, (obj.get("status") or {}).get("readyReplicas", 0))
        for kind, kind_event, obj in back
        if kind != "ModelDeployment"
    ]
    created = timeline.index(("Deployment", "ADDED", 0))
    ready = next(i for i, (kind, _, n) in enumerate(timeline) if kind == "Deployment" and n)
    group_deleted = [step[:2] for step in timeline].index(("LeaderWorkerSet", "DELETED"))
    assert created < ready < group_deleted, timeline
    replaced = {
        e.message
        for e in client.CoreV1Api(api_client)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}")
        .items
        if e.reason == "WorkloadReplaced"
    }
    assert replaced == {
        f"Deployment/{NAME} deleted: the LeaderWorkerSet of the new layout serves",
        f"LeaderWorkerSet/{NAME} deleted: the Deployment of the new layout serves",
    }, replaced


def workloads(api: client.ApiClient, namespace: str) -> tuple[bool, bool]:
    """Whether the ModelDeployment's Deployment, and its LeaderWorkerSet, exist."""
    found = []
    for read in (
        lambda: client.AppsV1Api(api).read_namespaced_deployment(NAME, namespace),
        lambda: group_replicas(api, namespace),
    ):
        try:
            read()
            found.append(True)
        except ApiException as error:
            if error.status != 404:
                raise
            found.append(False)
    return found[0], found[1]


def switch_layout(
    api: client.ApiClient, namespace: str, lws: LwsController, quantization: str
) -> None:
    """Edit spec.quantization (fp8: one node, else two) and wait until only the new
    kind is left."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"quantization": quantization}}
    )
    to_group = quantization != "fp8"

    def switched() -> bool | NotYet:
        lws.check_alive()
        deployment, group = workloads(api, namespace)
        return (group, deployment) == (to_group, not to_group) or NotYet((deployment, group))

    wait_for(switched, 90, lambda: describe_namespace(api, namespace))


def group_replicas(api: client.ApiClient, namespace: str) -> int:
    group = client.CustomObjectsApi(api).get_namespaced_custom_object(
        *LWS[:2], namespace, LWS[2], NAME
    )
    return int(group["spec"]["replicas"])


async def complete(url: str, model: str, count: int) -> list[int]:
    """`count` completions at once through the gateway; their HTTP statuses."""
    timeout = aiohttp.ClientTimeout(total=240)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one() -> int:
            body = {"model": model, "prompt": "hello", "max_tokens": 4}
            async with session.post(f"{url}/v1/completions", json=body) as answer:
                await answer.read()
                return answer.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


def test_groups_scale_1_2_0_1_through_the_autoscaler_and_the_gateway(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    gateway: GatewayProcess,
    lws: LwsController,
) -> None:
    served = f"ds-{namespace}"  # the session's one gateway routes every namespace
    create_md(
        api_client,
        md(
            namespace,
            servedModelName=served,
            autoscaling={
                "minReplicas": 0,
                "maxReplicas": 2,
                "targetQueueDepth": 1,
                "scaleDownStabilizationSeconds": 3,
                "scaleToZeroAfterSeconds": 30,
            },
        ),
    )
    fleet = EngineFleet(
        api_client, namespace, NAME, served_model=served, slots=1, service_time=6.0
    ).start()
    describe = lambda: describe_namespace(api_client, namespace) + "\n" + lws.log_tail(20)  # noqa: E731
    try:
        # Autoscaled from zero: nothing runs until a request comes.
        wait_for(
            lambda: condition(get_md(api_client, namespace, NAME), "Ready").get("reason")
            == "ScaledToZero" or NotYet(condition(get_md(api_client, namespace, NAME), "Ready")),
            60,
            describe,
        )  # fmt: skip
        assert group_replicas(api_client, namespace) == 0 and pods_of(api_client, namespace) == []
        # 0 -> 1: a request held by the gateway wakes one group, and is answered by it.
        assert asyncio.run(complete(gateway.url, served, 1)) == [200]
        assert group_replicas(api_client, namespace) == 1
        # 1 -> 2: eight at once on one slot queue up far past the target of 1; both
        # groups run and are ready while they are served.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            burst = pool.submit(asyncio.run, complete(gateway.url, served, 8))
            wait_for(
                lambda: (
                    group_replicas(api_client, namespace) == 2
                    or NotYet(group_replicas(api_client, namespace))
                ),
                30,
                describe,
            )
            group_pods(api_client, namespace, 2, 2, lws)
            ready_md(api_client, namespace, lws, 2)
            statuses = burst.result(timeout=240)
        assert statuses == [200] * 8, statuses

        # 2 -> 0: idle past scaleToZeroAfterSeconds; no pod of a group is left behind.
        def at_zero() -> bool | NotYet:
            left = (group_replicas(api_client, namespace), len(pods_of(api_client, namespace)))
            return left == (0, 0) or NotYet(left)

        wait_for(at_zero, 120, describe)
        # 0 -> 1 again.
        assert asyncio.run(complete(gateway.url, served, 1)) == [200]
        assert group_replicas(api_client, namespace) == 1
        # Every request went to a leader: no worker's engine saw one.
        handles = [*fleet.retired, *fleet.handles.values()]
        workers = [(pod, h.stats.requests) for pod, h in handles if pod.count("-") == 2]
        leaders = [(pod, h.stats.requests) for pod, h in handles if pod.count("-") == 1]
        assert workers and all(n == 0 for _, n in workers), workers
        assert sum(n for _, n in leaders) == 10, leaders
    finally:
        fleet.stop()


def test_without_leader_worker_set_a_replica_across_nodes_is_degraded(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    lws: LwsController,
) -> None:
    """Last in the module: the controller and its CRDs are removed first."""
    lws.stop()
    create_md(api_client, md(namespace))

    def degraded() -> dict[str, Any] | NotYet:
        c = condition(get_md(api_client, namespace, NAME), "Degraded")
        if c.get("status") != "True" or c.get("reason") != "LeaderWorkerSetUnavailable":
            return NotYet(c)
        return c

    c = wait_for(degraded, 60, lambda: describe_namespace(api_client, namespace))
    assert "leaderworkersets.leaderworkerset.x-k8s.io/v1" in c["message"]
    assert "2 nodes" in c["message"] or "spans nodes" in c["message"]
    # Nothing else changed: no engine was started in its place.
    apps = client.AppsV1Api(api_client)
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment(NAME, namespace)
    assert missing.value.status == 404
    assert pods_of(api_client, namespace) == []
    # A model of one node is served as before.
    single = md(namespace, model="meta-llama/Llama-3.1-8B-Instruct", quantization="none")
    single["metadata"]["name"] = "small"
    create_md(api_client, single)
    wait_for(
        lambda: (
            condition(get_md(api_client, namespace, "small"), "Ready").get("status") == "True"
            or NotYet(condition(get_md(api_client, namespace, "small"), "Ready"))
        ),
        60,
        lambda: describe_namespace(api_client, namespace),
    )


RENDEZVOUS_PORT = 29500  # torch.distributed's default: the group rule names no port


def test_a_groups_pods_reach_each_other_and_no_other_model_deployments_pod(
    api_client: client.ApiClient, cluster: Cluster, namespace: str
) -> None:
    """The group's NetworkPolicy as `openmodel render` prints it, enforced on the process
    nodes (harness/netpol.py): a leader and a worker (pods labelled as the rendered
    templates label them, listening on the engine port and a rendezvous port) reach each
    other on both; a pod of another ModelDeployment of the namespace (under no policy)
    reaches neither, and the worker does not reach it."""
    cluster.require_process_nodes()
    body = md(namespace, model="pvc://weights/ds", gpu={"type": "nvidia-h100-80gb", "count": 8,
                                                         "nodes": 2})  # fmt: skip
    config = parse_config({"privacy": {"networkPolicy": {"enabled": True}}})
    objects = {o["kind"]: o for o in plan_document(body, config, online=False).children.all()}
    policy = objects["NetworkPolicy"]
    policy["metadata"].pop("ownerReferences", None)  # no ModelDeployment here
    client.NetworkingV1Api(api_client).create_namespaced_network_policy(namespace, policy)
    templates = objects["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    serve = ["sh", "-c", f"python3 -m http.server {ENGINE_PORT} & "
             f"exec python3 -m http.server {RENDEZVOUS_PORT}"]  # fmt: skip
    labels = {
        "leader": templates["leaderTemplate"]["metadata"]["labels"],
        "worker": templates["workerTemplate"]["metadata"]["labels"],
        "other": {OWNER_LABEL: "other"},
    }
    core = client.CoreV1Api(api_client)
    for name, pod_labels in labels.items():
        core.create_namespaced_pod(namespace, process_pod(name, pod_labels, serve))

    def addresses() -> dict[str, str] | NotYet:
        found = {}
        for name in labels:
            status = core.read_namespaced_pod(name, namespace).status
            if status.phase != "Running" or not status.pod_ip:
                return NotYet(f"{name}: {status.phase}")
            found[name] = status.pod_ip
        up = all(connects(ip, port, greeting=False) for ip in found.values()
                 for port in (ENGINE_PORT, RENDEZVOUS_PORT))  # fmt: skip
        return found if up else NotYet("not every pod listens yet")

    ips = wait_for(addresses, 60, lambda: describe_namespace(api_client, namespace))

    def reaches(source: str, target: str, port: int) -> bool:
        netns = Sandbox(ipaddress.IPv4Address(ips[source])).netns
        return connects_from(netns, ips[target], port, greeting=False)

    paths = [(s, t, p) for s, t in (("leader", "worker"), ("worker", "leader"), ("other", "leader"),
                                    ("other", "worker"), ("worker", "other"))
             for p in (ENGINE_PORT, RENDEZVOUS_PORT)]  # fmt: skip
    reached = {f"{s}->{t}:{p}": reaches(s, t, p) for s, t, p in paths}
    assert reached == {f"{s}->{t}:{p}": "other" not in (s, t) for s, t, p in paths}, reached
