"""The model catalogue: architecture numbers of well-known open-weight model families.

`recognise(model)` maps a Hugging Face repo id (or the last path component of a
pvc://, s3://, gs:// URI) to an `Architecture` by normalised family and size tokens,
so `hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4`, `meta-llama/Llama-3.1-70B-Instruct`
and `deepseek-ai/DeepSeek-R1-Distill-Llama-70B` all land on the same numbers without a
list of exact ids. `resolve_model` adds `spec.modelInfo`, which replaces the catalogue
entry wholesale when present (it is how a user describes a model we do not know).

Numbers are the `config.json` values of the named checkpoints (hidden_size,
intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
head_dim, vocab_size, max_position_embeddings, tie_word_embeddings) and the parameter
counts Hugging Face shows. `tests/unit/test_sizing_catalogue.py` recomputes every
parameter count from the other numbers, which catches a mistyped dimension.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from openmodel.api import ModelInfo


@dataclass(frozen=True)
class Architecture:
    """What sizing needs to know about a model; None means "not known"."""

    name: str
    parameters_billions: float
    layers: int | None = None
    attention_heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_context_length: int | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    tied_embeddings: bool = False
    # Mixture of experts: every expert's weights are resident, but each token only
    # activates `experts_per_token` of them, which is what the activation peak sees.
    experts: int = 1
    experts_per_token: int = 1
    # Multi-head latent attention (DeepSeek-V2/V3): one latent of kv_lora_rank +
    # qk_rope_head_dim values per token and layer is cached, not K and V per head.
    mla_kv_dim: int | None = None
    # Sliding-window (or chunked local) attention: `sliding_layers` of the layers keep
    # at most `sliding_window` tokens per sequence in the KV cache.
    sliding_window: int | None = None
    sliding_layers: int = 0
    # Set when the numbers come from the checkpoint's own files: the format it is
    # stored in (a spec.quantization value, or e.g. "mxfp4") and the bytes its
    # weights take in that format (safetensors index total_size, or counted).
    checkpoint_format: str | None = None
    checkpoint_weight_bytes: float | None = None
    # A BERT-style encoder (bidirectional attention): no KV cache, and an input is read
    # in one batch, so the engine's batch is at least the context.
    encoder_only: bool = False

    @property
    def embedding_parameters(self) -> int | None:
        """Input embedding plus (unless tied) lm_head: the part quantizers keep 16-bit."""
        if self.vocab_size is None or self.hidden_size is None:
            return None
        copies = 1 if self.tied_embeddings else 2
        return copies * self.vocab_size * self.hidden_size

    @property
    def kv_known(self) -> bool:
        """True when the KV cache per token can be computed."""
        return (
            self.layers is not None
            and self.head_dim is not None
            and (self.kv_heads is not None or self.attention_heads is not None)
        )


@dataclass(frozen=True)
class ResolvedModel:
    """The architecture sizing will use, and where it came from."""

    architecture: Architecture
    source: Literal["catalogue", "modelInfo", "config.json"]


# ---------------------------------------------------------------------------
# Architectures. One constant per distinct architecture; families below point at them.
# ---------------------------------------------------------------------------

LLAMA_31_8B = Architecture(
    name="Llama 3.1 8B",
    parameters_billions=8.03,
    layers=32,
    attention_heads=32,
    kv_heads=8,
    head_dim=128,
    intermediate_size=14336,
    max_context_length=131072,
    hidden_size=4096,
    vocab_size=128256,
)
LLAMA_31_70B = Architecture(
    name="Llama 3.1 70B",
    parameters_billions=70.6,
    layers=80,
    attention_heads=64,
    kv_heads=8,
    head_dim=128,
    intermediate_size=28672,
    max_context_length=131072,
    hidden_size=8192,
    vocab_size=128256,
)
LLAMA_31_405B = Architecture(
    name="Llama 3.1 405B",
    parameters_billions=405.9,
    layers=126,
    attention_heads=128,
    kv_heads=8,
    head_dim=128,
    intermediate_size=53248,
    max_context_length=131072,
    hidden_size=16384,
    vocab_size=128256,
)
# Llama 3 (the April 2024 release) is the same network with an 8k context.
LLAMA_3_8B = replace(LLAMA_31_8B, name="Llama 3 8B", max_context_length=8192)
LLAMA_3_70B = replace(LLAMA_31_70B, name="Llama 3 70B", max_context_length=8192)
LLAMA_33_70B = replace(LLAMA_31_70B, name="Llama 3.3 70B")
LLAMA_32_1B = Architecture(
    name="Llama 3.2 1B",
    parameters_billions=1.24,
    layers=16,
    attention_heads=32,
    kv_heads=8,
    head_dim=64,
    intermediate_size=8192,
    max_context_length=131072,
    hidden_size=2048,
    vocab_size=128256,
    tied_embeddings=True,
)
LLAMA_32_3B = Architecture(
    name="Llama 3.2 3B",
    parameters_billions=3.21,
    layers=28,
    attention_heads=24,
    kv_heads=8,
    head_dim=128,
    intermediate_size=8192,
    max_context_length=131072,
    hidden_size=3072,
    vocab_size=128256,
    tied_embeddings=True,
)
# v0.3 numbers; v0.1/v0.2 differ only by a 32000 vocabulary (a few M parameters).
MISTRAL_7B = Architecture(
    name="Mistral 7B",
    parameters_billions=7.25,
    layers=32,
    attention_heads=32,
    kv_heads=8,
    head_dim=128,
    intermediate_size=14336,
    max_context_length=32768,
    hidden_size=4096,
    vocab_size=32768,
)
MIXTRAL_8X7B = Architecture(
    name="Mixtral 8x7B",
    parameters_billions=46.7,
    layers=32,
    attention_heads=32,
    kv_heads=8,
    head_dim=128,
    intermediate_size=14336,
    max_context_length=32768,
    hidden_size=4096,
    vocab_size=32000,
    experts=8,
    experts_per_token=2,
)
MIXTRAL_8X22B = Architecture(
    name="Mixtral 8x22B",
    parameters_billions=140.6,
    layers=56,
    attention_heads=48,
    kv_heads=8,
    head_dim=128,
    intermediate_size=16384,
    max_context_length=65536,
    hidden_size=6144,
    vocab_size=32768,
    experts=8,
    experts_per_token=2,
)
# Qwen2.5 instruct configs state 32768 (YaRN can extend it, which the user must ask for).
QWEN25_0_5B = Architecture(
    name="Qwen2.5 0.5B",
    parameters_billions=0.494,
    layers=24,
    attention_heads=14,
    kv_heads=2,
    head_dim=64,
    intermediate_size=4864,
    max_context_length=32768,
    hidden_size=896,
    vocab_size=151936,
    tied_embeddings=True,
)
QWEN25_1_5B = Architecture(
    name="Qwen2.5 1.5B",
    parameters_billions=1.54,
    layers=28,
    attention_heads=12,
    kv_heads=2,
    head_dim=128,
    intermediate_size=8960,
    max_context_length=32768,
    hidden_size=1536,
    vocab_size=151936,
    tied_embeddings=True,
)
QWEN25_3B = Architecture(
    name="Qwen2.5 3B",
    parameters_billions=3.09,
    layers=36,
    attention_heads=16,
    kv_heads=2,
    head_dim=128,
    intermediate_size=11008,
    max_context_length=32768,
    hidden_size=2048,
    vocab_size=151936,
    tied_embeddings=True,
)
QWEN25_7B = Architecture(
    name="Qwen2.5 7B",
    parameters_billions=7.62,
    layers=28,
    attention_heads=28,
    kv_heads=4,
    head_dim=128,
    intermediate_size=18944,
    max_context_length=32768,
    hidden_size=3584,
    vocab_size=152064,
)
QWEN25_14B = Architecture(
    name="Qwen2.5 14B",
    parameters_billions=14.8,
    layers=48,
    attention_heads=40,
    kv_heads=8,
    head_dim=128,
    intermediate_size=13824,
    max_context_length=32768,
    hidden_size=5120,
    vocab_size=152064,
)
QWEN25_32B = Architecture(
    name="Qwen2.5 32B",
    parameters_billions=32.8,
    layers=64,
    attention_heads=40,
    kv_heads=8,
    head_dim=128,
    intermediate_size=27648,
    max_context_length=32768,
    hidden_size=5120,
    vocab_size=152064,
)
QWEN25_72B = Architecture(
    name="Qwen2.5 72B",
    parameters_billions=72.7,
    layers=80,
    attention_heads=64,
    kv_heads=8,
    head_dim=128,
    intermediate_size=29568,
    max_context_length=32768,
    hidden_size=8192,
    vocab_size=152064,
)
# Qwen's own AWQ/GPTQ 72B checkpoints zero-pad the MLP to 29696 (= 232 x 128) so that
# tensor parallel 2/4/8 passes the group-size rule (sizing/parallelism.py); 29568 =
# 231 x 128 only allows 1.
# (QwenLM/Qwen2.5 quantization docs; QwenLM/Qwen2-VL issue 231.)
QWEN_OFFICIAL_QUANTIZED_72B_INTERMEDIATE = 29696

# DeepSeek-R1 distills keep their base architecture but ship a 128k context.
# (?) 131072 is from the distills' config.json as recalled, not re-checked here.
R1_DISTILL_LLAMA_8B = replace(LLAMA_31_8B, name="DeepSeek-R1-Distill-Llama-8B (Llama 3.1 8B)")
R1_DISTILL_LLAMA_70B = replace(LLAMA_33_70B, name="DeepSeek-R1-Distill-Llama-70B (Llama 3.3 70B)")
# The 1.5B distill (from Qwen2.5-Math-1.5B) unties lm_head: 1.78B parameters, not 1.54B.
R1_DISTILL_QWEN_1_5B = replace(
    QWEN25_1_5B,
    name="DeepSeek-R1-Distill-Qwen-1.5B (Qwen2.5 1.5B)",
    parameters_billions=1.78,
    tied_embeddings=False,
    max_context_length=131072,
)
R1_DISTILL_QWEN_7B = replace(
    QWEN25_7B, name="DeepSeek-R1-Distill-Qwen-7B (Qwen2.5 7B)", max_context_length=131072
)
R1_DISTILL_QWEN_14B = replace(
    QWEN25_14B, name="DeepSeek-R1-Distill-Qwen-14B (Qwen2.5 14B)", max_context_length=131072
)
R1_DISTILL_QWEN_32B = replace(
    QWEN25_32B, name="DeepSeek-R1-Distill-Qwen-32B (Qwen2.5 32B)", max_context_length=131072
)
# Gemma 2 alternates 4096-token sliding-window and global layers; sizing treats every
# layer as global, which is what engines without a hybrid KV allocator reserve.
GEMMA2_2B = Architecture(
    name="Gemma 2 2B",
    parameters_billions=2.61,
    layers=26,
    attention_heads=8,
    kv_heads=4,
    head_dim=256,
    intermediate_size=9216,
    max_context_length=8192,
    hidden_size=2304,
    vocab_size=256000,
    tied_embeddings=True,
)
GEMMA2_9B = Architecture(
    name="Gemma 2 9B",
    parameters_billions=9.24,
    layers=42,
    attention_heads=16,
    kv_heads=8,
    head_dim=256,
    intermediate_size=14336,
    max_context_length=8192,
    hidden_size=3584,
    vocab_size=256000,
    tied_embeddings=True,
)
GEMMA2_27B = Architecture(
    name="Gemma 2 27B",
    parameters_billions=27.2,
    layers=46,
    attention_heads=32,
    kv_heads=16,
    head_dim=128,
    intermediate_size=36864,
    max_context_length=8192,
    hidden_size=4608,
    vocab_size=256000,
    tied_embeddings=True,
)
PHI3_MINI_4K = Architecture(
    name="Phi-3-mini (4k)",
    parameters_billions=3.82,
    layers=32,
    attention_heads=32,
    kv_heads=32,
    head_dim=96,
    intermediate_size=8192,
    max_context_length=4096,
    hidden_size=3072,
    vocab_size=32064,
)
PHI3_MINI_128K = replace(PHI3_MINI_4K, name="Phi-3-mini (128k)", max_context_length=131072)


# Current families (2025). Numbers are what `sizing.checkpoint.read_checkpoint` counts
# from each repo's config.json (tests/unit/data/hf-configs/, checked against the
# published counts); the catalogue is the fallback when config.json cannot be read.
QWEN3_8B = Architecture(
    name="Qwen3 8B",
    parameters_billions=8.19,
    layers=36,
    attention_heads=32,
    kv_heads=8,
    head_dim=128,
    intermediate_size=12288,
    max_context_length=40960,
    hidden_size=4096,
    vocab_size=151936,
)
QWEN3_235B_A22B = Architecture(
    name="Qwen3 235B-A22B",
    parameters_billions=235.09,
    layers=94,
    attention_heads=64,
    kv_heads=4,
    head_dim=128,
    intermediate_size=1536,  # per expert
    max_context_length=40960,
    hidden_size=4096,
    vocab_size=151936,
    experts=128,
    experts_per_token=8,
)
# Vision tower included (0.87B). 36 of 48 layers attend within 8192-token chunks.
LLAMA4_SCOUT = Architecture(
    name="Llama 4 Scout 17B-16E",
    parameters_billions=108.64,
    layers=48,
    attention_heads=40,
    kv_heads=8,
    head_dim=128,
    intermediate_size=8192,
    max_context_length=10485760,
    hidden_size=5120,
    vocab_size=202048,
    experts=16,
    experts_per_token=1,
    sliding_window=8192,
    sliding_layers=36,
)
# Shipped in MXFP4 (experts 4.25 bits; attention, router, embeddings bf16): 65.2 GB.
GPT_OSS_120B = Architecture(
    name="gpt-oss-120b",
    parameters_billions=116.83,
    layers=36,
    attention_heads=64,
    kv_heads=8,
    head_dim=64,
    intermediate_size=2880,
    max_context_length=131072,
    hidden_size=2880,
    vocab_size=201088,
    experts=128,
    experts_per_token=4,
    sliding_window=128,
    sliding_layers=18,
    checkpoint_format="mxfp4",
    checkpoint_weight_bytes=65.2e9,
)
# MLA: 512 + 64 cached values per layer and token; shipped in fp8 (block 128x128).
# The multi-token-prediction module (14B) is not loaded for serving, so not counted.
DEEPSEEK_V3 = Architecture(
    name="DeepSeek-V3",
    parameters_billions=671.03,
    layers=61,
    attention_heads=128,
    kv_heads=128,
    head_dim=192,
    intermediate_size=2048,  # per expert
    max_context_length=163840,
    hidden_size=7168,
    vocab_size=129280,
    experts=256,
    experts_per_token=8,
    mla_kv_dim=576,
    checkpoint_format="fp8",
    checkpoint_weight_bytes=673.0e9,
)
DEEPSEEK_R1 = replace(DEEPSEEK_V3, name="DeepSeek-R1 (DeepSeek-V3)")
# Vision tower included (0.42B); 52 of 62 layers use a 1024-token sliding window.
GEMMA3_27B = Architecture(
    name="Gemma 3 27B",
    parameters_billions=27.43,
    layers=62,
    attention_heads=32,
    kv_heads=16,
    head_dim=128,
    intermediate_size=21504,
    max_context_length=131072,
    hidden_size=5376,
    vocab_size=262208,
    tied_embeddings=True,
    sliding_window=1024,
    sliding_layers=52,
)
MISTRAL_LARGE_2411 = Architecture(
    name="Mistral Large 2 (123B)",
    parameters_billions=122.61,
    layers=88,
    attention_heads=96,
    kv_heads=8,
    head_dim=128,
    intermediate_size=28672,
    max_context_length=131072,
    hidden_size=12288,
    vocab_size=32768,
)


@dataclass(frozen=True)
class _Family:
    """A family regex over the normalised name, and its sizes by size token.

    A size key of None means the family has one size and needs no size token.
    """

    pattern: re.Pattern[str]
    sizes: dict[str | None, Architecture]


def _family(pattern: str, sizes: dict[str | None, Architecture]) -> _Family:
    # No letter or digit right before the family: keeps `codellama`, `tinyllama`,
    # `paligemma2` and `recurrentgemma` out of the Llama and Gemma families.
    return _Family(re.compile(r"(?<![a-z0-9])" + pattern), sizes)


# Order matters: distills name their base family, so they come first.
_FAMILIES: tuple[_Family, ...] = (
    _family(r"r1-distill-llama", {"8b": R1_DISTILL_LLAMA_8B, "70b": R1_DISTILL_LLAMA_70B}),
    _family(
        r"r1-distill-qwen",
        {
            "1.5b": R1_DISTILL_QWEN_1_5B,
            "7b": R1_DISTILL_QWEN_7B,
            "14b": R1_DISTILL_QWEN_14B,
            "32b": R1_DISTILL_QWEN_32B,
        },
    ),
    _family(
        r"llama-?3\.1(?![0-9])", {"8b": LLAMA_31_8B, "70b": LLAMA_31_70B, "405b": LLAMA_31_405B}
    ),
    _family(r"llama-?3\.3(?![0-9])", {"70b": LLAMA_33_70B}),
    _family(r"llama-?3\.2(?![0-9])", {"1b": LLAMA_32_1B, "3b": LLAMA_32_3B}),
    _family(r"llama-?3(?![.0-9])", {"8b": LLAMA_3_8B, "70b": LLAMA_3_70B}),
    _family(r"mixtral", {"8x7b": MIXTRAL_8X7B, "8x22b": MIXTRAL_8X22B}),
    _family(r"mistral-large(?!-3)", {None: MISTRAL_LARGE_2411}),
    _family(r"mistral", {"7b": MISTRAL_7B}),
    _family(r"deepseek-v3(?![.0-9])", {None: DEEPSEEK_V3}),
    _family(r"deepseek-r1(?!-distill)", {None: DEEPSEEK_R1}),
    _family(r"qwen-?3(?![.0-9])", {"8b": QWEN3_8B, "235b": QWEN3_235B_A22B}),
    _family(r"llama-?4-scout", {None: LLAMA4_SCOUT}),
    _family(r"gpt-oss", {"120b": GPT_OSS_120B}),
    _family(r"gemma-?3(?![0-9n])", {"27b": GEMMA3_27B}),
    _family(
        r"qwen-?2\.5(?![0-9])",
        {
            "0.5b": QWEN25_0_5B,
            "1.5b": QWEN25_1_5B,
            "3b": QWEN25_3B,
            "7b": QWEN25_7B,
            "14b": QWEN25_14B,
            "32b": QWEN25_32B,
            "72b": QWEN25_72B,
        },
    ),
    _family(r"gemma-?2(?![0-9])", {"2b": GEMMA2_2B, "9b": GEMMA2_9B, "27b": GEMMA2_27B}),
    _family(r"phi-?3\.5-mini|phi-?3-mini-128k", {None: PHI3_MINI_128K}),
    _family(r"phi-?3-mini", {None: PHI3_MINI_4K}),
)

# A size token: `8b`, `1.5b`, `8x7b`; not `4bit`, `int4`, `w4a16` or the `5` of `2.5`.
_SIZE_TOKEN = re.compile(r"(?<![a-z0-9.])(\d+x\d+b|\d+(?:\.\d+)?b)(?![a-z0-9])")
# Same family name, different (multimodal) network: better unknown than wrong.
_EXCLUDED_TOKENS = frozenset({"vl", "vision", "audio", "omni"})
_TOKEN_SPLIT = re.compile(r"[-._]")
_URI_SCHEMES = ("pvc://", "s3://", "gs://")


def normalised_name(model: str) -> str:
    """The lower-cased last path component, `_`, `:` and spaces turned into `-`."""
    last = model.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    return re.sub(r"[_:\s]+", "-", last)


def name_tokens(model: str) -> tuple[str, ...]:
    """The normalised name split at `-`, `.` and `_`: what quantization hints are read from."""
    return tuple(t for t in _TOKEN_SPLIT.split(normalised_name(model)) if t)


def repo_org(model: str) -> str | None:
    """The Hugging Face organisation of `org/name` (lower-case); None for URIs and bare names."""
    if model.startswith(_URI_SCHEMES):
        return None
    parts = model.strip().strip("/").split("/")
    return parts[-2].lower() if len(parts) >= 2 else None


def _size_token(rest: str) -> str | None:
    match = _SIZE_TOKEN.search(rest)
    return match.group(1) if match else None


def recognise(model: str) -> Architecture | None:
    """The catalogue architecture for a repo id or URI, or None when it is not known."""
    name = normalised_name(model)
    if _EXCLUDED_TOKENS.intersection(name_tokens(model)):
        return None
    for family in _FAMILIES:
        found = family.pattern.search(name)
        if found is None:
            continue
        if None in family.sizes:
            return family.sizes[None]
        arch = family.sizes.get(_size_token(name[found.end() :]) or "")
        if arch is None:
            # The family is known but not this size (e.g. Mistral Small 24B): unknown.
            return None
        return _with_checkpoint_quirks(arch, model)
    return None


def _with_checkpoint_quirks(arch: Architecture, model: str) -> Architecture:
    """Adjust for a checkpoint that changes a number its base config has."""
    tokens = set(name_tokens(model))
    quantized = bool(tokens & {"awq", "gptq"})
    # Qwen's own 72B AWQ/GPTQ repos are padded; a third party's usually are not. A URI
    # has no organisation: assume the official (padded) layout rather than refuse
    # counts that may well work.
    if arch is QWEN25_72B and quantized and repo_org(model) in (None, "qwen"):
        return replace(arch, intermediate_size=QWEN_OFFICIAL_QUANTIZED_72B_INTERMEDIATE)
    return arch


def from_model_info(info: ModelInfo, model: str) -> Architecture:
    """The architecture a user stated in `spec.modelInfo`."""
    return Architecture(
        name=f"{normalised_name(model)} (spec.modelInfo)",
        parameters_billions=info.parameters_billions,
        layers=info.layers,
        attention_heads=info.attention_heads,
        kv_heads=info.kv_heads,
        head_dim=info.head_dim,
        intermediate_size=info.intermediate_size,
        max_context_length=info.max_context_length,
    )


def resolve_model(model: str, model_info: ModelInfo | None) -> ResolvedModel | None:
    """The architecture to size with: `spec.modelInfo` when given, else the catalogue.

    modelInfo replaces the catalogue entry as a whole rather than field by field: mixing
    a user's parameter count with another size's layer count would be worse than either.
    """
    if model_info is not None:
        return ResolvedModel(from_model_info(model_info, model), "modelInfo")
    arch = recognise(model)
    return None if arch is None else ResolvedModel(arch, "catalogue")
