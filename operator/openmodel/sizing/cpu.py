"""CPU-only serving (`gpu.type: cpu`, GGUF files): the pod's CPU and memory requests,
sized from the GGUF file and its KV cache.

A CPU engine (`Engine.runs_on_cpu`) memory-maps the GGUF file and keeps it resident,
allocates its whole KV cache at start (the context's tokens, shared by its request
slots, f16 K and V by default) and a compute buffer for one micro-batch. So

    memory = file size + c x KV bytes per token + overhead

- file size: parameters x the GGUF type's bits per weight (`openmodel.sizing.gguf`;
  the type from the file name, Q4_K_M when it names none);
- KV bytes per token: 2 (K, V) x layers x KV heads x head_dim x 2 bytes;
- overhead: 0.5 GiB (runtime, HTTP server, scratch) + the logits of one 512-token
  micro-batch (the engine's default) in fp32, 512 x vocab x 4 bytes, or 0.5 GiB
  when the vocabulary is not known.
The memory limit is the request plus 25 %: the estimate is a floor, and a limit at the
request would turn a small miss into an OOM kill.

CPU: decoding on CPU is bound by memory bandwidth, which more cores only help up to a
point; one core per GiB of weights, at least 2 and at most 16. The engine is told to
start that many threads (else it would start one per core of the node).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from openmodel.api import ModelDeploymentSpec, SpecError
from openmodel.sizing.catalogue import resolve_model
from openmodel.sizing.fit import required_context, weights_name
from openmodel.sizing.formats import weight_format
from openmodel.sizing.memory import GIB, kv_bytes_per_token, weight_bytes

BASE_OVERHEAD_GIB = 0.5
MICRO_BATCH_TOKENS = 512
UNKNOWN_VOCAB_OVERHEAD_GIB = 0.5
KV_DTYPE_BYTES = 2
MIN_CPU, MAX_CPU = 2, 16
MEMORY_LIMIT_FACTOR = 1.25


@dataclass(frozen=True)
class CpuEstimate:
    model: str  # the architecture's name
    weight_format: str  # e.g. "gguf Q4_K_M"
    context_tokens: int
    weights_gib: float
    kv_cache_gib: float
    overhead_gib: float
    cpu: int

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.kv_cache_gib + self.overhead_gib

    @property
    def memory_mib(self) -> int:
        return math.ceil(self.total_gib * 1024)

    def requests(self) -> dict[str, str]:
        return {"cpu": str(self.cpu), "memory": f"{self.memory_mib}Mi"}

    def limits(self) -> dict[str, str]:
        return {"memory": f"{math.ceil(self.memory_mib * MEMORY_LIMIT_FACTOR)}Mi"}

    def summary(self) -> str:
        return (
            f"{self.model}, {self.weight_format} on CPU: {self.total_gib:.1f} GiB (file "
            f"{self.weights_gib:.1f} + KV cache {self.kv_cache_gib:.1f} for "
            f"{self.context_tokens} tokens + overhead {self.overhead_gib:.1f}); requests "
            f"cpu {self.cpu}, memory {self.memory_mib}Mi"
        )

    def to_status(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "quantization": self.weight_format,
            "contextTokens": self.context_tokens,
            "maxModelLen": self.context_tokens,
            "weightsGiB": round(self.weights_gib, 1),
            "kvCacheGiB": round(self.kv_cache_gib, 1),
            "overheadGiB": round(self.overhead_gib, 1),
            "totalGiB": round(self.total_gib, 1),
            "cpuRequest": str(self.cpu),
            "memoryRequest": f"{self.memory_mib}Mi",
            "fits": True,
            "summary": self.summary(),
        }


def estimate_cpu(spec: ModelDeploymentSpec) -> CpuEstimate:
    """The requests for one CPU replica; SpecError UnknownModelSize when the model's size
    is neither in the catalogue nor in spec.modelInfo."""
    resolved = resolve_model(spec.model, spec.model_info)
    if resolved is None:
        raise SpecError(
            "spec.modelInfo",
            f"is required for {spec.model} on gpu.type cpu: the model is not in the sizing "
            "catalogue, so its CPU memory cannot be computed. State parametersBillions (and "
            "layers, kvHeads, headDim for the KV cache)",
            "UnknownModelSize",
        )
    arch = resolved.architecture
    fmt = weight_format("gguf", weights_name(spec))
    context = required_context(arch, spec.max_model_len)
    per_token = kv_bytes_per_token(arch, 1, KV_DTYPE_BYTES)
    if per_token is None:
        raise SpecError(
            "spec.modelInfo",
            f"needs layers, kvHeads and headDim for {spec.model} on gpu.type cpu: the KV "
            "cache is part of the memory request",
            "UnknownModelSize",
        )
    weights = weight_bytes(arch, fmt) / GIB
    if arch.vocab_size is None:
        overhead = BASE_OVERHEAD_GIB + UNKNOWN_VOCAB_OVERHEAD_GIB
    else:
        overhead = BASE_OVERHEAD_GIB + MICRO_BATCH_TOKENS * arch.vocab_size * 4 / GIB
    return CpuEstimate(
        model=arch.name,
        weight_format=fmt.label,
        context_tokens=context,
        weights_gib=weights,
        kv_cache_gib=context * per_token / GIB,
        overhead_gib=overhead,
        cpu=max(MIN_CPU, min(MAX_CPU, math.ceil(weights))),
    )
