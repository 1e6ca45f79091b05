"""The ModelDeployment API as typed Python values.

`parse_model_deployment` turns the object the API server holds (already checked by the
CRD schema and CEL rules) into frozen dataclasses the renderers use. It re-checks what
the schema guarantees too, so that the CLI gives the same errors on a file that never
reached an API server.

What depends on spec.engine beyond its enum (which sources, files, nodes and adapters an
engine can serve) is checked by `EngineRules`, passed in by the engines package, which
imports this module: callers use `openmodel.engines.parse_model_deployment`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

GROUP = "openmodel.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
API_VERSION = f"{GROUP}/{VERSION}"
OWNER_LABEL = "openmodel.dev/model-deployment"
# On the pods of a replica that spans nodes (a LeaderWorkerSet group): `leader` (serves
# HTTP) or `worker` (model shards only). Whatever sends requests or scrapes metrics
# selects SERVING_POD_SELECTOR, never a worker.
ROLE_LABEL = "openmodel.dev/role"
LEADER_ROLE = "leader"
WORKER_ROLE = "worker"
SERVING_POD_SELECTOR = f"{OWNER_LABEL},{ROLE_LABEL}!={WORKER_ROLE}"
# A replica that spans nodes is a LeaderWorkerSet group (sigs.k8s.io/lws).
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_KIND = "LeaderWorkerSet"
# A namespace labelled `openmodel.dev/data: private` holds data that must never leave the
# cluster: engine telemetry stays off there whatever the platform chose, its
# ModelDeployments get no egress exception to addresses outside the cluster, and nothing
# of openmodel sends its requests out (docs/security.md).
DATA_LABEL = "openmodel.dev/data"
DATA_PRIVATE = "private"

# spec.engine's enum and default (the CRD's); each is a module in openmodel/engines/.
ENGINES = ("vllm", "tgi", "sglang", "llamacpp")
DEFAULT_ENGINE = "vllm"
# `gpu.type: cpu`: the engine pod runs on CPU-only nodes (engines that can, only).
CPU_ACCELERATOR = "cpu"
QUANTIZATIONS = ("none", "awq", "gptq", "fp8", "bitsandbytes", "gguf", "compressed-tensors")
# spec.task's enum (the CRD's): what the model serves. `generate`: completions and chat;
# `embed`: /v1/embeddings (an embedding model); `rerank`: /v1/rerank and /v1/score (a
# cross-encoder). Omitted: read from the checkpoint (status.task), else generate.
TASK_GENERATE = "generate"
TASK_EMBED = "embed"
TASK_RERANK = "rerank"
TASKS = (TASK_GENERATE, TASK_EMBED, TASK_RERANK)
POOLING_TASKS = (TASK_EMBED, TASK_RERANK)
# spec.gpu.nodes' maximum (the CRD's): the most pods one replica may span.
MAX_NODES = 16
DEFAULT_SCALE_UP_SECONDS = 0
DEFAULT_SCALE_DOWN_SECONDS = 300
DEFAULT_SCALE_TO_ZERO_SECONDS = 600
DEFAULT_LORA_MAX_RANK = 16
DEFAULT_LORA_MAX_ADAPTERS = 4
# spec.lora.maxRank's enum: the --max-lora-rank values engines accept; anything else
# stops an engine at start.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# How the gateway picks a pod (spec.gateway.balancing.policy, the platform's
# gateway.balancing.policy): docs/gateway.md, "Choosing a pod".
BALANCING_POLICIES = ("least-load", "prefix")
ADAPTER_NAME_MAX = 63
_ADAPTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The same shapes the CRD accepts (spec.model's pattern, but pvc:// needs a path).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_PVC_SOURCE = re.compile(r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+$")
# spec.model's CEL rule: a repo id, pvc://<claim>[/<path>], s3:// or gs://.
# Matched whole (fullmatch), as RE2's `$` is the end of the text, not of a line.
_MODEL = re.compile(
    r"(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|s3://.+|gs://.+"
    r"|[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?)"
)
# The root CEL rule on metadata.name: the engine Service is named after the
# ModelDeployment, and a Service name must be a DNS-1035 label.
NAME_MAX = 63
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


class SpecError(ValueError):
    """A spec value the operator cannot serve; `field` is its path, e.g. `spec.gpu.count`."""

    def __init__(self, field: str, message: str, reason: str = "InvalidSpec") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.reason = reason


class EngineRules(Protocol):
    """The checks that depend on what spec.engine can serve, each raising SpecError.
    The engines package answers them from the engine registry (`openmodel.engines`)."""

    def check_adapter_source(self, engine: str, source: str, field: str) -> None:
        """An adapter's s3:// or gs:// `source` (at `field`), already well-formed."""

    def check_spec(self, spec: ModelDeploymentSpec) -> None:
        """The whole spec, once every field is parsed."""


@dataclass(frozen=True)
class GpuSpec:
    """`count`: the GPUs of one pod, on one node (the scheduler's limit; tensor parallel).
    `nodes`: the pods, each on its own node, one replica spans (pipeline parallel), so a
    replica holds count x nodes GPUs. None: sized from the model."""

    type: str
    count: int | None
    nodes: int | None = None


@dataclass(frozen=True)
class AutoscalingSpec:
    min_replicas: int
    max_replicas: int
    target_queue_depth: float
    scale_up_stabilization_seconds: int = DEFAULT_SCALE_UP_SECONDS
    scale_down_stabilization_seconds: int = DEFAULT_SCALE_DOWN_SECONDS
    # With min_replicas 0: how long without any request before the last replica goes.
    scale_to_zero_after_seconds: int = DEFAULT_SCALE_TO_ZERO_SECONDS


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


# spec.cache.accessMode's enum. ReadWriteOnce attaches to one node only.
CACHE_ACCESS_MODES = ("ReadWriteMany", "ReadOnlyMany", "ReadWriteOnce")
READ_WRITE_ONCE = "ReadWriteOnce"
READ_ONLY_MANY = "ReadOnlyMany"
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class CacheSpec:
    size: str
    storage_class_name: str | None
    # None: the platform config's cache.accessMode (docs/api.md, Weights cache).
    access_mode: str | None = None
    # A claim someone else made, shared between ModelDeployments; None: the operator's own.
    claim_name: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a user states about a model the sizing catalogue does not know."""

    parameters_billions: float
    layers: int | None = None
    attention_heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_context_length: int | None = None


@dataclass(frozen=True)
class AdapterSpec:
    """A LoRA adapter served next to the base model under its own name."""

    name: str
    source: str  # a Hugging Face repo id, pvc://<claim>/<path>, s3:// or gs://


@dataclass(frozen=True)
class LoraSpec:
    """The engine's LoRA slots: fixed at start, so changing them restarts the pods."""

    max_rank: int = DEFAULT_LORA_MAX_RANK
    max_adapters: int = DEFAULT_LORA_MAX_ADAPTERS


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model: str
    engine: str
    quantization: str
    gpu: GpuSpec
    replicas: int
    autoscaling: AutoscalingSpec | None
    served_model_name: str | None
    max_model_len: int | None
    args: tuple[str, ...]
    env: tuple[Mapping[str, Any], ...]
    image: str | None
    hf_token_secret_ref: SecretKeyRef | None
    cache: CacheSpec | None
    model_info: ModelInfo | None
    adapters: tuple[AdapterSpec, ...] = ()
    lora: LoraSpec | None = None
    # An engine that loads GGUF files, with a Hugging Face repo: the .gguf file in it.
    gguf_file: str | None = None
    # Names of the platform's egress allowlist entries the engine pods may reach
    # (spec.network.egress), beyond what fetching weights needs.
    egress_exceptions: tuple[str, ...] = ()
    # spec.gateway.balancing.policy: how the gateway picks a pod for this model; None
    # follows the platform's gateway.balancing.policy.
    balancing_policy: str | None = None
    # spec.task; None when omitted (the operator reads it from the checkpoint). The
    # reconciler renders with the effective task put here (`with_task`).
    task: str | None = None
    # spec.gateway.overflow: where the gateway sends requests while no replica can take
    # them; None (the default): they are held, never sent out of the cluster.
    overflow: Overflow | None = None


def with_task(spec: ModelDeploymentSpec, task: str) -> ModelDeploymentSpec:
    """The spec with the task the operator decided (status.task), for the renderers."""
    return spec if spec.task == task else replace(spec, task=task)


def spec_task(spec: ModelDeploymentSpec) -> str:
    """The task the engine is rendered for: spec.task (or the decided one put there by
    `with_task`), else generate."""
    return spec.task or TASK_GENERATE


def lora_settings(spec: ModelDeploymentSpec) -> LoraSpec | None:
    """The LoRA slots the engine starts with: spec.lora, the defaults when adapters are
    declared without it, else None (LoRA off)."""
    if spec.lora is not None:
        return spec.lora
    return LoraSpec() if spec.adapters else None


def requested_revision(args: tuple[str, ...] | list[str]) -> str:
    """The branch, tag or commit of the model the engine is told with `--revision` in
    spec.args (the engines' own flag), else `main`: what the model resolver reads and
    the weights download fetches."""
    revision = "main"
    for i, arg in enumerate(args):
        if arg == "--revision" and i + 1 < len(args):
            revision = args[i + 1]
        elif arg.startswith("--revision="):
            revision = arg.split("=", 1)[1]
    return revision


def served_name(model: str, served_model_name: str | None) -> str:
    """The name clients put in `model`: the stated one, else the repo id or path tail."""
    if served_model_name:
        return served_model_name
    if "://" in model:
        return model.rstrip("/").rsplit("/", 1)[-1]
    return model


@dataclass(frozen=True)
class Overflow:
    """spec.gateway.overflow: send requests to an external model (an ExternalModel's
    served name, docs/api.md) instead of holding them, while the model has no ready
    replica (`when_starting`) or its queue is deeper than `queue_depth_above`. The
    client's `model` is unchanged; the gateway marks and counts every such request.
    Refused in a namespace labelled `openmodel.dev/data: private`."""

    model: str
    when_starting: bool = True
    queue_depth_above: int | None = None


@dataclass(frozen=True)
class ModelDeployment:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: ModelDeploymentSpec


def _get(raw: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...]) -> Any:
    value = raw.get(key)
    if value is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SpecError(f"{path}.{key}", f"must be of type {names}, got {value!r}")
    if isinstance(value, bool) and kind in (int, (int, float)):
        raise SpecError(f"{path}.{key}", f"must be a number, got {value!r}")
    return value


def _positive_int(raw: Mapping[str, Any], key: str, path: str, minimum: int) -> int | None:
    value = _get(raw, key, path, int)
    if value is not None and value < minimum:
        raise SpecError(f"{path}.{key}", f"must be >= {minimum}, got {value}")
    return value  # type: ignore[no-any-return]


def _parse_gpu(raw: Any) -> GpuSpec:
    if not isinstance(raw, Mapping):
        raise SpecError("spec.gpu", "is required: {type: <accelerator name>, count: <GPUs>}")
    gpu_type = _get(raw, "type", "spec.gpu", str)
    if not gpu_type:
        raise SpecError("spec.gpu.type", "is required, e.g. nvidia-h100-80gb")
    nodes = _positive_int(raw, "nodes", "spec.gpu", 1)
    if nodes is not None and nodes > MAX_NODES:
        raise SpecError("spec.gpu.nodes", f"must be <= {MAX_NODES}, got {nodes}")
    if nodes is not None and nodes > 1 and gpu_type == CPU_ACCELERATOR:
        raise SpecError(
            "spec.gpu.nodes",
            "must be omitted (or 1) with gpu.type 'cpu': a CPU replica is one process",
        )
    return GpuSpec(type=gpu_type, count=_positive_int(raw, "count", "spec.gpu", 1), nodes=nodes)


def _parse_autoscaling(raw: Any) -> AutoscalingSpec | None:
    if raw is None:
        return None
    path = "spec.autoscaling"
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be an object")
    min_r = _positive_int(raw, "minReplicas", path, 0)
    max_r = _positive_int(raw, "maxReplicas", path, 1)
    min_r = 1 if min_r is None else min_r
    if max_r is None:
        raise SpecError(f"{path}.maxReplicas", "is required when autoscaling is set")
    if min_r > max_r:
        raise SpecError(f"{path}.minReplicas", f"must be <= maxReplicas ({min_r} > {max_r})")
    target = _get(raw, "targetQueueDepth", path, (int, float))
    target = 4 if target is None else target
    if target <= 0:
        raise SpecError(f"{path}.targetQueueDepth", f"must be > 0, got {target}")
    up = _positive_int(raw, "scaleUpStabilizationSeconds", path, 0)
    down = _positive_int(raw, "scaleDownStabilizationSeconds", path, 0)
    to_zero = _positive_int(raw, "scaleToZeroAfterSeconds", path, 30)
    return AutoscalingSpec(
        min_replicas=min_r,
        max_replicas=max_r,
        target_queue_depth=float(target),
        scale_up_stabilization_seconds=DEFAULT_SCALE_UP_SECONDS if up is None else up,
        scale_down_stabilization_seconds=DEFAULT_SCALE_DOWN_SECONDS if down is None else down,
        scale_to_zero_after_seconds=DEFAULT_SCALE_TO_ZERO_SECONDS if to_zero is None else to_zero,
    )


def _parse_model_info(raw: Any) -> ModelInfo | None:
    if raw is None:
        return None
    path = "spec.modelInfo"
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be an object")
    params = _get(raw, "parametersBillions", path, (int, float))
    if params is None or params <= 0:
        raise SpecError(f"{path}.parametersBillions", "is required and must be > 0")
    return ModelInfo(
        parameters_billions=float(params),
        layers=_positive_int(raw, "layers", path, 1),
        attention_heads=_positive_int(raw, "attentionHeads", path, 1),
        kv_heads=_positive_int(raw, "kvHeads", path, 1),
        head_dim=_positive_int(raw, "headDim", path, 1),
        intermediate_size=_positive_int(raw, "intermediateSize", path, 1),
        max_context_length=_positive_int(raw, "maxContextLength", path, 1),
    )


def _parse_lora(raw: Any) -> LoraSpec | None:
    if raw is None:
        return None
    path = "spec.lora"
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be an object: {maxRank, maxAdapters}")
    rank = _get(raw, "maxRank", path, int)
    if rank is not None and rank not in LORA_RANKS:
        raise SpecError(
            f"{path}.maxRank",
            f"must be one of {', '.join(map(str, LORA_RANKS))} (the ranks engines accept), "
            f"got {rank}",
        )
    adapters = _positive_int(raw, "maxAdapters", path, 1)
    return LoraSpec(
        max_rank=DEFAULT_LORA_MAX_RANK if rank is None else rank,
        max_adapters=DEFAULT_LORA_MAX_ADAPTERS if adapters is None else adapters,
    )


def _parse_gateway(raw: Any) -> str | None:
    """spec.gateway -> the balancing policy it sets, or None."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError("spec.gateway", "must be an object: {balancing, overflow}")
    balancing = _get(raw, "balancing", "spec.gateway", Mapping)
    if balancing is None:
        return None
    policy: str | None = _get(balancing, "policy", "spec.gateway.balancing", str)
    if policy is not None and policy not in BALANCING_POLICIES:
        raise SpecError(
            "spec.gateway.balancing.policy",
            f"must be one of {', '.join(BALANCING_POLICIES)}, got {policy!r}",
        )
    return policy


def _parse_overflow(raw: Any) -> Overflow | None:
    """spec.gateway.overflow -> Overflow, or None (off). `_parse_gateway` checked that
    spec.gateway is an object."""
    if raw is None:
        return None
    path = "spec.gateway.overflow"
    overflow = _get(raw, "overflow", "spec.gateway", Mapping)
    if overflow is None:
        return None
    model = _get(overflow, "model", path, str)
    if not model:
        raise SpecError(f"{path}.model", "is required: the served name of an ExternalModel")
    when_starting = _get(overflow, "whenStarting", path, bool)
    depth = _positive_int(overflow, "queueDepthAbove", path, 1)
    if when_starting is False and depth is None:
        raise SpecError(
            path, "overflows nothing: set whenStarting: true or queueDepthAbove (or remove it)"
        )
    return Overflow(
        model=model,
        when_starting=True if when_starting is None else when_starting,
        queue_depth_above=depth,
    )


def _check_adapter_source(source: str, path: str, engine: str, rules: EngineRules) -> None:
    if source.startswith(("s3://", "gs://")):
        if len(source) <= len("s3://"):
            raise SpecError(path, f"needs a bucket and path after the scheme, got {source!r}")
        rules.check_adapter_source(engine, source, path)
        return
    if source.startswith("pvc://"):
        if not _PVC_SOURCE.match(source):
            raise SpecError(
                path, f"must be pvc://<claim>/<path> with a path inside the claim, got {source!r}"
            )
        return
    if not _REPO_ID.match(source):
        raise SpecError(
            path,
            f"must be a Hugging Face repo id like org/name, or a pvc://<claim>/<path>, s3:// "
            f"or gs:// URI, got {source!r}",
        )


def _parse_adapters(
    raw: Any, engine: str, model_name: str, max_adapters: int, rules: EngineRules
) -> tuple[AdapterSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError("spec.adapters", "must be a list of {name, source}")
    adapters: list[AdapterSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        path = f"spec.adapters[{i}]"
        if not isinstance(item, Mapping):
            raise SpecError(path, "must be an object: {name, source}")
        name = _get(item, "name", path, str)
        if not name:
            raise SpecError(f"{path}.name", "is required")
        if len(name) > ADAPTER_NAME_MAX or not _ADAPTER_NAME.match(name):
            raise SpecError(
                f"{path}.name",
                f"must be lower-case letters, digits and '-', at most {ADAPTER_NAME_MAX} "
                f"characters, starting and ending with a letter or digit, got {name!r}",
            )
        if name in seen:
            raise SpecError(f"{path}.name", f"duplicate adapter name {name!r}")
        if name == model_name:
            raise SpecError(
                f"{path}.name",
                f"{name!r} is the served model name; clients could not tell them apart",
            )
        seen.add(name)
        source = _get(item, "source", path, str)
        if not source:
            raise SpecError(f"{path}.source", "is required")
        _check_adapter_source(source, f"{path}.source", engine, rules)
        adapters.append(AdapterSpec(name=name, source=source))
    if len(adapters) > max_adapters:
        raise SpecError(
            "spec.adapters",
            f"{len(adapters)} adapters declared but spec.lora.maxAdapters is {max_adapters}: "
            "raise spec.lora.maxAdapters or remove adapters",
        )
    return tuple(adapters)


def _parse_gguf_file(raw: Mapping[str, Any]) -> str | None:
    gguf_file: str | None = _get(raw, "ggufFile", "spec", str)
    if gguf_file is not None and (gguf_file.startswith("/") or not gguf_file.endswith(".gguf")):
        raise SpecError("spec.ggufFile", f"must be a .gguf file in the repo, got {gguf_file!r}")
    return gguf_file


def _parse_network(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise SpecError("spec.network", f"must be an object, got {raw!r}")
    unknown = sorted(str(k) for k in raw if k != "egress")
    if unknown:
        raise SpecError("spec.network", f"unknown field(s) {', '.join(unknown)}; known: egress")
    egress = raw.get("egress") or []
    if not isinstance(egress, list) or not all(isinstance(e, str) and e for e in egress):
        raise SpecError(
            "spec.network.egress",
            "must be a list of names from the platform's egress allowlist, e.g. [internal-tools]",
        )
    if len(set(egress)) != len(egress):
        raise SpecError("spec.network.egress", "names an allowlist entry twice")
    return tuple(egress)


def _cache_access_mode(raw: Mapping[str, Any]) -> str | None:
    mode = _get(raw, "accessMode", "spec.cache", str)
    if mode is not None and mode not in CACHE_ACCESS_MODES:
        raise SpecError(
            "spec.cache.accessMode", f"must be one of {', '.join(CACHE_ACCESS_MODES)}, got {mode!r}"
        )
    claim = raw.get("claimName")
    if mode == READ_ONLY_MANY and not claim:
        raise SpecError(
            "spec.cache.claimName",
            "is required with accessMode ReadOnlyMany: a claim the platform filled beforehand "
            "(the operator cannot write one)",
        )
    return mode  # type: ignore[no-any-return]


def _cache_claim_name(raw: Mapping[str, Any]) -> str | None:
    claim = _get(raw, "claimName", "spec.cache", str)
    if claim is not None and (len(claim) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(claim)):
        raise SpecError(
            "spec.cache.claimName", f"must be a claim name (a DNS-1123 subdomain), got {claim!r}"
        )
    return claim  # type: ignore[no-any-return]


def most_replicas(spec: ModelDeploymentSpec) -> int:
    """The most replicas the spec allows at once: autoscaling's maximum, else replicas."""
    auto_max = spec.autoscaling.max_replicas if spec.autoscaling is not None else 0
    return max(spec.replicas, auto_max)


def check_cache_access_mode(
    spec: ModelDeploymentSpec, mode: str, field: str, nodes: int | None = None
) -> None:
    """ReadWriteOnce attaches to one node: refused when a second replica, or a replica
    of several pods (`nodes`, as sized; else spec.gpu.nodes), is possible. `mode` is the
    spec's or the platform default's (`field` names where it came from)."""
    pods = nodes if nodes is not None else (spec.gpu.nodes or 1)
    if mode == READ_WRITE_ONCE and pods > 1:
        raise SpecError(
            field,
            f"ReadWriteOnce cannot be mounted by the {pods} pods of a replica, each on its "
            "own node: use ReadWriteMany (NFS, EFS, Filestore, CephFS) or ReadOnlyMany (a "
            "claim filled beforehand, with spec.cache.claimName)",
            reason="CacheAccessMode",
        )
    if mode == READ_WRITE_ONCE and most_replicas(spec) > 1:
        raise SpecError(
            field,
            "ReadWriteOnce cannot be mounted by replicas on different nodes and "
            "spec.replicas or spec.autoscaling.maxReplicas is above 1: use ReadWriteMany "
            "(NFS, EFS, Filestore, CephFS) or ReadOnlyMany (a claim filled beforehand, with "
            "spec.cache.claimName)",
            reason="CacheAccessMode",
        )


def parse_spec(raw: Mapping[str, Any], rules: EngineRules) -> ModelDeploymentSpec:
    """Parse and check a ModelDeployment spec; raises SpecError naming the field."""
    model = _get(raw, "model", "spec", str)
    if not model:
        raise SpecError(
            "spec.model", "is required: a Hugging Face repo id or a pvc://, s3://, gs:// URI"
        )
    if not _MODEL.fullmatch(model):
        raise SpecError(
            "spec.model",
            "must be a Hugging Face repo id like org/name, or a pvc://<claim>/<path>, s3:// or "
            f"gs:// URI, got {model!r}",
        )
    engine = _get(raw, "engine", "spec", str) or DEFAULT_ENGINE
    if engine not in ENGINES:
        raise SpecError("spec.engine", f"must be one of {', '.join(ENGINES)}, got {engine!r}")
    quantization = _get(raw, "quantization", "spec", str) or "none"
    if quantization not in QUANTIZATIONS:
        raise SpecError(
            "spec.quantization", f"must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}"
        )
    replicas = _positive_int(raw, "replicas", "spec", 0)
    task = _get(raw, "task", "spec", str)
    if task is not None and task not in TASKS:
        raise SpecError("spec.task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    args = _get(raw, "args", "spec", list) or []
    if not all(isinstance(a, str) for a in args):
        raise SpecError("spec.args", "must be a list of strings")
    env = _get(raw, "env", "spec", list) or []
    for i, e in enumerate(env):
        if not isinstance(e, Mapping) or not isinstance(e.get("name"), str):
            raise SpecError(f"spec.env[{i}].name", "is required (a Kubernetes EnvVar)")
    token = _get(raw, "hfTokenSecretRef", "spec", Mapping)
    token_ref = None
    if token is not None:
        name, key = token.get("name"), token.get("key")
        if not isinstance(name, str) or not name:
            raise SpecError("spec.hfTokenSecretRef.name", "is required")
        token_ref = SecretKeyRef(name=name, key=key if isinstance(key, str) and key else "token")
    cache_raw = _get(raw, "cache", "spec", Mapping)
    cache = None
    if cache_raw is not None:
        size = cache_raw.get("size")
        # The CRD types it int-or-string (a Kubernetes quantity): 200 is 200 bytes.
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            size = str(size)
        if not isinstance(size, str) or not size:
            raise SpecError("spec.cache.size", "is required, e.g. 200Gi")
        sc = cache_raw.get("storageClassName")
        cache = CacheSpec(
            size=size,
            storage_class_name=sc if isinstance(sc, str) else None,
            access_mode=_cache_access_mode(cache_raw),
            claim_name=_cache_claim_name(cache_raw),
        )
    served = _get(raw, "servedModelName", "spec", str)
    lora = _parse_lora(raw.get("lora"))
    adapters = _parse_adapters(
        raw.get("adapters"),
        engine,
        served_name(model, served),
        DEFAULT_LORA_MAX_ADAPTERS if lora is None else lora.max_adapters,
        rules,
    )
    spec = ModelDeploymentSpec(
        model=model,
        engine=engine,
        quantization=quantization,
        gpu=_parse_gpu(raw.get("gpu")),
        replicas=1 if replicas is None else replicas,
        autoscaling=_parse_autoscaling(raw.get("autoscaling")),
        served_model_name=served,
        max_model_len=_positive_int(raw, "maxModelLen", "spec", 1),
        args=tuple(args),
        env=tuple(env),
        image=_get(raw, "image", "spec", str),
        hf_token_secret_ref=token_ref,
        cache=cache,
        model_info=_parse_model_info(raw.get("modelInfo")),
        adapters=adapters,
        lora=lora,
        gguf_file=_parse_gguf_file(raw),
        egress_exceptions=_parse_network(raw.get("network")),
        balancing_policy=_parse_gateway(raw.get("gateway")),
        overflow=_parse_overflow(raw.get("gateway")),
        task=task,
    )
    if cache is not None and cache.access_mode is not None:
        check_cache_access_mode(spec, cache.access_mode, "spec.cache.accessMode")
    rules.check_spec(spec)
    return spec


def status_conditions(status: Any) -> dict[str, Mapping[str, Any]]:
    """The conditions of a stored status by type, skipping what is not a condition.

    A stored status may hold what an older, looser schema allowed or what another writer
    put there through the status subresource; nothing in it is trusted to have a shape.
    Entries that are not objects with a string `type` are left out, so a pass rebuilds
    the status from the world instead of failing on it.
    """
    if not isinstance(status, Mapping):
        return {}
    raw = status.get("conditions")
    if not isinstance(raw, list):
        return {}
    return {
        c["type"]: c
        for c in raw
        if isinstance(c, Mapping) and isinstance(c.get("type"), str) and c["type"]
    }


def check_type_meta(body: Mapping[str, Any]) -> None:
    """Raises SpecError unless `body` says it is a ModelDeployment of the served version."""
    if body.get("apiVersion") != API_VERSION:
        raise SpecError(
            "apiVersion",
            f"expected apiVersion {API_VERSION} kind {KIND}, got apiVersion "
            f"{body.get('apiVersion')!r}",
        )
    if body.get("kind") != KIND:
        raise SpecError(
            "kind", f"expected apiVersion {API_VERSION} kind {KIND}, got kind {body.get('kind')!r}"
        )


def parse_model_deployment(body: Mapping[str, Any], rules: EngineRules) -> ModelDeployment:
    """Parse a whole ModelDeployment object (as from the API server or a YAML file)."""
    check_type_meta(body)
    meta = body.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name", "is required")
    if len(name) > NAME_MAX or not _DNS1035_LABEL.fullmatch(name):
        raise SpecError(
            "metadata.name",
            f"must be a DNS-1035 label (at most {NAME_MAX} lower-case letters, digits and '-', "
            f"starting with a letter, ending with a letter or digit): the engine Service is "
            f"named after it; got {name!r}",
        )
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise SpecError("spec", "is required")
    return ModelDeployment(
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        spec=parse_spec(spec, rules),
    )
