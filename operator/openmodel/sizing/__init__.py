"""GPU sizing: which models need how much GPU memory, and the GPU count that fits.

Pure functions of the spec and the accelerator catalog; no I/O. Modules:
- `catalogue`: architecture numbers of known model families, repo-id recognition;
- `formats`: bytes per parameter by quantization, quantization implied by a repo name;
- `memory`: the per-GPU estimate (weights, KV cache, overhead) against the engine budget,
  with the engine's `MemoryKnobs` passed in (sizing sits below the engines);
- `parallelism`: tensor-parallel rules and valid GPU counts;
- `fit`: `resolve_gpu_count`, the check the operator and CLI call;
- `report`: the CLI's per-count table.
"""

from openmodel.sizing.catalogue import Architecture, ResolvedModel, recognise, resolve_model
from openmodel.sizing.fit import SizingResult, required_context, resolve_gpu_count
from openmodel.sizing.formats import WeightFormat, implied_quantization, weight_format
from openmodel.sizing.memory import (
    DEFAULT_MAX_MODEL_LEN,
    EngineSettings,
    Estimate,
    MemoryKnobs,
    engine_settings,
    estimate_memory,
)
from openmodel.sizing.parallelism import candidate_counts, tp_violations, valid_tp_sizes
from openmodel.sizing.report import SizeReport, format_size_report, size_report

__all__ = [
    "DEFAULT_MAX_MODEL_LEN",
    "Architecture",
    "EngineSettings",
    "Estimate",
    "MemoryKnobs",
    "ResolvedModel",
    "SizeReport",
    "SizingResult",
    "WeightFormat",
    "candidate_counts",
    "engine_settings",
    "estimate_memory",
    "format_size_report",
    "implied_quantization",
    "recognise",
    "required_context",
    "resolve_gpu_count",
    "resolve_model",
    "size_report",
    "tp_violations",
    "valid_tp_sizes",
    "weight_format",
]
