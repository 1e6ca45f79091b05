"""The operator's use of the sizing package: GPU count chosen or checked.

Kept apart from `openmodel.sizing` so the renderer depends on one small function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openmodel.accelerators import Accelerator
from openmodel.api import ModelDeploymentSpec, SpecError
from openmodel.config import PlatformConfig


@dataclass(frozen=True)
class GpuChoice:
    count: int
    # The estimate for status.sizing, when the model is known.
    estimate: dict[str, Any] | None = None


def choose_gpu_count(
    spec: ModelDeploymentSpec,
    accelerator: Accelerator,
    config: PlatformConfig,
    skip_fit_check: bool = False,
) -> GpuChoice:
    if spec.gpu.count is None:
        raise SpecError(
            "spec.gpu.count",
            "is required until sizing is available",
            reason="GPUCountRequired",
        )
    return GpuChoice(count=spec.gpu.count)
