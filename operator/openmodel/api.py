"""The ModelDeployment API as typed Python values.

`parse_model_deployment` turns the object the API server holds (already checked by the
CRD schema and CEL rules) into frozen dataclasses the renderers use. It re-checks what
the schema guarantees too, so that the CLI gives the same errors on a file that never
reached an API server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GROUP = "openmodel.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
API_VERSION = f"{GROUP}/{VERSION}"
OWNER_LABEL = "openmodel.dev/model-deployment"

ENGINES = ("vllm", "tgi")
QUANTIZATIONS = ("none", "awq", "gptq", "fp8", "bitsandbytes", "gguf", "compressed-tensors")
DEFAULT_SCALE_UP_SECONDS = 0
DEFAULT_SCALE_DOWN_SECONDS = 300


class SpecError(ValueError):
    """A spec value the operator cannot serve; `field` is its path, e.g. `spec.gpu.count`."""

    def __init__(self, field: str, message: str, reason: str = "InvalidSpec") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class GpuSpec:
    type: str
    count: int | None


@dataclass(frozen=True)
class AutoscalingSpec:
    min_replicas: int
    max_replicas: int
    target_queue_depth: float
    scale_up_stabilization_seconds: int = DEFAULT_SCALE_UP_SECONDS
    scale_down_stabilization_seconds: int = DEFAULT_SCALE_DOWN_SECONDS


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class CacheSpec:
    size: str
    storage_class_name: str | None


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
    return GpuSpec(type=gpu_type, count=_positive_int(raw, "count", "spec.gpu", 1))


def _parse_autoscaling(raw: Any) -> AutoscalingSpec | None:
    if raw is None:
        return None
    path = "spec.autoscaling"
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be an object")
    min_r = _positive_int(raw, "minReplicas", path, 1)
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
    return AutoscalingSpec(
        min_replicas=min_r,
        max_replicas=max_r,
        target_queue_depth=float(target),
        scale_up_stabilization_seconds=DEFAULT_SCALE_UP_SECONDS if up is None else up,
        scale_down_stabilization_seconds=DEFAULT_SCALE_DOWN_SECONDS if down is None else down,
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


def parse_spec(raw: Mapping[str, Any]) -> ModelDeploymentSpec:
    """Parse and check a ModelDeployment spec; raises SpecError naming the field."""
    model = _get(raw, "model", "spec", str)
    if not model:
        raise SpecError(
            "spec.model", "is required: a Hugging Face repo id or a pvc://, s3://, gs:// URI"
        )
    engine = _get(raw, "engine", "spec", str) or "vllm"
    if engine not in ENGINES:
        raise SpecError("spec.engine", f"must be one of {', '.join(ENGINES)}, got {engine!r}")
    quantization = _get(raw, "quantization", "spec", str) or "none"
    if quantization not in QUANTIZATIONS:
        raise SpecError(
            "spec.quantization", f"must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}"
        )
    replicas = _positive_int(raw, "replicas", "spec", 0)
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
        if not isinstance(size, str) or not size:
            raise SpecError("spec.cache.size", "is required, e.g. 200Gi")
        sc = cache_raw.get("storageClassName")
        cache = CacheSpec(size=size, storage_class_name=sc if isinstance(sc, str) else None)
    return ModelDeploymentSpec(
        model=model,
        engine=engine,
        quantization=quantization,
        gpu=_parse_gpu(raw.get("gpu")),
        replicas=1 if replicas is None else replicas,
        autoscaling=_parse_autoscaling(raw.get("autoscaling")),
        served_model_name=_get(raw, "servedModelName", "spec", str),
        max_model_len=_positive_int(raw, "maxModelLen", "spec", 1),
        args=tuple(args),
        env=tuple(env),
        image=_get(raw, "image", "spec", str),
        hf_token_secret_ref=token_ref,
        cache=cache,
        model_info=_parse_model_info(raw.get("modelInfo")),
    )


def parse_model_deployment(body: Mapping[str, Any]) -> ModelDeployment:
    """Parse a whole ModelDeployment object (as from the API server or a YAML file)."""
    if body.get("kind") != KIND or body.get("apiVersion") != API_VERSION:
        raise SpecError(
            "kind",
            f"expected apiVersion {API_VERSION} kind {KIND}, got "
            f"{body.get('apiVersion')} {body.get('kind')}",
        )
    meta = body.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name", "is required")
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise SpecError("spec", "is required")
    return ModelDeployment(
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        spec=parse_spec(spec),
    )
