"""What every inference engine provides to the renderer.

Adding an engine (e.g. SGLang) means one module implementing `Engine` and one line in
`openmodel.engines.ENGINES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from openmodel.api import ModelDeploymentSpec, SpecError, served_name


@dataclass(frozen=True)
class ModelSource:
    """Where the engine loads weights from, as the container sees it."""

    # What the engine is told to load: a repo id, or a path inside the container.
    reference: str
    # A PVC holding the weights, mounted read-only at `mount_path`.
    pvc_claim: str | None = None
    mount_path: str | None = None
    # s3:// or gs:// URIs are streamed by the engine itself.
    object_store: bool = False


MODEL_MOUNT_ROOT = "/models"


def model_source(model: str) -> ModelSource:
    """Interpret `spec.model`: a Hugging Face repo id or a pvc://, s3://, gs:// URI."""
    if model.startswith("pvc://"):
        rest = model.removeprefix("pvc://")
        claim, _, path = rest.partition("/")
        if not claim:
            raise SpecError("spec.model", "pvc:// URI needs a claim name: pvc://<claim>/<path>")
        mount = f"{MODEL_MOUNT_ROOT}/{claim}"
        return ModelSource(
            reference=f"{mount}/{path}".rstrip("/"), pvc_claim=claim, mount_path=mount
        )
    if model.startswith(("s3://", "gs://")):
        return ModelSource(reference=model, object_store=True)
    if "://" in model:
        raise SpecError(
            "spec.model",
            f"unsupported URI scheme in {model!r}: use pvc://, s3://, gs:// or a repo id",
        )
    return ModelSource(reference=model)


def served_model_name(spec: ModelDeploymentSpec) -> str:
    """The name clients put in `model`: the stated one, else the repo id or path tail."""
    return served_name(spec.model, spec.served_model_name)


def _pvc_parts(source: str) -> tuple[str, str]:
    claim, _, path = source.removeprefix("pvc://").partition("/")
    return claim, path


def adapter_path(source: str) -> str:
    """What the engine is told to load for an adapter: a repo id or s3://, gs:// URI as
    is; pvc://<claim>/<path> as the path under the claim's mount (model_source's layout)."""
    if source.startswith("pvc://"):
        claim, path = _pvc_parts(source)
        return f"{MODEL_MOUNT_ROOT}/{claim}/{path}".rstrip("/")
    return source


def adapter_claims(spec: ModelDeploymentSpec) -> list[str]:
    """The PVCs adapters load from that the model does not mount already, sorted."""
    model_claim = model_source(spec.model).pvc_claim
    claims = {_pvc_parts(a.source)[0] for a in spec.adapters if a.source.startswith("pvc://")}
    return sorted(claims - {model_claim})


class Engine(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def health_path(self) -> str: ...
    @property
    def metrics_path(self) -> str: ...
    @property
    def queue_metric(self) -> str:
        """The gauge of requests waiting for a slot: the autoscaler's signal."""

    @property
    def hf_home(self) -> str:
        """Where the engine keeps its Hugging Face cache (HF_HOME)."""

    @property
    def shm_size(self) -> str: ...
    @property
    def quantizations(self) -> Mapping[str, str | None]:
        """spec.quantization value -> the engine's own flag value (absent = unsupported)."""

    @property
    def quantization_hints(self) -> Mapping[str, str]:
        """Unsupported spec.quantization value -> one sentence saying what to do instead,
        appended to the refusal."""

    def command(self) -> list[str]: ...

    def args(self, spec: ModelDeploymentSpec, gpu_count: int) -> list[str]: ...

    def env(self, spec: ModelDeploymentSpec) -> list[dict[str, str]]:
        """Engine-specific environment (before the user's spec.env, which can override)."""


def quantization_value(engine: Engine, quantization: str) -> str | None:
    """The engine's flag value for a spec.quantization value, or SpecError naming both
    (and, where the engine has one, what to do instead)."""
    if quantization not in engine.quantizations:
        supported = ", ".join(sorted(engine.quantizations))
        message = (
            f"quantization {quantization!r} cannot run on engine {engine.name!r} "
            f"(supported: {supported})"
        )
        hint = engine.quantization_hints.get(quantization)
        raise SpecError(
            "spec.quantization",
            message if hint is None else f"{message}. {hint}.",
            reason="UnsupportedQuantization",
        )
    return engine.quantizations[quantization]


def quantization_flag(engine: Engine, spec: ModelDeploymentSpec) -> str | None:
    """`quantization_value` of spec.quantization."""
    return quantization_value(engine, spec.quantization)
