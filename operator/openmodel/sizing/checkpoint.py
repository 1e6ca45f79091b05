"""A checkpoint's own files -> `Architecture`: sizing for models the catalogue does not know.

Pure parsing, no I/O (`openmodel.model_resolver` fetches the files). Inputs:
- `config.json` (the text part is `text_config` / `llm_config` of a multimodal config);
- its `quantization_config`: awq, gptq, fp8, compressed-tensors, mxfp4, bitsandbytes;
- optionally the safetensors index (`metadata.total_size`: the bytes the weights take
  as stored) and safetensors headers (dtype and shape of every tensor).

Parameters are counted from the dimensions, layer by layer, as the modelling code
builds them: embeddings (and lm_head unless tied), attention (GQA, or MLA with its
low-rank projections), the MLP of each layer (dense, or every expert of a MoE layer
plus shared experts and the router: all experts are resident), norms, and a vision
tower when there is one. DeepSeek's multi-token-prediction layers
(`num_nextn_predict_layers`) are not counted: engines load them only for speculative
decoding. With safetensors headers of an unquantized checkpoint the count is exact
(the sum of the tensors' elements).

Encoders (BERT, RoBERTa, XLM-RoBERTa and their kin: `ENCODER_MODEL_TYPES`) are counted as
BERT builds them: word, position and token-type embeddings, per layer attention with
biases, a two-matrix MLP and two LayerNorms, and the pooler or classification head. They
keep no KV cache (bidirectional attention over one input at a time).

The task (`checkpoint_task`): what the checkpoint is for, from its architecture and the
files beside config.json: `*ForSequenceClassification` with one label is a cross-encoder
(rerank); a bare `*Model`, or a sentence-transformers repo (`modules.json`,
`config_sentence_transformers.json`), an embedding model (embed); a `*ForCausalLM`
without those files a generator. Qwen3-Embedding and Qwen3-Reranker declare
`Qwen3ForCausalLM`: the first ships the sentence-transformers files, the second needs
spec.task. A pooling model's untied lm_head is not counted when the size is counted from
config.json: pooling engines never load it.

KV cache: layers x KV heads x head_dim, except MLA (kv_lora_rank + qk_rope_head_dim per
layer and token) and sliding-window layers (Gemma 2/3, gpt-oss, Llama 4's chunked
layers), which hold at most their window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from openmodel.sizing.catalogue import Architecture, normalised_name
from openmodel.sizing.formats import WeightFormat

# PretrainedConfig's default, and what Gemma and most small models rely on.
DEFAULT_TIE_WORD_EMBEDDINGS = True
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1}
_SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
# Per-model defaults transformers applies when config.json leaves a key out.
_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "gemma3_text": {
        "vocab_size": 262208,
        "max_position_embeddings": 131072,
        "sliding_window_pattern": 6,
        "head_dim": 256,
    },
    "gemma2": {"sliding_window": 4096, "head_dim": 256},
    "llama4_text": {"no_rope_layer_interval": 4},
}
GATED_ACTIVATIONS = frozenset({"silu", "swiglu", "swish"})
# config.json model_type of encoders with BERT's layout (bidirectional attention, no KV
# cache): counted by `_encoder_counts`.
ENCODER_MODEL_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet", "distilbert"}
)
# Files a sentence-transformers repo has beside config.json: an embedding model however
# its architecture is named.
SENTENCE_TRANSFORMERS_FILES = frozenset({"modules.json", "config_sentence_transformers.json"})
# Architecture name suffixes of embedding models (an engine's own guess of a
# model's runner reads the same suffixes); a bare `*Model` is matched last.
_EMBEDDING_SUFFIXES = ("ForTextEncoding", "EmbeddingModel")
_GENERATIVE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "ChatModel")


class CheckpointError(ValueError):
    """config.json lacks what sizing needs, or holds a model type it cannot count."""


@dataclass(frozen=True)
class CheckpointQuantization:
    """The checkpoint's own quantization, from config.json's quantization_config."""

    method: str  # quant_method as written
    # The spec.quantization that loads it; "none" where the engine detects it and no
    # flag exists (mxfp4: the engine reads it from the checkpoint).
    spec_value: str
    bits: int
    bytes_per_param: float  # for the quantized linear layers, scales included
    group_size: int | None
    not_converted: tuple[str, ...] = ()  # module patterns kept 16-bit

    @property
    def label(self) -> str:
        return f"{self.method} {self.bits}-bit"

    def keeps_attention_16bit(self) -> bool:
        return any("self_attn" in p or p == "attn" for p in self.not_converted)


@dataclass(frozen=True)
class Checkpoint:
    """What sizing knows about a checkpoint from its own files."""

    architecture: Architecture
    quantization: CheckpointQuantization | None
    parameters: int
    parameters_source: str  # "config.json" or "safetensors headers"
    vision_parameters: int
    weight_bytes: float  # as stored: index total_size, headers, or counted
    weight_bytes_source: str
    torch_dtype: str
    notes: tuple[str, ...] = ()
    # What the checkpoint serves, as its files tell (`checkpoint_task`); None: they do
    # not tell, so generate unless spec.task says otherwise.
    task: str | None = None

    def weight_format(self) -> WeightFormat:
        """The format the engine loads when spec.quantization is none (auto-detect)."""
        q = self.quantization
        if q is None:
            return WeightFormat("none", 16, 2.0, False, None, "checkpoint config.json")
        return WeightFormat(
            q.spec_value if q.spec_value != "none" else q.method,
            q.bits,
            q.bytes_per_param,
            False,
            q.group_size,
            "checkpoint config.json",
        )


# ---------------------------------------------------------------------------
# quantization_config
# ---------------------------------------------------------------------------


def _group_rate(bits: int, group: int | None, zero_point: bool) -> float:
    if group is None or group <= 0:
        return bits / 8
    return bits / 8 + (2 + (bits / 8 if zero_point else 0)) / group


def parse_quantization(raw: Mapping[str, Any] | None) -> CheckpointQuantization | None:
    """quantization_config -> CheckpointQuantization; None when there is none."""
    if not raw:
        return None
    method = str(raw.get("quant_method") or "").lower()
    skipped = tuple(
        str(m)
        for key in ("modules_to_not_convert", "ignore", "llm_int8_skip_modules")
        for m in (raw.get(key) or ())
    )
    if method == "awq":
        bits = int(raw.get("bits", raw.get("w_bit", 4)))
        group = int(raw.get("group_size", raw.get("q_group_size", 128)))
        zero = bool(raw.get("zero_point", True))
        return CheckpointQuantization(
            "awq", "awq", bits, _group_rate(bits, group, zero), group, skipped
        )
    if method == "gptq":
        bits = int(raw.get("bits", 4))
        group = int(raw.get("group_size", 128))
        rate = _group_rate(bits, group if group > 0 else None, True)
        return CheckpointQuantization(
            "gptq", "gptq", bits, rate, group if group > 0 else None, skipped
        )
    if method in ("fp8", "fbgemm_fp8"):
        block = raw.get("weight_block_size")
        scales = 4 / (block[0] * block[1]) if isinstance(block, list) and len(block) == 2 else 0
        return CheckpointQuantization(method, "fp8", 8, 1.0 + scales, None, skipped)
    if method == "compressed-tensors":
        return _compressed_tensors(raw, skipped)
    if method == "mxfp4":
        # FP4 (e2m1) values and one 8-bit scale per 32: 4.25 bits per weight.
        return CheckpointQuantization("mxfp4", "none", 4, 4.25 / 8, None, skipped)
    if method == "bitsandbytes":
        if raw.get("load_in_8bit"):
            return CheckpointQuantization("bitsandbytes", "bitsandbytes", 8, 1.0, None, skipped)
        return CheckpointQuantization(
            "bitsandbytes", "bitsandbytes", 4, 0.5 + 4 / 64, None, skipped
        )
    raise CheckpointError(
        f"quantization_config.quant_method {method or '(missing)'!r} is not one sizing knows "
        "(awq, gptq, fp8, compressed-tensors, mxfp4, bitsandbytes)"
    )


def _compressed_tensors(raw: Mapping[str, Any], skipped: tuple[str, ...]) -> CheckpointQuantization:
    groups = raw.get("config_groups") or {}
    weights: Mapping[str, Any] = {}
    for group in groups.values() if isinstance(groups, Mapping) else ():
        weights = (group or {}).get("weights") or {}
        if weights:
            break
    bits = int(weights.get("num_bits", 8))
    if weights.get("type") == "float" or bits >= 8:
        return CheckpointQuantization(
            "compressed-tensors", "compressed-tensors", bits, bits / 8, None, skipped
        )
    group = weights.get("group_size")
    size = int(group) if isinstance(group, int) and weights.get("strategy") == "group" else None
    rate = _group_rate(bits, size, not weights.get("symmetric", True))
    return CheckpointQuantization(
        "compressed-tensors", "compressed-tensors", bits, rate, size, skipped
    )


# ---------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------


def _int(cfg: Mapping[str, Any], *keys: str, default: int | None = None) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def _need(cfg: Mapping[str, Any], *keys: str) -> int:
    value = _int(cfg, *keys)
    if value is None:
        raise CheckpointError(f"config.json has no {' or '.join(keys)}")
    return value


def text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The language model's config, with transformers' defaults for absent keys."""
    inner = config.get("text_config") or config.get("llm_config")
    text = dict(inner) if isinstance(inner, Mapping) else dict(config)
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    if model_type == "gemma3":
        model_type = "gemma3_text"
    text["model_type"] = model_type
    for key, value in _DEFAULTS.get(model_type, {}).items():
        text.setdefault(key, value)
    if "tie_word_embeddings" not in text and "tie_word_embeddings" in config:
        text["tie_word_embeddings"] = config["tie_word_embeddings"]
    return text


@dataclass(frozen=True)
class _Counts:
    embeddings: int
    attention: int  # all layers
    mlp: int  # all layers, every expert
    norms: int
    vision: int

    @property
    def total(self) -> int:
        return self.embeddings + self.attention + self.mlp + self.norms + self.vision


def _attention_per_layer(t: Mapping[str, Any], hidden: int, heads: int) -> int:
    if t.get("kv_lora_rank"):
        rope = _need(t, "qk_rope_head_dim")
        nope = _need(t, "qk_nope_head_dim")
        v_dim = _int(t, "v_head_dim", default=nope) or nope
        lora = _need(t, "kv_lora_rank")
        q_rank = _int(t, "q_lora_rank")
        q = (
            hidden * heads * (nope + rope)
            if not q_rank
            else (hidden * q_rank + q_rank + q_rank * heads * (nope + rope))
        )
        kv = hidden * (lora + rope) + lora + lora * heads * (nope + v_dim)
        return q + kv + heads * v_dim * hidden
    kv_heads = _int(t, "num_key_value_heads", default=heads) or heads
    head_dim = _int(t, "head_dim") or hidden // heads
    weights = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
    bias = (
        head_dim * (heads + 2 * kv_heads)
        if t.get("attention_bias")
        or t.get("model_type") in ("qwen2", "qwen2_5_vl_text", "qwen2_vl")
        else 0
    )
    qk_norm = 2 * head_dim if t.get("model_type") in ("qwen3", "qwen3_moe", "gemma3_text") else 0
    return weights + bias + qk_norm


def _experts(t: Mapping[str, Any]) -> int:
    return _int(t, "n_routed_experts", "num_experts", "num_local_experts", default=1) or 1


def _is_moe_layer(t: Mapping[str, Any], i: int) -> bool:
    if _experts(t) <= 1:
        return False
    if "first_k_dense_replace" in t or "moe_layer_freq" in t:  # DeepSeek
        first = _int(t, "first_k_dense_replace", default=0) or 0
        freq = _int(t, "moe_layer_freq", default=1) or 1
        return i >= first and i % freq == 0
    if "interleave_moe_layer_step" in t:  # Llama 4
        step = _int(t, "interleave_moe_layer_step", default=1) or 1
        return (i + 1) % step == 0
    if i in (t.get("mlp_only_layers") or ()):  # Qwen MoE
        return False
    step = _int(t, "decoder_sparse_step", default=1) or 1
    return (i + 1) % step == 0


def _mlp_per_layer(t: Mapping[str, Any], hidden: int, i: int) -> int:
    dense = _int(t, "intermediate_size_mlp", "intermediate_size", "ffn_dim") or 4 * hidden
    if not _is_moe_layer(t, i):
        return 3 * hidden * dense
    experts = _experts(t)
    per_expert = _int(t, "moe_intermediate_size", "intermediate_size") or dense
    routed = experts * 3 * hidden * per_expert
    if t.get("model_type") == "gpt_oss":
        routed += experts * (2 * per_expert + hidden)  # expert biases
    shared = 0
    if _int(t, "n_shared_experts"):
        shared = (_int(t, "n_shared_experts") or 0) * 3 * hidden * per_expert
    elif _int(t, "shared_expert_intermediate_size"):
        shared = 3 * hidden * (_int(t, "shared_expert_intermediate_size") or 0) + hidden
    elif str(t.get("model_type", "")).startswith("llama4"):
        shared = 3 * hidden * (_int(t, "intermediate_size") or per_expert)
    return routed + shared + hidden * experts


def _vision_parameters(config: Mapping[str, Any], text_hidden: int) -> int:
    v = config.get("vision_config")
    if not isinstance(v, Mapping):
        return 0
    layers = _int(v, "num_hidden_layers", "depth")
    hidden = _int(v, "hidden_size", "embed_dim", "width")
    if not layers or not hidden:
        return 0
    inter = _int(v, "intermediate_size", default=4 * hidden) or 4 * hidden
    mats = 3 if str(v.get("hidden_act", "")).lower() in GATED_ACTIVATIONS else 2
    per_layer = 4 * hidden * hidden + mats * hidden * inter + 4 * hidden
    patch = _int(v, "patch_size", default=14) or 14
    channels = _int(v, "num_channels", "in_channels", "in_chans", default=3) or 3
    temporal = _int(v, "temporal_patch_size", default=1) or 1
    embed = channels * temporal * patch * patch * hidden
    image = _int(v, "image_size")
    if image:
        embed += (image // patch) ** 2 * hidden  # learned position embeddings
    merge = _int(v, "spatial_merge_size")
    if merge:  # Qwen-VL merger: (h m^2) -> (h m^2) -> text hidden
        wide = hidden * merge * merge
        out = _int(v, "out_hidden_size", default=text_hidden) or text_hidden
        projector = wide * wide + wide * out
    else:
        proj_in = _int(v, "projector_input_dim")
        proj_out = _int(v, "projector_output_dim", "vision_output_dim")
        adapter = 0
        if proj_in and proj_out:  # Llama 4: pixel-shuffle MLP before the projector
            ratio = v.get("pixel_shuffle_ratio") or 0.5
            adapter = int(hidden / (ratio * ratio)) * proj_in + proj_in * proj_out
        projector = adapter + (proj_out or hidden) * text_hidden
    return layers * per_layer + embed + projector


def is_encoder(t: Mapping[str, Any]) -> bool:
    """A BERT-style encoder: bidirectional attention, no KV cache."""
    return str(t.get("model_type") or "") in ENCODER_MODEL_TYPES and not t.get("is_decoder")


def _labels(config: Mapping[str, Any]) -> int:
    labels = config.get("id2label")
    count = _int(config, "num_labels")
    if count is None:
        count = len(labels) if isinstance(labels, Mapping) and labels else 2
    return count


def _encoder_counts(config: Mapping[str, Any], t: Mapping[str, Any]) -> _Counts:
    hidden = _need(t, "hidden_size")
    layers = _need(t, "num_hidden_layers")
    vocab = _need(t, "vocab_size")
    inter = _int(t, "intermediate_size") or 4 * hidden
    positions = _int(t, "max_position_embeddings", default=512) or 512
    types = _int(t, "type_vocab_size", default=2) or 0
    embeddings = (vocab + positions + types) * hidden
    attention = layers * 4 * (hidden * hidden + hidden)
    mlp = layers * (2 * hidden * inter + inter + hidden)
    norms = (2 * layers + 1) * 2 * hidden  # LayerNorm: weight and bias
    architectures = [str(a) for a in config.get("architectures") or []]
    head = 0
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        # A dense layer (BERT's pooler, RoBERTa's head) and the projection to the labels.
        head = hidden * hidden + hidden + (hidden + 1) * _labels(config)
    elif str(t.get("model_type")) == "bert":
        head = hidden * hidden + hidden  # BertModel's pooler
    return _Counts(embeddings, attention, mlp + head, norms, 0)


def checkpoint_task(config: Mapping[str, Any], files: frozenset[str] = frozenset()) -> str | None:
    """embed, rerank, generate or None (the files do not tell) for a checkpoint's
    config.json and the names of the files beside it (the module docstring says how)."""
    architectures = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        # One score per (query, document) pair: a cross-encoder. More labels: a
        # classifier, which no task here serves.
        return "rerank" if _labels(config) == 1 else None
    if files & SENTENCE_TRANSFORMERS_FILES:
        return "embed"
    for arch in architectures:
        if arch.endswith(_GENERATIVE_SUFFIXES):
            return "generate"
        if arch.endswith(_EMBEDDING_SUFFIXES) or arch.endswith("Model"):
            return "embed"
    return None


def _count(config: Mapping[str, Any], t: Mapping[str, Any]) -> _Counts:
    if is_encoder(t):
        return _encoder_counts(config, t)
    hidden = _need(t, "hidden_size", "d_model", "n_embd")
    layers = _need(t, "num_hidden_layers", "n_layer", "num_layers")
    heads = _need(t, "num_attention_heads", "n_head")
    vocab = _need(t, "vocab_size")
    tied = bool(t.get("tie_word_embeddings", DEFAULT_TIE_WORD_EMBEDDINGS))
    embeddings = vocab * hidden * (1 if tied else 2)
    attention = layers * _attention_per_layer(t, hidden, heads)
    mlp = sum(_mlp_per_layer(t, hidden, i) for i in range(layers))
    norms = (2 * layers + 1) * hidden
    return _Counts(embeddings, attention, mlp, norms, _vision_parameters(config, hidden))


# ---------------------------------------------------------------------------
# KV cache layout
# ---------------------------------------------------------------------------


def windowed_layers(t: Mapping[str, Any], layers: int) -> tuple[int, int | None]:
    """(layers that keep at most a window of tokens, that window)."""
    model_type = str(t.get("model_type", ""))
    window = _int(t, "sliding_window")
    types = t.get("layer_types")
    if isinstance(types, list) and types:
        local = sum(1 for kind in types if kind in ("sliding_attention", "chunked_attention"))
        return (local, window) if local and window else (0, None)
    if model_type.startswith("llama4") and _int(t, "attention_chunk_size"):
        interval = _int(t, "no_rope_layer_interval", default=4) or 4
        rope = t.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(layers)]
        return sum(1 for r in rope if r), _int(t, "attention_chunk_size")
    if not window:
        return 0, None
    if model_type == "gemma2":  # even layers slide
        return (layers + 1) // 2, window
    if model_type == "gemma3_text":
        pattern = _int(t, "sliding_window_pattern", default=6) or 6
        return sum(1 for i in range(layers) if (i + 1) % pattern != 0), window
    if model_type.startswith("qwen") or t.get("use_sliding_window") is False:
        # Qwen configs carry a sliding_window that is off unless use_sliding_window.
        return 0, None
    return layers, window  # Mistral v0.1 style: every layer windowed


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------


def header_totals(headers: Sequence[Mapping[str, Any]]) -> tuple[int, int, frozenset[str]]:
    """(elements, bytes, dtypes) over safetensors headers (the JSON before the data)."""
    elements = 0
    size = 0
    dtypes: set[str] = set()
    for header in headers:
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, Mapping):
                continue
            count = math.prod(int(d) for d in tensor.get("shape") or [])
            dtype = str(tensor.get("dtype"))
            dtypes.add(dtype)
            elements += count
            offsets = tensor.get("data_offsets")
            if isinstance(offsets, list) and len(offsets) == 2:
                size += int(offsets[1]) - int(offsets[0])
            else:
                size += count * _SAFETENSORS_DTYPE_BYTES.get(dtype, 2)
    return elements, size, frozenset(dtypes)


def index_total_size(index: Mapping[str, Any] | None) -> int | None:
    """metadata.total_size of model.safetensors.index.json (bytes of all tensors)."""
    if not index:
        return None
    value = (index.get("metadata") or {}).get("total_size")
    return int(value) if isinstance(value, int | float) and value > 0 else None


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


def _counted_bytes(counts: _Counts, q: CheckpointQuantization | None, dtype_bytes: int) -> float:
    if q is None:
        return counts.total * dtype_bytes
    quantized = counts.mlp + (0 if q.keeps_attention_16bit() else counts.attention)
    return quantized * q.bytes_per_param + (counts.total - quantized) * 2


def read_checkpoint(
    config: Mapping[str, Any],
    name: str,
    index: Mapping[str, Any] | None = None,
    headers: Sequence[Mapping[str, Any]] = (),
    files: frozenset[str] = frozenset(),
) -> Checkpoint:
    """The architecture, weight size and task of a checkpoint from its config.json (and,
    when given, its safetensors index and headers, and the names of the files in its
    repo or directory). Raises CheckpointError."""
    t = text_config(config)
    task = checkpoint_task(config, files)
    encoder = is_encoder(t)
    counts = _count(config, t)
    tied = bool(t.get("tie_word_embeddings", DEFAULT_TIE_WORD_EMBEDDINGS))
    if task in ("embed", "rerank") and not tied and not encoder:
        # A pooling model's engine loads no lm_head (the embedding repos of decoder
        # models ship none): one embedding matrix, not two.
        counts = replace(counts, embeddings=counts.embeddings // 2)
        tied = True
    quant = parse_quantization(config.get("quantization_config") or t.get("quantization_config"))
    dtype = str(t.get("torch_dtype") or config.get("torch_dtype") or t.get("dtype") or "bfloat16")
    dtype_bytes = _DTYPE_BYTES.get(dtype, 2)
    notes: list[str] = []
    parameters, parameters_source = counts.total, "config.json"
    weight_bytes: float = _counted_bytes(counts, quant, dtype_bytes)
    weight_source = "counted from config.json"
    # What the engine holds on the GPU: a float32 checkpoint is loaded at 16 bits (the
    # engines' `auto` dtype takes float16 for float32 weights).
    loaded_bytes: float | None = None
    if quant is None and dtype_bytes == 4:
        loaded_bytes = _counted_bytes(counts, None, 2)
        notes.append("float32 weights, loaded at 16 bits (the engines' default dtype)")
    if headers:
        elements, size, _ = header_totals(headers)
        weight_bytes, weight_source = float(size), "safetensors headers"
        if quant is None:
            parameters, parameters_source = elements, "safetensors headers"
            if loaded_bytes is not None:
                loaded_bytes = elements * 2.0
    total = index_total_size(index)
    if total is not None:
        weight_bytes, weight_source = float(total), "safetensors index total_size"
        if loaded_bytes is not None:
            loaded_bytes = total / 2
    if _int(t, "num_nextn_predict_layers"):
        notes.append(
            "multi-token-prediction layers are in the files but not counted as parameters "
            "(engines load them only for speculative decoding)"
        )

    hidden = _need(t, "hidden_size", "d_model", "n_embd")
    layers = _need(t, "num_hidden_layers", "n_layer", "num_layers")
    heads = _need(t, "num_attention_heads", "n_head")
    experts = _experts(t)
    mla = t.get("kv_lora_rank")
    local, window = windowed_layers(t, layers)
    if mla:
        head_dim = (_int(t, "qk_nope_head_dim") or 0) + (_int(t, "qk_rope_head_dim") or 0)
    else:
        head_dim = _int(t, "head_dim") or hidden // heads
    per_expert = _int(t, "moe_intermediate_size") if experts > 1 else None
    arch = Architecture(
        name=normalised_name(name),
        parameters_billions=parameters / 1e9,
        layers=layers,
        attention_heads=heads,
        kv_heads=_int(t, "num_key_value_heads", default=heads),
        head_dim=head_dim,
        intermediate_size=per_expert or _int(t, "intermediate_size", "ffn_dim"),
        max_context_length=_int(t, "max_position_embeddings", "max_sequence_length", "n_positions"),
        hidden_size=hidden,
        vocab_size=_int(t, "vocab_size"),
        tied_embeddings=tied,
        experts=experts,
        experts_per_token=_int(t, "num_experts_per_tok", "experts_per_token", default=1) or 1,
        mla_kv_dim=(int(mla) + (_int(t, "qk_rope_head_dim") or 0)) if mla else None,
        sliding_window=window,
        sliding_layers=local,
        checkpoint_format=(quant.spec_value if quant.spec_value != "none" else quant.method)
        if quant
        else "none",
        checkpoint_weight_bytes=weight_bytes if loaded_bytes is None else loaded_bytes,
        encoder_only=encoder,
    )
    return Checkpoint(
        architecture=arch,
        quantization=quant,
        parameters=parameters,
        parameters_source=parameters_source,
        vision_parameters=counts.vision,
        weight_bytes=weight_bytes,
        weight_bytes_source=weight_source,
        torch_dtype=dtype,
        notes=tuple(notes),
        task=task,
    )


def quantization_conflict(stated: str, checkpoint: Checkpoint) -> str | None:
    """What to say when spec.quantization cannot load this checkpoint, else None.

    `none` lets the engine read the checkpoint's own format. fp8 and bitsandbytes on an
    unquantized checkpoint quantize at load time. Anything else that differs from the
    checkpoint's quantization_config stops the engine at start (e.g. "Quantization method
    specified in the model config ... does not match").
    """
    q = checkpoint.quantization
    if stated == "none":
        return None
    if q is None:
        if stated in ("fp8", "bitsandbytes", "gguf"):
            return None
        return (
            f"is {stated} but the checkpoint has no quantization_config (its weights are "
            f"{checkpoint.torch_dtype}); write quantization: none, or fp8 to quantize at load time"
        )
    if stated == q.spec_value:
        return None
    return (
        f"is {stated} but the checkpoint's config.json says quant_method {q.method} "
        f"({q.bits}-bit); write quantization: {q.spec_value}"
        + ("" if q.spec_value == "none" else " (or none: the engine reads it from the checkpoint)")
    )
