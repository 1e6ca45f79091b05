"""The operator's use of the sizing package: the GPU count chosen or checked.

Kept apart from `openmodel.sizing` so planning depends on one small function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openmodel.accelerators import Accelerator
from openmodel.api import ModelDeploymentSpec
from openmodel.config import PlatformConfig
from openmodel.sizing import format_size_report, resolve_gpu_count, size_report


@dataclass(frozen=True)
class GpuChoice:
    count: int
    # What status.sizing shows, when the model is known.
    estimate: dict[str, Any] | None = None
    # The context the engine should be given when the spec sets none (None: engine default).
    max_model_len: int | None = None


def choose_gpu_count(
    spec: ModelDeploymentSpec,
    accelerator: Accelerator,
    config: PlatformConfig,
    skip_fit_check: bool = False,
) -> GpuChoice:
    """Raises SpecError (UnknownModelSize, InvalidTensorParallelSize, InsufficientGPUMemory)."""
    if skip_fit_check and spec.gpu.count is not None:
        return GpuChoice(count=spec.gpu.count)
    result = resolve_gpu_count(spec, accelerator, config.accelerators)
    estimate = result.to_status()
    if estimate is not None:
        estimate["summary"] = result.summary()
    return GpuChoice(count=result.gpu_count, estimate=estimate, max_model_len=result.max_model_len)


def size_report_text(
    model: str,
    accelerator_name: str,
    quantization: str,
    config: PlatformConfig,
    max_model_len: int | None = None,
    engine: str = "vllm",
) -> str:
    report = size_report(
        model,
        accelerator_name,
        quantization,
        config.accelerators,
        max_model_len=max_model_len,
        engine=engine,
    )
    return format_size_report(report)
