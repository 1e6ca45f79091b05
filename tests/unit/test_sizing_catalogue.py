"""Model catalogue: repo-id recognition, quantization hints, and the numbers themselves."""

from __future__ import annotations

import pytest

from openmodel.api import ModelInfo
from openmodel.sizing import catalogue as c
from openmodel.sizing.catalogue import Architecture, recognise, resolve_model
from openmodel.sizing.formats import implied_quantization, weight_format

ALL_ARCHITECTURES = [v for v in vars(c).values() if isinstance(v, Architecture)]
# Entries whose count the simple formula below cannot recompute (MLA, shared experts,
# vision towers): test_sizing_checkpoint.py checks them against their config.json.
FROM_CONFIG_JSON = {c.DEEPSEEK_V3.name, c.DEEPSEEK_R1.name, c.LLAMA4_SCOUT.name, c.GEMMA3_27B.name}


def dense_parameter_count(a: Architecture) -> int:
    """Parameters recomputed from the dimensions (ignoring norms and biases, <0.1 %).

    Per layer: q and o projections hidden x heads*head_dim each, k and v projections
    hidden x kv_heads*head_dim each, gated MLP 3 x hidden x intermediate per expert
    (+ a hidden x experts router); plus input embedding and (untied) lm_head.
    """
    assert a.hidden_size and a.head_dim and a.attention_heads and a.kv_heads
    assert a.layers and a.intermediate_size
    h, hd = a.hidden_size, a.head_dim
    attention = 2 * h * a.attention_heads * hd + 2 * h * a.kv_heads * hd
    mlp = 3 * h * a.intermediate_size * a.experts + (h * a.experts if a.experts > 1 else 0)
    assert a.embedding_parameters is not None
    return a.layers * (attention + mlp) + a.embedding_parameters


@pytest.mark.parametrize(
    "arch", [a for a in ALL_ARCHITECTURES if a.name not in FROM_CONFIG_JSON], ids=lambda a: a.name
)
def test_parameter_count_matches_dimensions(arch: Architecture) -> None:
    # The stated parameter counts are Hugging Face's; the dimensions are config.json's.
    # They agree to within 0.35 % for every entry, so a mistyped dimension shows up here.
    assert dense_parameter_count(arch) == pytest.approx(arch.parameters_billions * 1e9, rel=0.01)


@pytest.mark.parametrize(
    ("model", "expected", "quantization"),
    [
        # The quantized checkpoints docs/engines.md lists.
        ("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", c.LLAMA_31_70B, "awq"),
        ("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", c.QWEN25_7B, "gptq"),
        ("TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ", c.MIXTRAL_8X7B, "awq"),
        ("solidrust/Mistral-7B-Instruct-v0.3-AWQ", c.MISTRAL_7B, "awq"),
        ("neuralmagic/Meta-Llama-3.1-405B-Instruct-FP8", c.LLAMA_31_405B, "fp8"),
        # Plain repos.
        ("meta-llama/Llama-3.1-8B-Instruct", c.LLAMA_31_8B, None),
        ("meta-llama/Meta-Llama-3.1-405B-Instruct", c.LLAMA_31_405B, None),
        ("meta-llama/Llama-3.3-70B-Instruct", c.LLAMA_33_70B, None),
        ("meta-llama/Meta-Llama-3-8B-Instruct", c.LLAMA_3_8B, None),
        ("meta-llama/Llama-3.2-1B-Instruct", c.LLAMA_32_1B, None),
        ("meta-llama/Llama-3.2-3B-Instruct", c.LLAMA_32_3B, None),
        ("mistralai/Mistral-7B-Instruct-v0.3", c.MISTRAL_7B, None),
        ("mistralai/Mixtral-8x22B-Instruct-v0.1", c.MIXTRAL_8X22B, None),
        ("Qwen/Qwen2.5-14B-Instruct", c.QWEN25_14B, None),
        ("Qwen/Qwen2.5-32B-Instruct", c.QWEN25_32B, None),
        ("Qwen/Qwen2.5-72B-Instruct", c.QWEN25_72B, None),
        ("google/gemma-2-9b-it", c.GEMMA2_9B, None),
        ("google/gemma-2-27b-it", c.GEMMA2_27B, None),
        ("microsoft/Phi-3-mini-4k-instruct", c.PHI3_MINI_4K, None),
        ("microsoft/Phi-3-mini-128k-instruct", c.PHI3_MINI_128K, None),
        ("microsoft/Phi-3.5-mini-instruct", c.PHI3_MINI_128K, None),
        # DeepSeek-R1 distills map to their base architecture.
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", c.R1_DISTILL_LLAMA_8B, None),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", c.R1_DISTILL_LLAMA_70B, None),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", c.R1_DISTILL_QWEN_1_5B, None),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", c.R1_DISTILL_QWEN_7B, None),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", c.R1_DISTILL_QWEN_14B, None),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", c.R1_DISTILL_QWEN_32B, None),
        # Other quantized layouts and URIs.
        (
            "neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w4a16",
            c.LLAMA_31_8B,
            "compressed-tensors",
        ),
        ("RedHatAI/Qwen2.5-7B-Instruct-quantized.w8a8", c.QWEN25_7B, "compressed-tensors"),
        ("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", c.LLAMA_31_8B, "bitsandbytes"),
        ("bartowski/Meta-Llama-3.1-8B-Instruct-GGUF", c.LLAMA_31_8B, "gguf"),
        ("pvc://models/llama/Meta-Llama-3.1-8B-Instruct-Q8_0.gguf", c.LLAMA_31_8B, "gguf"),
        ("s3://weights/meta-llama/Llama-3.1-70B-Instruct/", c.LLAMA_31_70B, None),
        ("ollama-style/llama3.1:8b", c.LLAMA_31_8B, None),
    ],
)
def test_recognises_repo_ids(model: str, expected: Architecture, quantization: str | None) -> None:
    assert recognise(model) == expected
    assert recognise(model.upper()) == expected
    assert recognise(model.lower()) == expected
    assert implied_quantization(model) == quantization


@pytest.mark.parametrize(
    "model",
    [
        "acme/my-private-model",
        "mistralai/Mistral-Small-24B-Instruct-2501",  # Mistral family, size not catalogued
        "Qwen/Qwen2.5-VL-7B-Instruct",  # multimodal: a different network
        "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "codellama/CodeLlama-7b-hf",  # Llama 2 era, not Llama 3
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        "google/gemma-2b",  # Gemma 1
        "google/paligemma2-3b-pt-224",
        "meta-llama/Llama-3.1-Minitron-4B",  # Llama 3.1 naming, not a catalogued size
    ],
)
def test_unknown_models_are_not_guessed(model: str) -> None:
    assert recognise(model) is None


def test_official_qwen_72b_quantized_checkpoints_are_padded() -> None:
    # Qwen zero-pads 29568 -> 29696 in its own AWQ/GPTQ 72B repos (tensor parallel).
    official = recognise("Qwen/Qwen2.5-72B-Instruct-AWQ")
    assert official is not None and official.intermediate_size == 29696
    third_party = recognise("someone/Qwen2.5-72B-Instruct-AWQ")
    assert third_party is not None and third_party.intermediate_size == 29568
    unquantized = recognise("Qwen/Qwen2.5-72B-Instruct")
    assert unquantized is not None and unquantized.intermediate_size == 29568


def test_quantization_bits_from_the_name() -> None:
    assert weight_format("none", "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8").bits == 8
    assert weight_format("none", "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4").bits == 4
    # spec.quantization wins over the name, and the name still tells the bits.
    fmt = weight_format("compressed-tensors", "neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8")
    assert (fmt.quantization, fmt.bits, fmt.body_bytes_per_param) == ("compressed-tensors", 8, 1.0)
    # No hint: bf16 from the default.
    assert weight_format("none", "meta-llama/Llama-3.1-8B-Instruct").source == "default"


def test_model_info_replaces_the_catalogue() -> None:
    info = ModelInfo(parameters_billions=70.0, layers=80)
    resolved = resolve_model("meta-llama/Llama-3.1-8B-Instruct", info)
    assert resolved is not None and resolved.source == "modelInfo"
    assert resolved.architecture.parameters_billions == 70.0
    # Not merged with the 8B entry: what the user did not state stays unknown.
    assert resolved.architecture.kv_heads is None
    assert resolve_model("acme/unknown", None) is None
    known = resolve_model("meta-llama/Llama-3.1-8B-Instruct", None)
    assert known is not None and known.source == "catalogue"
