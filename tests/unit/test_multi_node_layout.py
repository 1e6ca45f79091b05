"""A replica that spans nodes: the LeaderWorkerSet the renderer makes, field by field, the
engines' multi-node flags, the NetworkPolicy between a group's pods, the group counts
status reads, and the switch between a Deployment and a LeaderWorkerSet."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from fake_api_server import FakeApiServer
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.api import LWS_API_VERSION, OWNER_LABEL, SERVING_POD_SELECTOR, SpecError
from openmodel.autoscaler import loop as loop_module
from openmodel.autoscaler.demand import DemandReport
from openmodel.autoscaler.loop import AutoscalerLoop
from openmodel.config import PlatformConfig, parse_config
from openmodel.engines import ENGINES, parse_model_deployment
from openmodel.engines.base import NodeGroup
from openmodel.inference_extension.discovery import CrdDiscovery
from openmodel.kube.pods import serving
from openmodel.problems import GROUP_NAME_TAKEN
from openmodel.reconcile.plan import make_plan
from openmodel.reconcile.reconciler import Reconciler, ReconcileResult
from openmodel.reconcile.render import TEMPLATE_HASH_ANNOTATION, render_children
from openmodel.reconcile.status import Observation, build_status
from openmodel.reconcile.workload import (
    LWS_PLURAL,
    can_retire,
    group_counts,
    group_index,
    may_have_group,
    pod_templates,
    rolled_out,
)

LWS_REQUIRED = ((LWS_API_VERSION, LWS_PLURAL),)

BASE: dict[str, Any] = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "ds", "namespace": "team-a", "uid": "u-1", "generation": 2},
    "spec": {
        "model": "deepseek-ai/DeepSeek-V3",
        "quantization": "fp8",
        "gpu": {"type": "nvidia-h100-80gb"},
    },
}


def md_with(**spec: Any) -> Any:
    body = copy.deepcopy(BASE)
    body["spec"].update(spec)
    return parse_model_deployment(body)


def group_of(engine: str = "vllm", config: PlatformConfig | None = None) -> dict[str, Any]:
    md = md_with(engine=engine)
    children = render_children(md, config or PlatformConfig(), 8, 1, nodes=2)
    lws = children.deployment
    assert lws["kind"] == "LeaderWorkerSet"
    return lws  # type: ignore[no-any-return]


def templates(lws: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    group = lws["spec"]["leaderWorkerTemplate"]
    return group["leaderTemplate"], group["workerTemplate"]


def args_of(template: dict[str, Any]) -> list[str]:
    return template["spec"]["containers"][0]["args"]  # type: ignore[no-any-return]


def flag(args: list[str], name: str) -> str | None:
    assert args.count(name) <= 1, f"{name} repeated in {args}"
    return args[args.index(name) + 1] if name in args else None


def test_the_plan_sizes_deepseek_v3_on_h100_as_two_pods_of_eight() -> None:
    plan = make_plan(md_with(), PlatformConfig(), current_replicas=None)
    assert (plan.gpu.nodes, plan.gpu.count) == (2, 8)
    assert plan.gpu.text("nvidia-h100-80gb") == "2 nodes x 8x nvidia-h100-80gb"
    assert plan.gpu.estimate is not None
    assert plan.gpu.estimate["nodes"] == 2 and plan.gpu.estimate["layout"] == (
        "2 x 8 x nvidia-h100-80gb"
    )
    assert plan.children.deployment["kind"] == "LeaderWorkerSet"


def test_one_node_stays_a_deployment_with_no_group_labels() -> None:
    md = md_with(model="meta-llama/Llama-3.1-70B-Instruct", quantization="none")
    plan = make_plan(md, PlatformConfig(), current_replicas=None)
    assert plan.gpu.nodes == 1
    dep = plan.children.deployment
    assert dep["kind"] == "Deployment"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert "openmodel.dev/role" not in labels
    assert "podAntiAffinity" not in dep["spec"]["template"]["spec"]["affinity"]


def test_the_leader_worker_set_group() -> None:
    lws = group_of()
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lws["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    spec = lws["spec"]
    assert spec["replicas"] == 1
    assert spec["startupPolicy"] == "LeaderCreated"
    # Not LWS's shared headless Service, which would take the engine Service's name.
    assert spec["networkConfig"] == {"subdomainPolicy": "UniquePerReplica"}
    group = spec["leaderWorkerTemplate"]
    assert group["size"] == 2
    assert group["restartPolicy"] == "RecreateGroupOnPodRestart"


def test_vllm_leader_and_worker_launch_flags() -> None:
    leader, worker = templates(group_of("vllm"))
    lead, work = args_of(leader), args_of(worker)
    for args in (lead, work):
        assert flag(args, "--tensor-parallel-size") == "8"
        assert flag(args, "--pipeline-parallel-size") == "2"
        assert flag(args, "--nnodes") == "2"
        assert flag(args, "--master-addr") == "$(LWS_LEADER_ADDRESS)"
    assert flag(lead, "--node-rank") == "0" and "--headless" not in lead
    assert flag(work, "--node-rank") == "$(LWS_WORKER_INDEX)" and "--headless" in work
    # The same engine configuration on every rank, bar the rank and --headless.
    assert [a for a in lead if a != "0"] == [
        a for a in work if a not in ("$(LWS_WORKER_INDEX)", "--headless")
    ]


def test_sglang_leader_and_worker_launch_flags() -> None:
    leader, worker = templates(group_of("sglang"))
    lead, work = args_of(leader), args_of(worker)
    for args in (lead, work):
        assert flag(args, "--tp-size") == "8"
        assert flag(args, "--pp-size") == "2"
        assert flag(args, "--nnodes") == "2"
        assert flag(args, "--dist-init-addr") == "$(LWS_LEADER_ADDRESS):5000"
    assert flag(lead, "--node-rank") == "0"
    assert flag(work, "--node-rank") == "$(LWS_WORKER_INDEX)"


@pytest.mark.parametrize("engine", ["tgi", "llamacpp"])
def test_engines_without_a_multi_node_launch_refuse_gpu_nodes(engine: str) -> None:
    assert not ENGINES[engine].spans_nodes
    body = copy.deepcopy(BASE)
    body["spec"].update(engine=engine, quantization="none", gpu={"type": "nvidia-h100-80gb",
                        "count": 8, "nodes": 2})  # fmt: skip
    if engine == "llamacpp":
        body["spec"].update(model="pvc://models/x.gguf")
    with pytest.raises(SpecError) as err:
        parse_model_deployment(body)
    assert err.value.field == "spec.gpu.nodes"
    assert err.value.reason == "UnsupportedMultiNode"


def test_engines_with_a_multi_node_launch() -> None:
    assert ENGINES["vllm"].spans_nodes and ENGINES["sglang"].spans_nodes
    group = NodeGroup(nodes=3, leader=False, rank="2", leader_address="lead")
    args = ENGINES["vllm"].args(md_with().spec, 8, group)
    assert "--headless" in args and flag(args, "--nnodes") == "3"


def test_probes_on_the_leader_only_and_the_same_placement_on_every_pod() -> None:
    leader, worker = templates(group_of())
    lead_c, work_c = leader["spec"]["containers"][0], worker["spec"]["containers"][0]
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(lead_c)
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(work_c)
    assert lead_c["resources"] == work_c["resources"] == {"limits": {"nvidia.com/gpu": "8"}}
    assert leader["spec"]["affinity"] == worker["spec"]["affinity"]
    assert leader["spec"]["tolerations"] == worker["spec"]["tolerations"]
    anti = leader["spec"]["affinity"]["podAntiAffinity"]
    term = anti["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["matchLabelKeys"] == ["leaderworkerset.sigs.k8s.io/group-key"]
    assert term["labelSelector"] == {"matchLabels": {"openmodel.dev/model-deployment": "ds"}}


def test_the_service_and_pool_select_leaders_never_workers() -> None:
    config = parse_config({"inferenceExtension": {"enabled": True, "gateway": {"name": "g"}}})
    md = md_with()
    children = render_children(md, config, 8, 1, nodes=2)
    leader, worker = templates(children.deployment)
    selector = children.service["spec"]["selector"]
    assert selector.items() <= leader["metadata"]["labels"].items()
    assert not selector.items() <= worker["metadata"]["labels"].items()
    assert children.inference_pool is not None
    pool = children.inference_pool["spec"]["selector"]["matchLabels"]
    assert pool == selector
    # A Deployment's pods are selected by the same Service (a switch is a rollout).
    single = render_children(md, config, 8, 1)
    pod_labels = single.deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert single.service["spec"]["selector"] == selector


def test_loops_leave_workers_out() -> None:
    leader, worker = templates(group_of())
    pods = [
        {"metadata": {"name": "ds-0", "labels": leader["metadata"]["labels"]}},
        {"metadata": {"name": "ds-0-1", "labels": worker["metadata"]["labels"]}},
        {"metadata": {"name": "dep-pod", "labels": {"openmodel.dev/model-deployment": "ds"}}},
    ]
    assert [p["metadata"]["name"] for p in serving(pods)] == ["ds-0", "dep-pod"]
    assert SERVING_POD_SELECTOR == "openmodel.dev/model-deployment,openmodel.dev/role!=worker"


def test_network_policy_lets_a_groups_pods_reach_each_other_and_dns() -> None:
    config = parse_config({"privacy": {"networkPolicy": {"enabled": True}}})
    md = md_with()
    policy = render_children(md, config, 8, 1, nodes=2).network_policy
    single = render_children(md, config, 8, 1).network_policy
    assert policy is not None and single is not None
    group = {"podSelector": {"matchLabels": {"openmodel.dev/model-deployment": "ds"}}}
    assert {"from": [group]} in policy["spec"]["ingress"]
    assert {"to": [group]} in policy["spec"]["egress"]
    assert {"from": [group]} not in single["spec"]["ingress"]
    dns = config.privacy.network_policy.dns_egress
    assert all(dict(rule) in policy["spec"]["egress"] for rule in dns)


def test_the_template_hash_follows_the_templates() -> None:
    first = group_of()
    again = group_of()
    leader, worker = templates(first)
    digest = leader["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    assert worker["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] == digest
    assert templates(again)[0]["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] == digest
    other = render_children(md_with(args=["--max-num-seqs", "64"]), PlatformConfig(), 8, 1, nodes=2)
    changed = templates(other.deployment)[0]["metadata"]["annotations"]
    assert changed[TEMPLATE_HASH_ANNOTATION] != digest
    assert len(pod_templates(first)) == 2


def pod(
    group: int, worker: int, digest: str, ready: bool = True, phase: str = "Running"
) -> dict[str, Any]:
    labels = {
        "openmodel.dev/model-deployment": "ds",
        "leaderworkerset.sigs.k8s.io/name": "ds",
        "leaderworkerset.sigs.k8s.io/group-index": str(group),
        "openmodel.dev/role": "leader" if worker == 0 else "worker",
    }
    return {
        "metadata": {
            "name": f"ds-{group}" + ("" if worker == 0 else f"-{worker}"),
            "labels": labels,
            "annotations": {TEMPLATE_HASH_ANNOTATION: digest},
        },
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def lws_with(replicas: int) -> dict[str, Any]:
    lws = group_of()
    lws["spec"]["replicas"] = replicas
    return lws


def test_a_group_is_ready_when_its_leader_is_ready_and_its_workers_run() -> None:
    lws = lws_with(2)
    digest = templates(lws)[0]["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    pods = [pod(0, 0, digest), pod(0, 1, digest, ready=False), pod(1, 0, digest, ready=False),
            pod(1, 1, digest)]  # fmt: skip
    counts = group_counts(lws, pods)
    assert (counts.want, counts.present, counts.ready, counts.updated) == (2, 2, 1, 2)
    assert not rolled_out(lws, pods)
    pods[2] = pod(1, 0, digest)
    assert group_counts(lws, pods).ready == 2 and rolled_out(lws, pods)
    # A worker not running yet, or missing: its group is not ready.
    pods[3] = pod(1, 1, digest, phase="Pending")
    assert group_counts(lws, pods).ready == 1
    assert group_counts(lws, pods[:3]).ready == 1
    # Groups of an earlier template are not counted as updated or ready.
    stale = [pod(0, 0, "old"), pod(0, 1, "old")]
    assert group_counts(lws_with(1), stale).updated == 0


def test_status_reads_groups() -> None:
    lws = lws_with(1)
    digest = templates(lws)[0]["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    pods = [pod(0, 0, digest), pod(0, 1, digest)]
    obs = Observation(
        generation=2, name="ds", label_selector="x", endpoint=None, desired_replicas=1,
        deployment=lws, pods=pods, gpu="2 nodes x 8x nvidia-h100-80gb",
        groups=group_counts(lws, pods),
    )  # fmt: skip
    status = build_status(obs, None, "2026-12-05T00:00:00Z").status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["message"] == "1/1 replicas ready"
    assert status["readyReplicas"] == 1


def test_the_unplaceable_worker_is_quoted() -> None:
    lws = lws_with(1)
    digest = templates(lws)[0]["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    stuck = pod(0, 1, digest, ready=False, phase="Pending")
    stuck["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}
    ]  # fmt: skip
    obs = Observation(
        generation=2, name="ds", label_selector="x", endpoint=None, desired_replicas=1,
        deployment=lws, pods=[pod(0, 0, digest, ready=False), stuck],
        groups=group_counts(lws, [pod(0, 0, digest, ready=False), stuck]),
    )  # fmt: skip
    status = build_status(obs, None, "2026-12-05T00:00:00Z").status
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "Unschedulable"
    assert "ds-0-1" in degraded["message"] and "Insufficient nvidia.com/gpu" in degraded["message"]


def test_the_old_kind_goes_once_the_new_one_serves() -> None:
    lws = lws_with(1)
    digest = templates(lws)[0]["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    deployment = {"kind": "Deployment", "spec": {"replicas": 1}, "metadata": {}}
    assert not can_retire(deployment, lws, [pod(0, 0, digest, ready=False), pod(0, 1, digest)])
    assert can_retire(deployment, lws, [pod(0, 0, digest), pod(0, 1, digest)])
    assert not can_retire(deployment, None, [])
    assert can_retire({"kind": "Deployment", "spec": {"replicas": 0}}, None, [])


def test_when_a_group_may_exist() -> None:
    assert may_have_group({"gpu": "2 nodes x 8x nvidia-h100-80gb"}, [], None)
    assert may_have_group({}, [], 2)
    assert not may_have_group({"gpu": "8x nvidia-h100-80gb"}, [], None)
    assert may_have_group(None, [pod(0, 0, "x")], None)


@pytest.mark.parametrize("served", [True, False])
def test_the_autoscaler_without_a_cache_lists_groups_too(
    monkeypatch: pytest.MonkeyPatch, served: bool
) -> None:
    lws = lws_with(1)
    listed = copy.deepcopy(lws)
    del listed["kind"]  # a list's items may come without their kind
    deployment = {"metadata": {"name": "other", "namespace": "team-a"}}
    asked: list[tuple[str, str]] = []

    def list_cluster_wide(api: Any, resource: str, label_key: str) -> list[dict[str, Any]]:
        asked.append((resource, label_key))
        if resource == "leaderworkersets":
            if not served:
                raise ApiException(status=404, reason="Not Found")
            return [listed]
        return [deployment] if resource == "deployments" else []

    monkeypatch.setattr(loop_module.kube, "list_cluster_wide", list_cluster_wide)
    loop = AutoscalerLoop(api=client.ApiClient(), config=PlatformConfig())
    workloads, _ = asyncio.run(loop._owned())
    assert sorted(resource for resource, _ in asked) == ["deployments", "leaderworkersets", "pods"]
    assert dict(asked)["leaderworkersets"] == OWNER_LABEL
    if served:
        assert workloads == [deployment, {**listed, "kind": "LeaderWorkerSet"}]
    else:
        assert workloads == [deployment]


@pytest.mark.parametrize("taken", [True, False])
def test_the_autoscaler_holds_a_group_that_yielded_its_names(
    monkeypatch: pytest.MonkeyPatch, taken: bool
) -> None:
    body = copy.deepcopy(BASE)
    body["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3}
    if taken:
        degraded = {"type": "Degraded", "status": "True", "reason": GROUP_NAME_TAKEN}
        body["status"] = {"conditions": [degraded]}
    lws = lws_with(1)
    lws["metadata"]["labels"] = {OWNER_LABEL: "ds"}
    scaled: list[str] = []
    loop = AutoscalerLoop(api=client.ApiClient(), config=PlatformConfig())

    async def model_deployments() -> list[dict[str, Any]]:
        return [body]

    async def owned() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return [lws], []

    async def demand(mds: Any) -> DemandReport:
        return DemandReport(by_model={}, complete=True)

    async def scale_one(scraper: Any, md: dict[str, Any], *rest: Any, **kw: Any) -> None:
        scaled.append(md["metadata"]["name"])

    monkeypatch.setattr(loop, "_model_deployments", model_deployments)
    monkeypatch.setattr(loop, "_owned", owned)
    monkeypatch.setattr(loop, "_demand", demand)
    monkeypatch.setattr(loop, "scale_one", scale_one)
    asyncio.run(loop.cycle(scraper=None))  # type: ignore[arg-type]
    assert scaled == ([] if taken else ["ds"])


# -- group names: LWS calls group i `<name>-<i>` (its leader pod, headless Service, workers'
# StatefulSet), which another ModelDeployment may be called -------------------------------


def test_group_index_reads_names_as_lws_makes_them() -> None:
    assert [group_index(n, "ds") for n in ("ds-0", "ds-12", "ds-1")] == [0, 12, 1]
    for other in ("ds", "ds-", "ds-01", "ds-x", "ds-0-1", "dsa-0", "ds-+1", "ds-\u0661"):
        assert group_index(other, "ds") is None, other


def neighbour(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "team-a", "uid": f"u-{name}", "generation": 1},
        "spec": {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "gpu": {"type": "nvidia-h100-80gb"},
            **spec,
        },
    }


def pass_over(
    monkeypatch: pytest.MonkeyPatch, name: str, mds: list[dict[str, Any]], *found: dict[str, Any]
) -> tuple[FakeApiServer, ReconcileResult]:
    """One reconcile pass of `name` beside `mds` (LeaderWorkerSets served), with `found`
    already in the namespace."""
    fake = FakeApiServer().install(monkeypatch)
    r = Reconciler(object(), PlatformConfig(), clock=lambda: "2026-12-05T00:00:00Z")  # type: ignore[arg-type]
    r.groups = CrdDiscovery(lambda gv: ["leaderworkersets"], required=LWS_REQUIRED)
    for md in mds:
        fake.objects[("ModelDeployment", "team-a", md["metadata"]["name"])] = md
        r.cache.observe("ModelDeployment", copy.deepcopy(md))
    for obj in found:
        fake.objects[(obj["kind"], "team-a", obj["metadata"]["name"])] = obj
    result = r.reconcile_by_name("team-a", name)
    assert result is not None
    return fake, result


def test_a_group_yields_its_names_to_another_model_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ds = copy.deepcopy(BASE)
    fake, result = pass_over(monkeypatch, "ds", [ds, neighbour("ds-3"), neighbour("ds-0")])
    assert result.problem is not None and result.problem.reason == "GroupNameTaken"
    message = result.problem.message
    assert message.startswith("metadata.name: ") and "LeaderWorkerSet ds" in message
    assert "ModelDeployment ds-0 (group 0), ds-3 (group 3)" in message
    assert "LeaderWorkerSet" not in fake.applied and "Service" in fake.applied
    status = fake.objects[("ModelDeployment", "team-a", "ds")]["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "GroupNameTaken" and "ds-0" in degraded["message"]


def test_names_that_are_no_group_of_it_leave_the_group_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mds = [copy.deepcopy(BASE), *(neighbour(n) for n in ("ds-01", "ds-x", "ds-0-1", "dsa-0"))]
    fake, result = pass_over(monkeypatch, "ds", mds)
    assert result.problem is None, result.problem
    assert "LeaderWorkerSet" in fake.applied


def test_one_node_model_deployments_are_not_groups_and_yield_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, result = pass_over(monkeypatch, "m", [neighbour("m"), neighbour("m-0")])
    assert result.problem is None, result.problem
    assert "Deployment" in fake.applied


def test_a_service_the_group_made_first_is_reported_as_the_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "ds-0",
            "namespace": "team-a",
            "uid": "svc-1",
            "resourceVersion": "5",
            "labels": {"leaderworkerset.sigs.k8s.io/name": "ds"},
            "ownerReferences": [{"kind": "Pod", "name": "ds-0", "uid": "pod-ds-0-uid"}],
        },
        "spec": {"clusterIP": "None"},
    }
    fake, result = pass_over(monkeypatch, "ds-0", [neighbour("ds-0")], headless)
    assert result.problem is not None and result.problem.reason == "ChildNotOwned"
    assert "Service/ds-0 already exists and is owned by Pod/ds-0" in result.problem.message
    assert "LeaderWorkerSet ds made it for its group 0" in result.problem.message
    assert "ModelDeployment ds spans nodes" in result.problem.message
    assert "Deployment" not in fake.applied
