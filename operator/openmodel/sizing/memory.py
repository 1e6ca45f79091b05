"""Per-GPU memory estimate: weights + KV cache + runtime overhead against the engine's budget.

The model is what a GPU engine does at start-up: load the weights (split over
tensor-parallel ranks), run a profile batch to find the activation peak, then give the
rest of its share of GPU memory to the KV cache, and refuse to start when that cannot
hold one `max_model_len` sequence. So "fits" means

    weights/GPU + overhead/GPU + KV(max_model_len)/GPU <= budget/GPU.

Overhead per GPU (a deliberate, slightly pessimistic constant plus a computed peak):
- 1.5 GiB fixed: CUDA context (~0.5 GiB), cuBLAS/attention workspaces, CUDA graphs;
- 0.5 GiB more with tensor parallelism: NCCL and custom all-reduce buffers;
- the profile batch's activation peak: 8192 batched tokens (the default
  max_num_batched_tokens of an API server on a large GPU) x the widest tensors alive
  in one layer (residual, norm, attention out ≈ 4 x hidden; gate+up ≈ 2 x intermediate
  / tp per active expert) x 2 bytes, plus the sampler's fp32 logits and probabilities
  for 256 sequences (max_num_seqs) x vocabulary. When the width is not known
  (spec.modelInfo) a flat 1 GiB stands in.
For Llama 3.1 8B on one GPU that is 1.5 + 0.69 + 0.24 ≈ 2.4 GiB; engines report about
1.5-2 GiB there, so the estimate errs on the side of "does not fit".

LoRA (adapters or spec.lora, on an engine that preallocates its adapter slots at start,
`MemoryKnobs.preallocates_lora_slots`): A (rank x in) and B (out x rank) for each
targeted projection of every layer. Without the per-projection widths a flat term stands
in, `lora_overhead_bytes`: max_loras x max_lora_rank x hidden_size x layers x 2 (A and B)
x 4 projections x 2 bytes (0.125 GiB for Llama 3.1 8B at the defaults 4 x 16), not
divided by tensor parallelism (pessimistic: engines shard only part of it). 0 when the
width or depth is not known, and for engines that allocate per loaded adapter rather
than per slot.

Across nodes (`pipeline` > 1, a replica of several pods): tensor parallel within a
node, pipeline parallel across nodes, as the engines' multi-node guides recommend. Each GPU holds
1/(tp x pp) of the weights, and the KV cache of its stage's layers only: ceil(layers /
pp) of them (the fullest stage), split over tp as on one node. The overhead is a
node's: the activation peak of its tensor-parallel width, the fixed terms per GPU.

Pooling models (spec.task embed or rerank: embeddings, cross-encoders) generate nothing,
so their profile batch has no sampler (no logits over the vocabulary: the pooler returns
a vector or a score per input). An encoder (BERT, XLM-RoBERTa: `Architecture.encoder_only`)
keeps no KV cache at all, and reads each input in one step (no chunked prefill), so its
batch is at least the context: weights + overhead + activations of max(8192, context)
tokens. A decoder used for embeddings (Qwen3-Embedding) keeps the KV cache of one
sequence, as its engine requires at start, no more. BGE-large on an L4 is 0.6 GiB of
weights and 2.3 GiB all told, so the check never asks for a GPU's worth of KV cache.

Budget: the engine's share of GPU memory x memory. Each engine module states its share,
the flag in spec.args that moves it and its other knobs (`MemoryKnobs`, passed in: the
sizing does not know engines); `engine_settings` reads spec.args with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openmodel.accelerators import Accelerator
from openmodel.api import LoraSpec, SpecError
from openmodel.sizing.catalogue import Architecture
from openmodel.sizing.formats import WeightFormat

GIB = 1024**3
# When the user does not set maxModelLen and the model's full context does not fit,
# this is the context sizing requires and the engine should be started with: long
# enough for chat and RAG prompts, short enough for a 7-8B model on a 24 GB card.
DEFAULT_MAX_MODEL_LEN = 8192
BASE_OVERHEAD_GIB = 1.5
TENSOR_PARALLEL_OVERHEAD_GIB = 0.5
PROFILE_BATCH_TOKENS = 8192
MAX_NUM_SEQS = 256
ACTIVATION_FALLBACK_GIB = 1.0
# Without the architecture the KV cache cannot be computed: require this share of the
# budget to be left for it (4 GiB on an L4, 14 GiB on an H100).
UNKNOWN_KV_RESERVE = 0.2
# A paged KV cache is allocated in blocks of 16 tokens.
KV_BLOCK_TOKENS = 16
LORA_PROJECTIONS = 4  # q/k/v, o, gate/up, down
LORA_DTYPE_BYTES = 2


@dataclass(frozen=True)
class MemoryKnobs:
    """How one engine budgets GPU memory, and the spec.args flags that change the
    estimate. Each engine states its own (`Engine.memory`); `engine_settings` reads
    spec.args with them."""

    # The engine's name in messages: "<label> <fraction_flag> 0.90".
    label: str
    # The share of GPU memory the engine takes when spec.args does not set it.
    default_fraction: float
    # The flag in spec.args that sets the share; None: the share is fixed.
    fraction_flag: str | None = None
    # The part of the flag's share the engine actually gives its KV cache and weights,
    # when that is less than it is told; shown in messages as "x <scale>".
    fraction_scale: float | None = None
    # The flag naming the KV cache's element type, and the types stored in one byte.
    kv_cache_dtype_flag: str = "--kv-cache-dtype"
    one_byte_kv_dtypes: tuple[str, ...] = ("fp8",)
    # The flags in spec.args that set the context the engine starts with; first found wins.
    context_flags: tuple[str, ...] = ()
    # True: every LoRA slot is allocated at start (counted); False: per loaded adapter.
    preallocates_lora_slots: bool = False
    # True: the engine loads GGUF files only, so they are sized as GGUF whatever
    # spec.quantization says.
    weights_always_gguf: bool = False


@dataclass(frozen=True)
class EngineSettings:
    """The engine knobs that change the estimate, read from defaults and spec.args."""

    memory_fraction: float  # the engine's share of the card
    fraction_text: str  # for messages, e.g. "<engine> --gpu-memory-utilization 0.90"
    kv_cache_bytes: int  # bytes per KV element: 2 (model dtype) or 1 (fp8)
    max_model_len_arg: int | None  # the context flag's value in spec.args
    lora: LoraSpec | None = None  # the LoRA slots allocated at start (None: none)


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value of `--flag value` or `--flag=value` (argparse keeps the last)."""
    value: str | None = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def _fraction(args: Sequence[str], flag: str, default: float) -> float:
    raw = _flag_value(args, flag)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise SpecError(
            "spec.args", f"{flag} must be a number in (0, 1], got {raw!r}", "InvalidEngineArgs"
        )
    return value


def _tokens(args: Sequence[str], flag: str) -> int | None:
    raw = _flag_value(args, flag)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise SpecError(
            "spec.args", f"{flag} must be a positive integer, got {raw!r}", "InvalidEngineArgs"
        )
    return int(raw)


def engine_settings(
    knobs: MemoryKnobs, args: Sequence[str] = (), lora: LoraSpec | None = None
) -> EngineSettings:
    """The engine's defaults, overridden by the matching flags in spec.args; `lora` is
    `api.lora_settings(spec)`."""
    kv_dtype = _flag_value(args, knobs.kv_cache_dtype_flag) or "auto"
    kv_bytes = 1 if kv_dtype.startswith(knobs.one_byte_kv_dtypes) else 2
    if knobs.fraction_flag is None:
        fraction = knobs.default_fraction
        memory_fraction = fraction
        fraction_text = f"{knobs.label} share {fraction:.2f}"
    else:
        fraction = _fraction(args, knobs.fraction_flag, knobs.default_fraction)
        fraction_text = f"{knobs.label} {knobs.fraction_flag} {fraction:.2f}"
        if knobs.fraction_scale is None:
            memory_fraction = fraction
        else:
            memory_fraction = fraction * knobs.fraction_scale
            fraction_text += f" x {knobs.fraction_scale}"
    return EngineSettings(
        memory_fraction=memory_fraction,
        fraction_text=fraction_text,
        kv_cache_bytes=kv_bytes,
        max_model_len_arg=_context_arg(args, knobs.context_flags),
        lora=lora if knobs.preallocates_lora_slots else None,
    )


def _context_arg(args: Sequence[str], flags: Sequence[str]) -> int | None:
    for flag in flags:
        tokens = _tokens(args, flag)
        if tokens is not None:
            return tokens
    return None


@dataclass(frozen=True)
class Estimate:
    """Memory per GPU for one model, format, accelerator, GPU count and context."""

    model: str
    quantization: str
    accelerator: str
    gpu_count: int
    context_tokens: int  # the max_model_len the KV cache is sized for
    weights_gib: float
    kv_cache_gib: float  # the reserve share of the budget when not kv_known
    kv_known: bool
    overhead_gib: float
    budget_gib: float
    memory_gib: float
    fraction_text: str
    kv_bytes_per_token: int | None  # per GPU
    kv_capacity_tokens: int | None  # tokens the KV room holds (any number of sequences)
    max_fitting_context: int | None  # capacity capped at the model's max context
    lora_gib: float = 0.0  # the LoRA slots, per GPU
    # Pods (nodes) per replica: pipeline-parallel stages of `gpu_count` GPUs each.
    nodes: int = 1
    # Sized as a pooling model (embed, rerank), and as an encoder with no KV cache.
    pooling: bool = False
    encoder_only: bool = False

    @property
    def layout(self) -> str:
        """`8 x nvidia-h100-80gb`, or across nodes `2 x 8 x nvidia-h100-80gb`."""
        per_node = f"{self.gpu_count} x {self.accelerator}"
        return per_node if self.nodes == 1 else f"{self.nodes} x {per_node}"

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.kv_cache_gib + self.overhead_gib + self.lora_gib

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.budget_gib

    @property
    def weights_fit(self) -> bool:
        """True when weights and overhead leave any room at all for the KV cache."""
        return self.weights_gib + self.overhead_gib + self.lora_gib < self.budget_gib

    def summary(self) -> str:
        kv = (
            f"KV cache {self.kv_cache_gib:.1f} for {self.context_tokens} tokens"
            if self.kv_known
            else f"KV cache reserve {self.kv_cache_gib:.1f} (architecture not known)"
        )
        if self.encoder_only:
            kv = f"no KV cache (an encoder, inputs up to {self.context_tokens} tokens)"
        lora = f" + LoRA {self.lora_gib:.2f}" if self.lora_gib > 0 else ""
        verdict = "fits" if self.fits else "does not fit"
        text = (
            f"{self.model}, {self.quantization} on {self.layout}: "
            f"{self.total_gib:.1f} GiB per GPU (weights {self.weights_gib:.1f} + {kv} + "
            f"overhead {self.overhead_gib:.1f}{lora}) against a {self.budget_gib:.1f} GiB budget "
            f"({self.fraction_text} x {self.memory_gib:g} GiB): {verdict}"
        )
        if self.max_fitting_context is not None:
            text += f"; longest context that fits: {self.max_fitting_context} tokens"
        return text

    def to_status(self) -> dict[str, Any]:
        """A JSON-ready summary for status.sizing; rounded so rewrites happen only on change."""
        return {
            "model": self.model,
            "quantization": self.quantization,
            "gpuCount": self.gpu_count,
            # Only across nodes, so a single-node status reads as it always did.
            **({"nodes": self.nodes, "layout": self.layout} if self.nodes > 1 else {}),
            "contextTokens": self.context_tokens,
            "weightsGiBPerGPU": round(self.weights_gib, 1),
            "kvCacheGiBPerGPU": round(self.kv_cache_gib, 1),
            "overheadGiBPerGPU": round(self.overhead_gib, 1),
            **({"loraGiBPerGPU": round(self.lora_gib, 2)} if self.lora_gib > 0 else {}),
            "totalGiBPerGPU": round(self.total_gib, 1),
            "budgetGiBPerGPU": round(self.budget_gib, 1),
            "fits": self.fits,
            **(
                {"maxFittingContext": self.max_fitting_context}
                if self.max_fitting_context is not None
                else {}
            ),
        }


def weight_bytes(arch: Architecture, fmt: WeightFormat) -> float:
    """Bytes of all weights, embeddings at 16-bit when the format leaves them so."""
    if arch.checkpoint_weight_bytes is not None and fmt.quantization == arch.checkpoint_format:
        # Sized from the checkpoint's own files in the format it is stored in.
        return arch.checkpoint_weight_bytes
    params = arch.parameters_billions * 1e9
    embeddings = arch.embedding_parameters
    if fmt.quantizes_embeddings or embeddings is None or embeddings >= params:
        # Embedding size unknown (modelInfo): the body rate for everything. This
        # under-counts small quantized models a little; the summary says so.
        return params * fmt.body_bytes_per_param
    return (params - embeddings) * fmt.body_bytes_per_param + embeddings * 2.0


def pooling_unloaded_bytes(arch: Architecture, pooling: bool) -> float:
    """The untied lm_head a pooling engine does not load (16-bit), for a decoder served
    for embed or rerank; 0 otherwise (checkpoint.py leaves it out already when the
    checkpoint's own files say it is a pooling model)."""
    if not pooling or arch.tied_embeddings or arch.encoder_only:
        return 0.0
    if arch.vocab_size is None or arch.hidden_size is None:
        return 0.0
    return float(arch.vocab_size * arch.hidden_size * 2)


def kv_heads_per_rank(arch: Architecture, tp: int) -> int | None:
    """KV heads each rank holds; heads are replicated when tp exceeds them."""
    heads = arch.kv_heads if arch.kv_heads is not None else arch.attention_heads
    if heads is None:
        return None
    return max(1, math.ceil(heads / tp))


def _kv_bytes_per_layer_token(arch: Architecture, tp: int, kv_cache_bytes: int) -> int | None:
    if arch.mla_kv_dim is not None:
        # MLA: the latent is not split over heads, so every rank caches all of it.
        return arch.mla_kv_dim * kv_cache_bytes
    heads = kv_heads_per_rank(arch, tp)
    if heads is None or arch.head_dim is None:
        return None
    return 2 * heads * arch.head_dim * kv_cache_bytes


def _stage(layers: int, pipeline: int) -> int:
    """Layers of the fullest of `pipeline` stages."""
    return -(-layers // pipeline)


def kv_bytes_per_token(
    arch: Architecture, tp: int, kv_cache_bytes: int, pipeline: int = 1
) -> int | None:
    """Per-GPU KV bytes per token of the layers that keep every token: K and V x
    (layers - sliding-window layers) x heads on this rank x head_dim x dtype; for MLA
    (kv_lora_rank + qk_rope_head_dim) x layers x dtype on every rank. With `pipeline`
    stages, the fullest stage's share of those layers."""
    if arch.encoder_only:
        return 0  # bidirectional attention over one input: nothing is cached
    per_layer = _kv_bytes_per_layer_token(arch, tp, kv_cache_bytes)
    if per_layer is None or arch.layers is None:
        return None
    return _stage(arch.layers - arch.sliding_layers, pipeline) * per_layer


def kv_window_bytes(
    arch: Architecture, tp: int, kv_cache_bytes: int, context: int, pipeline: int = 1
) -> int:
    """Per-GPU bytes the sliding-window layers hold for one sequence of `context`
    tokens: at most the window, however long the sequence (a hybrid KV cache manager
    frees the blocks that fell out of the window)."""
    per_layer = _kv_bytes_per_layer_token(arch, tp, kv_cache_bytes)
    if per_layer is None or not arch.sliding_layers or arch.sliding_window is None:
        return 0
    return _stage(arch.sliding_layers, pipeline) * per_layer * min(context, arch.sliding_window)


def activation_gib(
    arch: Architecture, tp: int, pooling: bool = False, context_tokens: int = 0
) -> float:
    """The profile batch's activation peak plus the sampler's logits, per GPU; a pooling
    model has no sampler, and an encoder's batch holds a whole input of the context."""
    if arch.hidden_size is None or arch.intermediate_size is None or arch.vocab_size is None:
        return ACTIVATION_FALLBACK_GIB
    width = 4 * arch.hidden_size + 2 * arch.experts_per_token * arch.intermediate_size / tp
    batch = PROFILE_BATCH_TOKENS
    if arch.encoder_only:
        batch = max(PROFILE_BATCH_TOKENS, context_tokens)
    layer_peak = batch * width * 2
    sampler = 0 if pooling else MAX_NUM_SEQS * arch.vocab_size * 4 * 2
    return (layer_peak + sampler) / GIB


def overhead_gib(
    arch: Architecture, tp: int, pooling: bool = False, context_tokens: int = 0
) -> float:
    comms = TENSOR_PARALLEL_OVERHEAD_GIB if tp > 1 else 0.0
    return BASE_OVERHEAD_GIB + comms + activation_gib(arch, tp, pooling, context_tokens)


def lora_overhead_bytes(arch: Architecture, lora: LoraSpec | None) -> int:
    """The flat LoRA slot term of the module docstring; 0 without LoRA or the shape."""
    if lora is None or arch.hidden_size is None or arch.layers is None:
        return 0
    return (
        lora.max_adapters
        * lora.max_rank
        * arch.hidden_size
        * arch.layers
        * 2
        * LORA_PROJECTIONS
        * LORA_DTYPE_BYTES
    )


def estimate_memory(
    arch: Architecture,
    fmt: WeightFormat,
    accelerator: Accelerator,
    gpu_count: int,
    context_tokens: int,
    settings: EngineSettings,
    nodes: int = 1,
    pooling: bool = False,
) -> Estimate:
    """The per-GPU estimate for `gpu_count` tensor-parallel ranks on each of `nodes`
    pipeline stages, and one sequence of `context_tokens` (what the engine requires of
    `max_model_len`); `pooling`: a model served for embed or rerank."""
    weights = (
        (weight_bytes(arch, fmt) - pooling_unloaded_bytes(arch, pooling))
        / (gpu_count * nodes)
        / GIB
    )
    overhead = overhead_gib(arch, gpu_count, pooling, context_tokens)
    lora = lora_overhead_bytes(arch, settings.lora) / GIB
    budget = accelerator.memory_gib * settings.memory_fraction
    per_token = kv_bytes_per_token(arch, gpu_count, settings.kv_cache_bytes, nodes)
    room = budget - weights - overhead - lora
    if per_token is None:
        kv = budget * UNKNOWN_KV_RESERVE
        capacity = None
        max_context = None
    else:
        window = kv_window_bytes(arch, gpu_count, settings.kv_cache_bytes, context_tokens, nodes)
        kv = (context_tokens * per_token + window) / GIB
        if per_token == 0:
            # Every layer is windowed: the KV cache does not grow past the window.
            capacity = arch.max_context_length or context_tokens
        else:
            full_room = max(0.0, room - window / GIB)
            blocks = math.floor(full_room * GIB / (per_token * KV_BLOCK_TOKENS))
            capacity = blocks * KV_BLOCK_TOKENS
        max_context = capacity
        if arch.max_context_length is not None:
            max_context = min(capacity, arch.max_context_length)
    return Estimate(
        model=arch.name,
        quantization=fmt.label,
        accelerator=accelerator.name,
        gpu_count=gpu_count,
        context_tokens=context_tokens,
        weights_gib=weights,
        kv_cache_gib=kv,
        kv_known=per_token is not None,
        overhead_gib=overhead,
        budget_gib=budget,
        memory_gib=accelerator.memory_gib,
        fraction_text=settings.fraction_text,
        kv_bytes_per_token=per_token,
        kv_capacity_tokens=capacity,
        max_fitting_context=max_context,
        lora_gib=lora,
        nodes=nodes,
        pooling=pooling,
        encoder_only=arch.encoder_only,
    )
