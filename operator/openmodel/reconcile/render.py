"""Pure rendering: a ModelDeployment and the platform config -> the child objects.

No API calls, no clock, no globals: `render_children` is a function of its arguments,
so `openmodel render` prints exactly what the operator applies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from openmodel.accelerators import Accelerator
from openmodel.api import (
    API_VERSION,
    KIND,
    LEADER_ROLE,
    LWS_API_VERSION,
    LWS_KIND,
    OWNER_LABEL,
    READ_ONLY_MANY,
    READ_WRITE_ONCE,
    ROLE_LABEL,
    WORKER_ROLE,
    ModelDeployment,
    SpecError,
)
from openmodel.config import PlatformConfig
from openmodel.engines import engine_for
from openmodel.engines.base import (
    MODEL_MOUNT_ROOT,
    Engine,
    NodeGroup,
    adapter_claims,
    model_source,
    served_model_name,
)
from openmodel.inference_extension.render import render_http_route, render_inference_pool
from openmodel.privacy.egress import EgressPlan, egress_plan
from openmodel.privacy.render import (
    offline_env,
    render_download_network_policy,
    render_network_policy,
    telemetry_env,
)
from openmodel.reconcile import placement
from openmodel.sizing.cpu import estimate_cpu
from openmodel.weights.render import (
    WEIGHTS_FOR_LABEL,
    CachePlan,
    cache_plan,
    render_claim,
    render_download_job,
)

SERVICE_PORT = 8000
CONTAINER_NAME = "engine"
MANAGED_BY = "openmodel"
ENGINE_APP = "openmodel-engine"
APP_LABEL = "app.kubernetes.io/name"
# A replica that spans nodes is a LeaderWorkerSet group (api.LWS_KIND: the Kubernetes SIG
# project for one leader pod and its workers, created, placed, restarted and scaled as one).
# Set by the LWS controller's pod webhook on every pod of a group: the leader's address
# (a DNS name through the group's headless Service) and the pod's index in its group.
LWS_LEADER_ADDRESS_ENV = "LWS_LEADER_ADDRESS"
LWS_WORKER_INDEX_ENV = "LWS_WORKER_INDEX"
# On a LeaderWorkerSet's pod templates: a hash of both, so status can tell the groups of
# the applied templates from those of an earlier one (the kind is not watched).
TEMPLATE_HASH_ANNOTATION = "openmodel.dev/template-hash"
# The label LWS gives every pod of one group (the same value on each).
LWS_GROUP_KEY_LABEL = "leaderworkerset.sigs.k8s.io/group-key"


@dataclass(frozen=True)
class Children:
    # The engine's workload: a Deployment, or a LeaderWorkerSet when a replica spans nodes.
    deployment: dict[str, Any]
    service: dict[str, Any]
    pvc: dict[str, Any] | None
    # Gateway API Inference Extension (platform config `inferenceExtension.enabled`).
    inference_pool: dict[str, Any] | None = None
    http_route: dict[str, Any] | None = None
    # The engine pods' NetworkPolicy (platform config `privacy.networkPolicy.enabled`),
    # and the download Job pods' (only they reach the weights sources then).
    network_policy: dict[str, Any] | None = None
    download_policy: dict[str, Any] | None = None
    # The weights cache (weights/): the download Job, and what it stands for.
    download_job: dict[str, Any] | None = None
    cache: CachePlan | None = None

    def all(self) -> list[dict[str, Any]]:
        # The policies first: no pod runs before what confines it exists.
        objects = (
            self.network_policy,
            self.download_policy,
            self.pvc,
            self.download_job,
            self.deployment,
            self.service,
            self.inference_pool,
            self.http_route,
        )
        return [o for o in objects if o is not None]


def child_labels(md: ModelDeployment) -> dict[str, str]:
    # Deliberately not app.kubernetes.io/instance: Argo CD tracks apps by that label,
    # and children must not look like members of an Argo CD application.
    return {
        OWNER_LABEL: md.name,
        APP_LABEL: ENGINE_APP,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def worker_labels(md: ModelDeployment) -> dict[str, str]:
    """A group's worker pods: the owner label (status, the cache and the NetworkPolicy see
    them) and ROLE_LABEL worker, but not the engine's app name, so no Service, pool or
    gateway ever sends them a request (they serve no HTTP)."""
    return {
        OWNER_LABEL: md.name,
        APP_LABEL: f"{ENGINE_APP}-worker",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        ROLE_LABEL: WORKER_ROLE,
    }


def selector_labels(name: str) -> dict[str, str]:
    """The labels that select a ModelDeployment's pods; only its name is needed, so
    status can report them even for a spec that does not parse."""
    return {OWNER_LABEL: name}


def serving_labels(name: str) -> dict[str, str]:
    """The pods that answer requests: a Deployment's pods and a group's leaders, never
    its workers. The Service and the InferencePool select these (during a switch
    between the two kinds, both kinds' serving pods at once)."""
    return {OWNER_LABEL: name, APP_LABEL: ENGINE_APP}


def label_selector(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def endpoint(md: ModelDeployment, config: PlatformConfig) -> str:
    return f"http://{md.name}.{md.namespace}.svc.{config.cluster_domain}:{SERVICE_PORT}/v1"


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": md.name,
        "uid": md.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(md: ModelDeployment, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": md.namespace, "labels": child_labels(md)}
    if md.uid:
        meta["ownerReferences"] = [owner_reference(md)]
    return meta


def image_for(
    md: ModelDeployment, config: PlatformConfig, accelerator: Accelerator | None = None
) -> str:
    """spec.image, else the platform's image for the engine: on a CPU-only type its
    `<engine>-cpu` image when there is one (the engine's CPU build, `Engine.cpu_image`)."""
    if md.spec.image:
        return md.spec.image
    if accelerator is not None and accelerator.cpu_only:
        cpu_image = config.engine_images.get(f"{md.spec.engine}-cpu")
        if cpu_image:
            return cpu_image
    return config.engine_images[md.spec.engine]


def _resources(md: ModelDeployment, accelerator: Accelerator, gpu_count: int) -> dict[str, Any]:
    if not accelerator.cpu_only:
        return {"limits": placement.gpu_limits(accelerator, gpu_count)}
    # CPU-only: what the GGUF file, its KV cache and the runtime need (sizing/cpu.py).
    estimate = estimate_cpu(md.spec)
    return {"requests": estimate.requests(), "limits": estimate.limits()}


def _probes(engine: Engine, config: PlatformConfig) -> dict[str, Any]:
    def http(period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": engine.health_path, "port": "http"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 5,
        }

    startup_period = 10
    # The HTTP server only listens once the weights are loaded: the startup probe
    # carries the whole loading budget, so liveness never kills a loading pod.
    startup_failures = max(1, -(-config.startup_budget_seconds // startup_period))
    return {
        "startupProbe": http(startup_period, startup_failures),
        "readinessProbe": http(5, 3),
        "livenessProbe": http(10, 6),
    }


def _env(
    md: ModelDeployment,
    engine: Engine,
    config: PlatformConfig,
    cache: CachePlan | None,
    private: bool,
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "HF_HOME", "value": engine.hf_home}]
    ref = md.spec.hf_token_secret_ref
    if ref is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    env.extend(engine.env(md.spec))
    # Weights on claims, or fetched by the download Job: the engine fetches nothing.
    env.extend(offline_env(md.spec, engine, prefetched(cache)))
    # User env after what we generate, so it can override it; the telemetry switches
    # after that, so it cannot turn on what the platform keeps off.
    env.extend(dict(e) for e in md.spec.env)
    env.extend(telemetry_env(engine, config, private))
    return env


def _volumes(
    md: ModelDeployment, engine: Engine, cache: CachePlan | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": engine.shm_size}}
    ]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if cache is not None:
        # A claim filled beforehand (ReadOnlyMany) is only read.
        read_only = {"readOnly": True} if cache.access_mode == READ_ONLY_MANY else {}
        volumes.append(
            {
                "name": "hf-cache",
                "persistentVolumeClaim": {"claimName": cache.claim_name, **read_only},
            }
        )
        mounts.append({"name": "hf-cache", "mountPath": engine.hf_home, **read_only})
    source = model_source(md.spec.model)
    if source.pvc_claim is not None and source.mount_path is not None:
        volumes.append(
            {
                "name": "model-weights",
                "persistentVolumeClaim": {"claimName": source.pvc_claim, "readOnly": True},
            }
        )
        mounts.append({"name": "model-weights", "mountPath": source.mount_path, "readOnly": True})
    for claim in adapter_claims(md.spec):
        name = adapter_volume_name(claim)
        volumes.append(
            {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": name, "mountPath": f"{MODEL_MOUNT_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def adapter_volume_name(claim: str) -> str:
    """`adapter-<claim>`; a volume name is a DNS label (<= 63), so a long claim is cut
    and made unique again with a hash of the whole name."""
    name = f"adapter-{claim}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(claim.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def _tolerations(accelerator: Accelerator) -> dict[str, Any]:
    # Omitted when empty (CPU-only): the API server drops an empty list, and the drift
    # check would see a difference on every pass.
    tolerations = placement.tolerations(accelerator)
    return {"tolerations": tolerations} if tolerations else {}


def _pod_spec(
    md: ModelDeployment,
    config: PlatformConfig,
    accelerator: Accelerator,
    gpu_count: int,
    cache: CachePlan | None,
    private: bool,
    group: NodeGroup | None = None,
) -> dict[str, Any]:
    """The engine pod's spec; with `group`, that pod of a replica spanning nodes: the
    engine's multi-node flags, and probes on the leader only (workers serve no HTTP;
    the group is restarted whole when one of its pods fails)."""
    engine = engine_for(md.spec.engine)
    volumes, mounts = _volumes(md, engine, cache)
    probes = _probes(engine, config) if group is None or group.leader else {}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image_for(md, config, accelerator),
        "command": engine.command(),
        "args": engine.args(md.spec, gpu_count, group) + list(md.spec.args),
        "ports": [{"name": "http", "containerPort": engine.port, "protocol": "TCP"}],
        "env": _env(md, engine, config, cache, private),
        "resources": _resources(md, accelerator, gpu_count),
        "volumeMounts": mounts,
        # An engine that dies while loading writes its reason only to its log; with
        # this the kubelet copies the log's tail into lastState.terminated.message,
        # where status can quote it (pod_failures.engine_failure_message).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **probes,
    }
    affinity = placement.node_affinity(accelerator)
    if group is not None:
        affinity = {**affinity, "podAntiAffinity": _one_pod_of_a_group_per_node(md)}
    return {
        "affinity": affinity,
        **_tolerations(accelerator),
        "containers": [container],
        "volumes": volumes,
        # Engines never call the API server: no token in the pod.
        "automountServiceAccountToken": False,
        # Engines shut down slowly while draining in-flight requests.
        "terminationGracePeriodSeconds": 60,
    }


def _one_pod_of_a_group_per_node(md: ModelDeployment) -> dict[str, Any]:
    """No two pods of one group on one node (a pod per node is what the layout sized,
    also when a pod takes fewer GPUs than a node has); pods of other groups may share."""
    return {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "labelSelector": {"matchLabels": selector_labels(md.name)},
                "matchLabelKeys": [LWS_GROUP_KEY_LABEL],
                "topologyKey": "kubernetes.io/hostname",
            }
        ]
    }


def _template_annotations(engine: Engine) -> dict[str, str]:
    return {"openmodel.dev/engine": engine.name}


def render_deployment(
    md: ModelDeployment,
    config: PlatformConfig,
    accelerator: Accelerator,
    gpu_count: int,
    replicas: int,
    cache: CachePlan | None = None,
    private: bool = False,
) -> dict[str, Any]:
    engine = engine_for(md.spec.engine)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(md, md.name),
        "spec": {
            "replicas": replicas,
            **_strategy(cache),
            "selector": {"matchLabels": selector_labels(md.name)},
            "template": {
                "metadata": {
                    "labels": child_labels(md),
                    "annotations": _template_annotations(engine),
                },
                "spec": _pod_spec(md, config, accelerator, gpu_count, cache, private),
            },
        },
    }


def render_leader_worker_set(
    md: ModelDeployment,
    config: PlatformConfig,
    accelerator: Accelerator,
    gpu_count: int,
    nodes: int,
    replicas: int,
    cache: CachePlan | None = None,
    private: bool = False,
) -> dict[str, Any]:
    """One group per replica: a leader (rank 0, serves HTTP) and nodes - 1 workers, each
    pod with `gpu_count` GPUs on its own node. A failed pod restarts its whole group
    (RecreateGroupOnPodRestart): the engine's ranks cannot rejoin one by one. Workers
    start with the leader (LeaderCreated): the leader becomes ready only once they joined."""
    engine = engine_for(md.spec.engine)
    address = f"$({LWS_LEADER_ADDRESS_ENV})"
    leader = NodeGroup(nodes=nodes, leader=True, rank="0", leader_address=address)
    worker = NodeGroup(
        nodes=nodes, leader=False, rank=f"$({LWS_WORKER_INDEX_ENV})", leader_address=address
    )
    leader_spec = _pod_spec(md, config, accelerator, gpu_count, cache, private, leader)
    worker_spec = _pod_spec(md, config, accelerator, gpu_count, cache, private, worker)
    leader_labels = {**child_labels(md), ROLE_LABEL: LEADER_ROLE}
    digest = hashlib.sha256(
        json.dumps(
            [leader_labels, leader_spec, worker_labels(md), worker_spec], sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    annotations = {**_template_annotations(engine), TEMPLATE_HASH_ANNOTATION: digest}
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": LWS_KIND,
        "metadata": _metadata(md, md.name),
        "spec": {
            "replicas": replicas,
            "startupPolicy": "LeaderCreated",
            # A headless Service per group, named like its leader pod (`<name>-<index>`):
            # LWS's default, one named like the set, would be the engine Service's name.
            "networkConfig": {"subdomainPolicy": "UniquePerReplica"},
            "leaderWorkerTemplate": {
                "size": nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": {"labels": leader_labels, "annotations": annotations},
                    "spec": leader_spec,
                },
                "workerTemplate": {
                    "metadata": {"labels": worker_labels(md), "annotations": dict(annotations)},
                    "spec": worker_spec,
                },
            },
        },
    }


def _strategy(cache: CachePlan | None) -> dict[str, Any]:
    # A ReadWriteOnce claim attaches to one node: a surge pod placed on another could
    # never start, and the old pod would wait for it forever.
    if cache is not None and cache.access_mode == READ_WRITE_ONCE:
        return {"strategy": {"type": "Recreate"}}
    return {}


def render_service(md: ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, md.name),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_labels(md.name),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def resolve_accelerator(md: ModelDeployment, config: PlatformConfig) -> Accelerator:
    accelerator = config.accelerators.get(md.spec.gpu.type)
    if accelerator is None:
        raise SpecError(
            "spec.gpu.type",
            f"unknown accelerator {md.spec.gpu.type!r}; known: "
            f"{', '.join(config.accelerators.names())} (platform teams add more in the "
            "operator config)",
            reason="UnknownAccelerator",
        )
    return accelerator


def render_children(
    md: ModelDeployment,
    config: PlatformConfig,
    gpu_count: int,
    replicas: int,
    commit: str | None = None,
    private: bool = False,
    nodes: int = 1,
) -> Children:
    """Everything the operator applies for `md`; raises SpecError for what it cannot serve.
    `commit`: the one the model resolver pinned, which the weights download fetches;
    `private`: its namespace is labelled openmodel.dev/data=private; `nodes`: the pods
    (one per node) of each replica, a LeaderWorkerSet above 1."""
    accelerator = resolve_accelerator(md, config)
    extension = config.inference_extension.enabled
    cache = cache_plan(md, config, commit)
    egress = plan_egress(md, config, private, cache)
    policies = config.privacy.network_policy.enabled
    workload = (
        render_deployment(md, config, accelerator, gpu_count, replicas, cache, private)
        if nodes == 1
        else render_leader_worker_set(
            md, config, accelerator, gpu_count, nodes, replicas, cache, private
        )
    )
    return Children(
        deployment=workload,
        service=render_service(md),
        pvc=None if cache is None else render_claim(md, cache, config, _metadata(md, md.name)),
        inference_pool=render_pool(md, config) if extension else None,
        http_route=render_route(md, config) if extension else None,
        download_job=(
            None
            if cache is None
            else render_download_job(md, cache, config, _metadata(md, md.name))
        ),
        cache=cache,
        network_policy=render_policy(md, config, egress, nodes > 1) if policies else None,
        download_policy=(
            render_download_policy(md, config, cache) if policies and cache is not None else None
        ),
    )


def prefetched(cache: CachePlan | None) -> bool:
    """Whether a download Job fetches the weights for the engine (which then fetches none)."""
    return cache is not None and cache.download is not None


def plan_egress(
    md: ModelDeployment, config: PlatformConfig, private: bool, cache: CachePlan | None
) -> EgressPlan:
    """What the engine pods may reach (status.egress); SpecError for an exception the
    platform does not allow."""
    return egress_plan(md.spec, config.privacy.network_policy, private, prefetched(cache))


def render_policy(
    md: ModelDeployment, config: PlatformConfig, egress: EgressPlan, spans_nodes: bool = False
) -> dict[str, Any]:
    """The engine pods' NetworkPolicy, named like the ModelDeployment; `spans_nodes`: the
    pods of a group reach each other on every port (the engine's ranks)."""
    port = engine_for(md.spec.engine).port
    return render_network_policy(
        _metadata(md, md.name), selector_labels(md.name), port, egress, config, spans_nodes
    )


def render_pool(md: ModelDeployment, config: PlatformConfig) -> dict[str, Any]:
    """The InferencePool: the pods the Service selects, on the engine's port."""
    port = engine_for(md.spec.engine).port
    return render_inference_pool(
        _metadata(md, md.name), serving_labels(md.name), port, config.inference_extension
    )


def render_route(md: ModelDeployment, config: PlatformConfig) -> dict[str, Any]:
    """The HTTPRoute to that pool, for the served model name and every adapter's name."""
    names = [served_model_name(md.spec), *sorted(a.name for a in md.spec.adapters)]
    return render_http_route(_metadata(md, md.name), md.name, names, config.inference_extension)


def render_download_policy(
    md: ModelDeployment, config: PlatformConfig, cache: CachePlan
) -> dict[str, Any] | None:
    """The download Job pods' NetworkPolicy (`<name>-weights`): nothing in, and out only
    DNS and the weights sources; None when the cache has no Job."""
    if cache.download is None:
        return None
    return render_download_network_policy(
        _metadata(md, f"{md.name}-weights"),
        {WEIGHTS_FOR_LABEL: md.name},
        fetches=not cache.download.verify_only,
        config=config,
    )
