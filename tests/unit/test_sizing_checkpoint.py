"""Sizing from real config.json files (tests/unit/data/hf-configs, provenance in SOURCES.md):
parameter counts against the published ones, KV bytes per token against each
architecture's formula, quantization_config, and verdicts that must hold."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from openmodel.accelerators import AcceleratorCatalog
from openmodel.api import SpecError
from openmodel.engines import ENGINES, parse_model_deployment
from openmodel.model_resolver.local import read_local
from openmodel.sizing import catalogue as c
from openmodel.sizing.checkpoint import (
    SENTENCE_TRANSFORMERS_FILES,
    Checkpoint,
    parse_quantization,
    quantization_conflict,
    read_checkpoint,
)
from openmodel.sizing.fit import resolve_gpu_count
from openmodel.sizing.memory import GIB, kv_bytes_per_token, kv_window_bytes

DATA = Path(__file__).parent / "data" / "hf-configs"
CATALOG = AcceleratorCatalog()

# Published total parameters (model cards / the Hub), billions.
PUBLISHED = {
    "deepseek-ai/DeepSeek-V3": 671.0,
    "deepseek-ai/DeepSeek-R1": 671.0,
    "deepseek-ai/DeepSeek-V2.5": 236.0,
    "meta-llama/Llama-3.1-70B-Instruct": 70.6,
    "meta-llama/Llama-3.1-405B-Instruct": 405.9,
    "Qwen/Qwen3-8B": 8.2,
    "Qwen/Qwen2.5-VL-3B-Instruct": 3.75,
    "Qwen/Qwen2.5-72B-Instruct-AWQ": 72.7,
    "Qwen/Qwen3-235B-A22B": 235.0,
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": 109.0,
    "openai/gpt-oss-120b": 116.8,
    "google/gemma-3-27b-it": 27.4,
    "mistralai/Mistral-Large-Instruct-2411": 123.0,
    # Pooling models (test_pooling_models.py): encoders, and a decoder without lm_head.
    "BAAI/bge-large-en-v1.5": 0.335,
    "BAAI/bge-reranker-v2-m3": 0.568,
    "Qwen/Qwen3-Embedding-8B": 7.57,
}
# The repos that ship the sentence-transformers files (modules.json and
# config_sentence_transformers.json) beside config.json: embedding models.
SENTENCE_TRANSFORMERS_REPOS = frozenset({"BAAI/bge-large-en-v1.5", "Qwen/Qwen3-Embedding-8B"})


def config(repo: str) -> dict[str, Any]:
    return json.loads((DATA / (repo.replace("/", "--") + ".json")).read_text())  # type: ignore[no-any-return]


def checkpoint(repo: str) -> Checkpoint:
    files = SENTENCE_TRANSFORMERS_FILES if repo in SENTENCE_TRANSFORMERS_REPOS else frozenset()
    return read_checkpoint(config(repo), repo, files=files)


def test_every_stored_config_has_a_published_count() -> None:
    stored = {p.stem.replace("--", "/") for p in DATA.glob("*.json")}
    assert stored == set(PUBLISHED)
    assert len(stored) >= 10


@pytest.mark.parametrize("repo", sorted(PUBLISHED))
def test_parameter_count_within_2_percent_of_published(repo: str) -> None:
    counted = checkpoint(repo).parameters / 1e9
    assert counted == pytest.approx(PUBLISHED[repo], rel=0.02), counted


# KV bytes per token (bf16 cache, one GPU) from each architecture's own formula.
KV_FORMULA = {
    # GQA: 2 (K, V) x layers x kv_heads x head_dim x 2 bytes
    "meta-llama/Llama-3.1-70B-Instruct": 2 * 80 * 8 * 128 * 2,
    "meta-llama/Llama-3.1-405B-Instruct": 2 * 126 * 8 * 128 * 2,
    "mistralai/Mistral-Large-Instruct-2411": 2 * 88 * 8 * 128 * 2,
    "Qwen/Qwen3-8B": 2 * 36 * 8 * 128 * 2,
    "Qwen/Qwen2.5-72B-Instruct-AWQ": 2 * 80 * 8 * 128 * 2,  # sliding_window off
    "Qwen/Qwen3-235B-A22B": 2 * 94 * 4 * 128 * 2,  # MoE: attention is dense
    # MLA: (kv_lora_rank 512 + qk_rope_head_dim 64) x layers x 2 bytes, not heads x head_dim
    "deepseek-ai/DeepSeek-V3": (512 + 64) * 61 * 2,
    "deepseek-ai/DeepSeek-V2.5": (512 + 64) * 60 * 2,
    # sliding-window layers excluded here (capped at the window): global layers only
    "google/gemma-3-27b-it": 2 * 10 * 16 * 128 * 2,  # 62 layers, every 6th global
    "openai/gpt-oss-120b": 2 * 18 * 8 * 64 * 2,  # 36 layers, alternating
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": 2 * 12 * 8 * 128 * 2,  # every 4th global
}


@pytest.mark.parametrize("repo", sorted(KV_FORMULA))
def test_kv_bytes_per_token_equal_the_formula(repo: str) -> None:
    assert kv_bytes_per_token(checkpoint(repo).architecture, 1, 2) == KV_FORMULA[repo]


@pytest.mark.parametrize(
    ("repo", "windowed", "window", "per_layer_token"),
    [
        ("google/gemma-3-27b-it", 52, 1024, 2 * 16 * 128 * 2),
        ("openai/gpt-oss-120b", 18, 128, 2 * 8 * 64 * 2),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", 36, 8192, 2 * 8 * 128 * 2),
    ],
)
def test_sliding_window_layers_hold_at_most_their_window(
    repo: str, windowed: int, window: int, per_layer_token: int
) -> None:
    arch = checkpoint(repo).architecture
    assert (arch.sliding_layers, arch.sliding_window) == (windowed, window)
    assert kv_window_bytes(arch, 1, 2, 100) == windowed * per_layer_token * 100
    assert kv_window_bytes(arch, 1, 2, 10 * window) == windowed * per_layer_token * window


def test_mla_kv_is_not_split_over_tensor_parallel_ranks() -> None:
    arch = checkpoint("deepseek-ai/DeepSeek-V3").architecture
    assert kv_bytes_per_token(arch, 8, 2) == kv_bytes_per_token(arch, 1, 2)
    gqa = checkpoint("meta-llama/Llama-3.1-70B-Instruct").architecture
    assert kv_bytes_per_token(gqa, 8, 2) == KV_FORMULA["meta-llama/Llama-3.1-70B-Instruct"] // 8


def test_moe_counts_every_expert_and_vision_towers_count() -> None:
    qwen = checkpoint("Qwen/Qwen3-235B-A22B")
    assert qwen.architecture.experts == 128 and qwen.architecture.experts_per_token == 8
    assert qwen.parameters > 200e9  # total, not the 22B active
    assert checkpoint("google/gemma-3-27b-it").vision_parameters == pytest.approx(0.42e9, rel=0.05)
    assert checkpoint("Qwen/Qwen2.5-VL-3B-Instruct").vision_parameters == pytest.approx(
        0.67e9, rel=0.05
    )


def test_quantization_config_formats() -> None:
    awq = checkpoint("Qwen/Qwen2.5-72B-Instruct-AWQ")
    assert awq.quantization is not None
    assert (awq.quantization.spec_value, awq.quantization.bits) == ("awq", 4)
    assert awq.weight_bytes / 1e9 == pytest.approx(41.6, abs=0.5)  # published files ~41.6 GB
    oss = checkpoint("openai/gpt-oss-120b")
    assert oss.quantization is not None and oss.quantization.method == "mxfp4"
    assert oss.quantization.keeps_attention_16bit()
    assert oss.weight_bytes / GIB == pytest.approx(60.8, abs=0.5)  # the published 60.8 GiB
    fp8 = checkpoint("deepseek-ai/DeepSeek-V3").quantization
    assert fp8 is not None and (fp8.spec_value, fp8.bits) == ("fp8", 8)
    assert checkpoint("meta-llama/Llama-3.1-70B-Instruct").quantization is None
    gptq = parse_quantization({"quant_method": "gptq", "bits": 8, "group_size": 128})
    assert gptq is not None and gptq.bytes_per_param == pytest.approx(1 + 3 / 128)
    bnb = parse_quantization({"quant_method": "bitsandbytes", "load_in_4bit": True})
    assert bnb is not None and bnb.spec_value == "bitsandbytes" and bnb.bits == 4
    ct = parse_quantization(
        {
            "quant_method": "compressed-tensors",
            "config_groups": {
                "group_0": {"weights": {"num_bits": 4, "strategy": "group", "group_size": 128}}
            },
        }
    )
    assert ct is not None and ct.spec_value == "compressed-tensors" and ct.group_size == 128


def test_quantization_mismatch_says_which_and_what_to_write() -> None:
    awq = checkpoint("Qwen/Qwen2.5-72B-Instruct-AWQ")
    assert quantization_conflict("awq", awq) is None
    assert quantization_conflict("none", awq) is None
    message = quantization_conflict("gptq", awq)
    assert message is not None and "quant_method awq" in message
    assert "write quantization: awq" in message
    bf16 = checkpoint("meta-llama/Llama-3.1-70B-Instruct")
    assert quantization_conflict("fp8", bf16) is None  # quantized at load time
    message = quantization_conflict("awq", bf16)
    assert message is not None and "no quantization_config" in message
    message = quantization_conflict("awq", checkpoint("openai/gpt-oss-120b"))
    assert message is not None and "write quantization: none" in message


def spec(
    model: str, gpu: str, count: int | None, quantization: str = "none", nodes: int | None = None
) -> Any:
    body = {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"model": model, "quantization": quantization, "gpu": {"type": gpu}},
    }
    if count is not None:
        body["spec"]["gpu"]["count"] = count
    if nodes is not None:
        body["spec"]["gpu"]["nodes"] = nodes
    return parse_model_deployment(body).spec


def verdict(repo: str, gpu: str, count: int, quantization: str, ck: Checkpoint | None) -> bool:
    """Whether `count` GPUs of one node hold the model (gpu.nodes 1: no spanning)."""
    s = spec(repo, gpu, count, quantization, nodes=1)
    try:
        resolve_gpu_count(s, CATALOG.get(gpu), CATALOG, ck, memory=ENGINES[s.engine].memory)  # type: ignore[arg-type]
    except SpecError as e:
        assert e.reason == "InsufficientGPUMemory", e.message
        return False
    return True


@pytest.mark.parametrize("from_config", [True, False], ids=["config.json", "catalogue"])
def test_verdicts_that_must_hold(from_config: bool) -> None:
    llama = checkpoint("meta-llama/Llama-3.1-70B-Instruct") if from_config else None
    assert verdict("meta-llama/Llama-3.1-70B-Instruct", "nvidia-a100-80gb", 4, "none", llama)
    assert not verdict("meta-llama/Llama-3.1-70B-Instruct", "nvidia-a100-80gb", 1, "none", llama)
    ds = checkpoint("deepseek-ai/DeepSeek-V3") if from_config else None
    assert not verdict("deepseek-ai/DeepSeek-V3", "nvidia-h100-80gb", 8, "fp8", ds)
    assert verdict("deepseek-ai/DeepSeek-V3", "nvidia-h200", 8, "fp8", ds)
    assert not verdict("deepseek-ai/DeepSeek-V3", "nvidia-h100-80gb", 8, "none", ds)
    oss = checkpoint("openai/gpt-oss-120b") if from_config else None
    assert verdict("openai/gpt-oss-120b", "nvidia-h100-80gb", 1, "none", oss)  # mxfp4 as shipped


LAYOUTS = [
    # repo, quantization, GPU -> nodes x GPUs per node, from config.json and the catalogue
    ("meta-llama/Llama-3.1-405B-Instruct", "none", "nvidia-h100-80gb", (2, 8)),
    ("meta-llama/Llama-3.1-405B-Instruct", "none", "nvidia-a100-80gb", (2, 8)),
    ("meta-llama/Llama-3.1-405B-Instruct", "none", "nvidia-h200", (1, 8)),
    ("meta-llama/Llama-3.1-405B-Instruct", "fp8", "nvidia-h100-80gb", (1, 8)),
    ("deepseek-ai/DeepSeek-V3", "fp8", "nvidia-h100-80gb", (2, 8)),
    ("deepseek-ai/DeepSeek-R1", "none", "nvidia-a100-80gb", (2, 8)),
    ("deepseek-ai/DeepSeek-V3", "fp8", "nvidia-h200", (1, 8)),
    ("Qwen/Qwen3-235B-A22B", "none", "nvidia-h100-80gb", (1, 8)),
    ("mistralai/Mistral-Large-Instruct-2411", "none", "nvidia-h100-80gb", (1, 4)),
]


@pytest.mark.parametrize("from_config", [True, False], ids=["config.json", "catalogue"])
@pytest.mark.parametrize(("repo", "quantization", "gpu", "layout"), LAYOUTS)
def test_the_smallest_layout_across_nodes(
    repo: str, quantization: str, gpu: str, layout: tuple[int, int], from_config: bool
) -> None:
    s = spec(repo, gpu, None, quantization)
    ck = checkpoint(repo) if from_config else None
    result = resolve_gpu_count(
        s, CATALOG.get(gpu), CATALOG, ck, memory=ENGINES["vllm"].memory, max_nodes=16
    )  # type: ignore[arg-type]
    assert (result.nodes, result.gpu_count) == layout
    assert result.estimate is not None and result.estimate.fits
    assert result.nodes_chosen == (layout[0] > 1)


def test_a_stated_count_that_no_node_holds_is_spread_over_the_fewest_nodes() -> None:
    ds = checkpoint("deepseek-ai/DeepSeek-V3")
    s = spec("deepseek-ai/DeepSeek-V3", "nvidia-h100-80gb", 8, "fp8")
    h100 = CATALOG.get("nvidia-h100-80gb")
    result = resolve_gpu_count(s, h100, CATALOG, ds, memory=ENGINES["vllm"].memory, max_nodes=16)  # type: ignore[arg-type]
    assert (result.nodes, result.gpu_count, result.auto_sized) == (2, 8, False)
    assert "on each of 2 nodes (chosen; 16 GPUs per replica)" in result.summary()
    # An engine with one pod per replica: refused as before, naming the count.
    with pytest.raises(SpecError) as err:
        resolve_gpu_count(s, h100, CATALOG, ds, memory=ENGINES["vllm"].memory, max_nodes=1)  # type: ignore[arg-type]
    assert (err.value.reason, err.value.field) == ("InsufficientGPUMemory", "spec.gpu.count")
    assert "needs about 81.6 GiB per GPU on 8 x nvidia-h100-80gb" in err.value.message


def test_gpu_nodes_1_refuses_with_the_layout_that_would_fit() -> None:
    s = spec("deepseek-ai/DeepSeek-V3", "nvidia-h100-80gb", None, "fp8", nodes=1)
    with pytest.raises(SpecError) as err:
        resolve_gpu_count(
            s, CATALOG.get("nvidia-h100-80gb"), CATALOG, memory=ENGINES["vllm"].memory,
            max_nodes=16,
        )  # type: ignore[arg-type]  # fmt: skip
    assert (err.value.reason, err.value.field) == ("InsufficientGPUMemory", "spec.gpu.nodes")
    assert "gpu.nodes 2 with gpu.count 8" in err.value.message


def test_stated_nodes_are_checked_not_changed() -> None:
    h100 = CATALOG.get("nvidia-h100-80gb")
    knobs = ENGINES["vllm"].memory
    ok = spec("meta-llama/Llama-3.1-405B-Instruct", "nvidia-h100-80gb", 8, nodes=3)
    result = resolve_gpu_count(ok, h100, CATALOG, memory=knobs, max_nodes=16)  # type: ignore[arg-type]
    assert (result.nodes, result.gpu_count, result.nodes_chosen) == (3, 8, False)
    # Count omitted with nodes stated: the smallest count that fits on that many nodes.
    auto = spec("meta-llama/Llama-3.1-405B-Instruct", "nvidia-h100-80gb", None, nodes=4)
    result = resolve_gpu_count(auto, h100, CATALOG, memory=knobs, max_nodes=16)  # type: ignore[arg-type]
    assert (result.nodes, result.gpu_count) == (4, 4)
    # Too few nodes for a stated count: refused naming gpu.nodes, with what fits.
    short = spec("meta-llama/Llama-3.1-405B-Instruct", "nvidia-h100-80gb", 4, nodes=2)
    with pytest.raises(SpecError) as err:
        resolve_gpu_count(short, h100, CATALOG, memory=knobs, max_nodes=16)  # type: ignore[arg-type]
    assert (err.value.reason, err.value.field) == ("InsufficientGPUMemory", "spec.gpu.nodes")
    assert "on 2 x 4 x nvidia-h100-80gb" in err.value.message
    assert "gpu.nodes 3 with gpu.count 4" in err.value.message


def test_a_count_above_a_node_is_refused_saying_what_count_and_nodes_mean() -> None:
    s = spec("meta-llama/Llama-3.1-405B-Instruct", "nvidia-h100-80gb", 16)
    with pytest.raises(SpecError) as err:
        resolve_gpu_count(
            s, CATALOG.get("nvidia-h100-80gb"), CATALOG, memory=ENGINES["vllm"].memory,
            max_nodes=16,
        )  # type: ignore[arg-type]  # fmt: skip
    assert (err.value.reason, err.value.field) == ("InvalidTensorParallelSize", "spec.gpu.count")
    assert "gpu.count is the GPUs of one pod, on one node" in err.value.message
    assert "gpu.nodes pods of gpu.count GPUs each" in err.value.message


def test_more_nodes_than_layers_is_refused() -> None:
    info = {"parametersBillions": 2000, "layers": 4, "attentionHeads": 64, "kvHeads": 8,
            "headDim": 128}  # fmt: skip
    body = {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"model": "acme/huge", "modelInfo": info,
                 "gpu": {"type": "nvidia-h100-80gb", "count": 8, "nodes": 5}},
    }  # fmt: skip
    s = parse_model_deployment(body).spec
    with pytest.raises(SpecError) as err:
        resolve_gpu_count(
            s, CATALOG.get("nvidia-h100-80gb"), CATALOG, memory=ENGINES["vllm"].memory,
            max_nodes=16,
        )  # type: ignore[arg-type]  # fmt: skip
    assert (err.value.reason, err.value.field) == ("InvalidPipelineParallelSize", "spec.gpu.nodes")
    assert "at least 5 layers; it has 4" in err.value.message


def test_pipeline_stages_split_weights_and_kv_cache() -> None:
    arch = checkpoint("meta-llama/Llama-3.1-405B-Instruct").architecture
    assert kv_bytes_per_token(arch, 8, 2, pipeline=2) == 63 * 2 * 1 * 128 * 2
    assert kv_bytes_per_token(arch, 8, 2, pipeline=4) == 32 * 2 * 1 * 128 * 2  # 126/4 -> 32


def test_an_uncatalogued_repo_is_sized_from_its_config() -> None:
    ck = checkpoint("Qwen/Qwen2.5-72B-Instruct-AWQ")
    s = spec("acme/house-model-72b", "nvidia-h100-80gb", None)
    with pytest.raises(SpecError) as err:
        resolve_gpu_count(
            s, CATALOG.get("nvidia-h100-80gb"), CATALOG, memory=ENGINES[s.engine].memory
        )  # type: ignore[arg-type]
    assert err.value.reason == "UnknownModelSize"
    result = resolve_gpu_count(
        s, CATALOG.get("nvidia-h100-80gb"), CATALOG, ck, memory=ENGINES[s.engine].memory
    )  # type: ignore[arg-type]
    assert result.gpu_count == 1 and result.model is not None
    assert result.model.source == "config.json"
    assert result.weight_format.quantization == "awq"


def test_catalogue_entries_agree_with_their_config_json() -> None:
    pairs = {
        "deepseek-ai/DeepSeek-V3": c.DEEPSEEK_V3,
        "meta-llama/Llama-3.1-405B-Instruct": c.LLAMA_31_405B,
        "Qwen/Qwen3-8B": c.QWEN3_8B,
        "Qwen/Qwen3-235B-A22B": c.QWEN3_235B_A22B,
        "meta-llama/Llama-4-Scout-17B-16E-Instruct": c.LLAMA4_SCOUT,
        "openai/gpt-oss-120b": c.GPT_OSS_120B,
        "google/gemma-3-27b-it": c.GEMMA3_27B,
        "mistralai/Mistral-Large-Instruct-2411": c.MISTRAL_LARGE_2411,
    }
    for repo, entry in pairs.items():
        assert c.recognise(repo) is entry, repo
        arch = checkpoint(repo).architecture
        assert kv_bytes_per_token(entry, 1, 2) == kv_bytes_per_token(arch, 1, 2), repo
        assert entry.parameters_billions == pytest.approx(arch.parameters_billions, rel=0.001)
        assert (entry.sliding_layers, entry.sliding_window) == (
            arch.sliding_layers,
            arch.sliding_window,
        )


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A real safetensors file: 8-byte header length, JSON header, zeroed data."""
    sizes = {"BF16": 2, "F32": 4, "I32": 4}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return offset


def test_safetensors_headers_give_the_exact_count_and_index_the_bytes(tmp_path: Path) -> None:
    cfg = {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
        "vocab_size": 100, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    tensors = {
        "model.embed_tokens.weight": ("BF16", [100, 64]),
        "model.layers.0.self_attn.q_proj.weight": ("BF16", [64, 64]),
        "model.layers.0.mlp.down_proj.weight": ("BF16", [64, 128]),
    }
    size = write_safetensors(tmp_path / "model.safetensors", tensors)
    files = read_local(str(tmp_path))
    ck = read_checkpoint(files.config, "tiny", files.index, files.headers)
    assert ck.parameters == 100 * 64 + 64 * 64 + 64 * 128
    assert ck.parameters_source == "safetensors headers"
    assert ck.weight_bytes == size
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 123456}, "weight_map": {}})
    )
    files = read_local(str(tmp_path / "config.json"))
    assert read_checkpoint(files.config, "tiny", files.index, files.headers).weight_bytes == 123456
