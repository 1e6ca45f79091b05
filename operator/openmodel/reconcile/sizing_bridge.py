"""The operator's use of the sizing package: the GPU count chosen or checked.

Kept apart from `openmodel.sizing` so planning depends on one small function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openmodel.accelerators import Accelerator
from openmodel.api import DEFAULT_ENGINE, MAX_NODES, ModelDeploymentSpec, SpecError
from openmodel.config import PlatformConfig
from openmodel.engines import engine_for
from openmodel.model_resolver.state import SIZING_PENDING, Failed, ModelConfigState, Pending
from openmodel.sizing import format_size_report, resolve_gpu_count, size_report
from openmodel.sizing.checkpoint import Checkpoint
from openmodel.sizing.cpu import estimate_cpu


@dataclass(frozen=True)
class GpuChoice:
    count: int  # GPUs of one pod
    # What status.sizing shows, when the model is known.
    estimate: dict[str, Any] | None = None
    # The context the engine should be given when the spec sets none (None: engine default).
    max_model_len: int | None = None
    # Pods (one per node) per replica: above 1 the replica is a LeaderWorkerSet group.
    nodes: int = 1

    def text(self, gpu_type: str) -> str:
        """status.gpu: `8x nvidia-h100-80gb`, `2 nodes x 8x nvidia-h100-80gb`, or the
        type alone for gpu.type cpu."""
        if not self.count:
            return gpu_type
        per_pod = f"{self.count}x {gpu_type}"
        return per_pod if self.nodes == 1 else f"{self.nodes} nodes x {per_pod}"


def cpu_choice(spec: ModelDeploymentSpec) -> GpuChoice:
    """gpu.type cpu: no GPU (count 0); the requests come from `sizing.cpu`, which also
    fixes the context the engine is started with."""
    estimate = estimate_cpu(spec)
    return GpuChoice(count=0, estimate=estimate.to_status(), max_model_len=estimate.context_tokens)


def choose_gpu_count(
    spec: ModelDeploymentSpec,
    accelerator: Accelerator,
    config: PlatformConfig,
    skip_fit_check: bool = False,
    model_config: ModelConfigState | None = None,
) -> GpuChoice:
    """Raises SpecError (UnknownModelSize, InvalidTensorParallelSize, InsufficientGPUMemory,
    QuantizationMismatch; SizingPending while the model's config.json is being read;
    ModelConfigNotFound/Unauthorized/Timeout/... when it could not be read and nothing
    else sizes the model)."""
    if accelerator.cpu_only:
        return cpu_choice(spec)
    if skip_fit_check and spec.gpu.count is not None:
        return GpuChoice(count=spec.gpu.count, nodes=spec.gpu.nodes or 1)
    checkpoint: Checkpoint | None = None
    notes: tuple[str, ...] = ()
    if isinstance(model_config, Pending):
        raise SpecError(
            "spec.model",
            f"reading the config.json of {model_config.ref}; the GPU count and fit follow",
            SIZING_PENDING,
        )
    if isinstance(model_config, Failed):
        notes = (
            f"The config.json of {model_config.ref} could not be read ({model_config.reason}: "
            f"{model_config.message}; retried with back-off).",
        )
    elif model_config is not None:
        checkpoint = model_config.checkpoint
    engine = engine_for(spec.engine)
    try:
        result = resolve_gpu_count(
            spec,
            accelerator,
            config.accelerators,
            checkpoint=checkpoint,
            extra_notes=notes,
            memory=engine.memory,
            max_nodes=MAX_NODES if engine.spans_nodes else 1,
        )
    except SpecError as e:
        if isinstance(model_config, Failed) and e.reason == "UnknownModelSize":
            raise SpecError(e.field, e.message, model_config.reason) from None
        raise
    estimate = result.to_status()
    if estimate is not None:
        estimate["summary"] = result.summary()
    return GpuChoice(
        count=result.gpu_count,
        estimate=estimate,
        max_model_len=result.max_model_len,
        nodes=result.nodes,
    )


def size_report_text(
    model: str,
    accelerator_name: str,
    quantization: str,
    config: PlatformConfig,
    max_model_len: int | None = None,
    engine: str = DEFAULT_ENGINE,
    checkpoint: Checkpoint | None = None,
    task: str | None = None,
) -> str:
    chosen = engine_for(engine)
    report = size_report(
        model,
        accelerator_name,
        quantization,
        config.accelerators,
        memory=chosen.memory,
        max_model_len=max_model_len,
        checkpoint=checkpoint,
        max_nodes=MAX_NODES if chosen.spans_nodes else 1,
        task=task,
    )
    return format_size_report(report)
