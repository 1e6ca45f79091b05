"""The fit check the operator calls: resolve_gpu_count, with the brief's scenarios.

Budget on an H100 80GB: 0.9 x 79.6 GiB = 71.64 GiB per GPU; on an L4 0.9 x 22.5 = 20.25.
"""

from __future__ import annotations

from typing import Any

import pytest

from openmodel.accelerators import AcceleratorCatalog
from openmodel.api import ModelDeploymentSpec, SpecError
from openmodel.engines import ENGINES, parse_spec
from openmodel.sizing import SizingResult, resolve_gpu_count

CATALOG = AcceleratorCatalog()


def spec(model: str, gpu_type: str, count: int | None = None, **extra: Any) -> ModelDeploymentSpec:
    gpu: dict[str, Any] = {"type": gpu_type}
    if count is not None:
        gpu["count"] = count
    return parse_spec({"model": model, "gpu": gpu, **extra})


def resolve(s: ModelDeploymentSpec) -> SizingResult:
    accelerator = CATALOG.get(s.gpu.type)
    assert accelerator is not None
    return resolve_gpu_count(s, accelerator, CATALOG, memory=ENGINES[s.engine].memory)


def refusal(s: ModelDeploymentSpec) -> SpecError:
    with pytest.raises(SpecError) as err:
        resolve(s)
    return err.value


# ---- Llama 3.1 405B on 8 x H100 ---------------------------------------------------


def test_405b_bf16_does_not_fit_8_h100() -> None:
    # Weights 405.9e9 x 2 B = 811.8e9 B = 756.0 GiB; / 8 = 94.5 GiB per GPU, more than
    # the whole card, let alone the 71.6 GiB budget.
    err = refusal(spec("meta-llama/Llama-3.1-405B-Instruct", "nvidia-h100-80gb", 8))
    assert err.reason == "InsufficientGPUMemory"
    assert err.field == "spec.gpu.count"
    assert "weights 94.5" in err.message and "71.6 GiB budget" in err.message
    # What would fit: fp8 on the same 8 GPUs, or bigger cards.
    assert "spec.quantization: fp8" in err.message
    assert "gpu.type nvidia-h200 with gpu.count 8" in err.message


def test_405b_bf16_auto_sizing_reports_nothing_fits() -> None:
    err = refusal(spec("meta-llama/Llama-3.1-405B-Instruct", "nvidia-h100-80gb"))
    assert err.reason == "InsufficientGPUMemory"
    assert err.field == "spec.gpu.type"
    assert "tried 1, 2, 4, 8" in err.message


def test_405b_fp8_fits_8_h100() -> None:
    # Embeddings + lm_head 2 x 128256 x 16384 = 4.20e9 params stay 16-bit (8.41e9 B);
    # the other 401.7e9 at 1 B -> 410.1e9 B = 381.9 GiB, / 8 = 47.7 GiB per GPU.
    # KV: 2 x 126 layers x 1 head (8 / 8) x 128 x 2 B = 64512 B/token; 8192 -> 0.49 GiB.
    # Overhead 1.5 + 0.5 (NCCL) + 8192 x (4 x 16384 + 2 x 53248 / 8) x 2 B (1.20 GiB)
    # + sampler 0.24 GiB = 3.45 GiB. Total 51.7 GiB <= 71.6.
    result = resolve(spec("neuralmagic/Meta-Llama-3.1-405B-Instruct-FP8", "nvidia-h100-80gb"))
    assert result.gpu_count == 8 and result.auto_sized
    est = result.estimate
    assert est is not None
    assert est.weights_gib == pytest.approx(47.7, abs=0.1)
    assert est.kv_cache_gib == pytest.approx(0.49, abs=0.01)
    assert est.overhead_gib == pytest.approx(3.45, abs=0.01)
    assert est.total_gib == pytest.approx(51.7, abs=0.1)
    assert est.budget_gib == pytest.approx(71.64)
    # Even the full 131072 context fits (+8.06 GiB of KV), so that is what the engine gets.
    assert result.max_model_len == 131072
    # Sized from the repo name; the note says so.
    assert result.weight_format.quantization == "fp8"
    assert any("repo name" in n for n in result.notes)


# ---- Llama 3.1 70B AWQ on 2 x H100 ------------------------------------------------


def test_70b_awq_fits_2_h100_with_32k_context() -> None:
    # Weights 39.79e9 B = 37.06 GiB (see test_sizing_memory), / 2 = 18.5 GiB per GPU.
    # KV: 2 x 80 x 4 heads (8 / 2) x 128 x 2 B = 160 KiB/token; 32768 -> 5.0 GiB.
    # Overhead 1.5 + 0.5 + 8192 x (4 x 8192 + 2 x 28672 / 2) x 2 B (0.94) + 0.24 = 3.18.
    # Total 26.7 GiB <= 71.6: plenty of room.
    result = resolve(
        spec(
            "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
            "nvidia-h100-80gb",
            2,
            quantization="awq",
            maxModelLen=32768,
        )
    )
    est = result.estimate
    assert est is not None and est.fits
    assert est.weights_gib == pytest.approx(18.5, abs=0.1)
    assert est.kv_cache_gib == pytest.approx(5.0, abs=0.01)
    assert est.total_gib == pytest.approx(26.7, abs=0.1)
    # (71.64 - 18.53 - 3.18) GiB / 160 KiB ~ 327k tokens, capped at the model's 131072.
    assert est.max_fitting_context == 131072
    assert result.max_model_len == 32768
    assert result.notes == ()


def test_70b_bf16_needs_2_h100() -> None:
    # 70.6e9 x 2 B = 131.5 GiB: not on one card; 65.7 GiB per GPU on two
    # + 1.25 GiB KV (8192 tokens) + 3.2 overhead = 70.2 <= 71.6 (tight, as in practice).
    result = resolve(spec("meta-llama/Llama-3.1-70B-Instruct", "nvidia-h100-80gb"))
    assert result.gpu_count == 2
    assert result.max_model_len == 8192  # the full 128k does not fit on two


# ---- Llama 3.1 8B on one L4 -------------------------------------------------------


def test_8b_bf16_fits_one_l4_only_with_a_short_context() -> None:
    # Weights 14.96 GiB + overhead 2.43 leave 20.25 - 17.39 = 2.86 GiB for KV at
    # 128 KiB/token: about 23k tokens. The full 131072 would need 16 GiB.
    full = refusal(spec("meta-llama/Llama-3.1-8B-Instruct", "nvidia-l4", 1, maxModelLen=131072))
    assert full.reason == "InsufficientGPUMemory"
    assert "KV cache 16.0 for 131072 tokens" in full.message
    # Suggestions: 2 GPUs, a shorter context (the longest that fits), fp8.
    assert "gpu.count 2" in full.message
    assert "spec.maxModelLen <= 23424" in full.message
    assert "spec.quantization: fp8" in full.message

    short = resolve(spec("meta-llama/Llama-3.1-8B-Instruct", "nvidia-l4", 1, maxModelLen=4096))
    assert short.estimate is not None and short.estimate.fits
    assert short.estimate.max_fitting_context == 23424


def test_8b_auto_sized_on_l4_gets_the_default_context() -> None:
    # No maxModelLen: min(131072, 8192) must fit; one L4 does (8192 x 128 KiB = 1 GiB).
    result = resolve(spec("meta-llama/Llama-3.1-8B-Instruct", "nvidia-l4"))
    assert result.gpu_count == 1
    assert result.max_model_len == 8192
    # On an H100 the full context fits, so the engine may use it.
    assert resolve(spec("meta-llama/Llama-3.1-8B-Instruct", "nvidia-h100-80gb")).max_model_len == (
        131072
    )


# ---- tensor-parallel refusals -----------------------------------------------------


def test_3_gpus_for_a_64_head_model_lists_working_counts() -> None:
    err = refusal(spec("meta-llama/Llama-3.1-70B-Instruct", "nvidia-h100-80gb", 3))
    assert err.reason == "InvalidTensorParallelSize"
    assert err.field == "spec.gpu.count"
    assert "64 attention heads are not divisible by 3" in err.message
    assert "Valid counts on nvidia-h100-80gb: 1, 2, 4, 8" in err.message
    assert "fit in memory: 2, 4, 8" in err.message


def test_more_gpus_than_a_node_has() -> None:
    err = refusal(spec("meta-llama/Llama-3.1-70B-Instruct", "nvidia-h100-80gb", 16))
    assert err.reason == "InvalidTensorParallelSize"
    assert "at most 8 GPUs" in err.message


def test_third_party_qwen_72b_awq_only_runs_on_one_gpu() -> None:
    err = refusal(spec("someone/Qwen2.5-72B-Instruct-AWQ", "nvidia-h100-80gb", 2))
    assert err.reason == "InvalidTensorParallelSize"
    assert "29568 / 2 = 14784 is not a multiple of the awq group size 128" in err.message
    # The official, padded checkpoint shards fine.
    assert resolve(spec("Qwen/Qwen2.5-72B-Instruct-AWQ", "nvidia-h100-80gb", 2)).gpu_count == 2


# ---- unknown models and spec.modelInfo --------------------------------------------


def test_unknown_model_without_count_asks_for_count_or_model_info() -> None:
    err = refusal(spec("acme/secret-model", "nvidia-h100-80gb"))
    assert err.reason == "UnknownModelSize"
    assert err.field == "spec.gpu.count"
    assert "spec.modelInfo" in err.message


def test_unknown_model_with_count_is_accepted_unchecked() -> None:
    result = resolve(spec("acme/secret-model", "nvidia-h100-80gb", 3))
    assert (result.gpu_count, result.estimate, result.model) == (3, None, None)
    assert result.to_status() is None
    assert "not checked" in result.summary()


def test_model_info_sizes_an_unknown_model() -> None:
    # 30e9 x 2 B = 55.9 GiB: not one L40S (40.5 GiB budget). On two: 27.9 GiB weights
    # + KV 2 x 60 x 4 heads x 128 x 2 B = 120 KiB/token x 8192 = 0.94 GiB
    # + overhead 1.5 + 0.5 + 1.0 (width unknown) = 3.0 -> 31.9 GiB.
    info = {
        "parametersBillions": 30,
        "layers": 60,
        "attentionHeads": 48,
        "kvHeads": 8,
        "headDim": 128,
    }
    result = resolve(spec("acme/secret-model", "nvidia-l40s", modelInfo=info))
    assert result.gpu_count == 2
    assert result.model is not None and result.model.source == "modelInfo"
    est = result.estimate
    assert est is not None
    assert est.weights_gib == pytest.approx(27.94, abs=0.01)
    assert est.kv_cache_gib == pytest.approx(0.94, abs=0.01)
    assert est.overhead_gib == pytest.approx(3.0)
    # The stated heads are checked: 8 KV heads are not divisible by 3.
    err = refusal(spec("acme/secret-model", "nvidia-l40s", 3, modelInfo=info))
    assert err.reason == "InvalidTensorParallelSize"


def test_model_info_with_size_only_reserves_kv_room() -> None:
    # No layers/heads: 20 % of the budget (8.1 GiB on an L40S) is held back for KV,
    # and automatic sizing tries powers of two only.
    result = resolve(spec("acme/secret-model", "nvidia-l40s", modelInfo={"parametersBillions": 30}))
    assert result.gpu_count == 2
    assert result.estimate is not None and not result.estimate.kv_known
    assert result.estimate.kv_cache_gib == pytest.approx(0.2 * 40.5)
    assert result.max_model_len is None  # cannot say: leave it to the engine
    assert any("KV cache not computed" in n for n in result.notes)


# ---- engines, args and notes ------------------------------------------------------


def test_args_change_the_estimate() -> None:
    # --max-model-len in args beats spec.maxModelLen (args come last on the command line).
    s = spec(
        "meta-llama/Llama-3.1-8B-Instruct",
        "nvidia-l4",
        1,
        maxModelLen=131072,
        args=["--max-model-len", "16384", "--kv-cache-dtype", "fp8"],
    )
    result = resolve(s)
    assert result.max_model_len == 16384
    # fp8 KV: 64 KiB/token x 16384 = 1.0 GiB
    assert result.estimate is not None and result.estimate.kv_cache_gib == pytest.approx(1.0)


def test_tgi_budget() -> None:
    result = resolve(spec("meta-llama/Llama-3.1-8B-Instruct", "nvidia-l4", engine="tgi"))
    assert result.estimate is not None
    assert result.estimate.budget_gib == pytest.approx(0.95 * 22.5)


def test_conflicting_quantization_is_noted() -> None:
    result = resolve(spec("Qwen/Qwen2.5-7B-Instruct-AWQ", "nvidia-l4", quantization="gptq"))
    assert result.weight_format.quantization == "gptq"
    assert any("suggests awq" in n for n in result.notes)


def test_status_payload() -> None:
    result = resolve(spec("meta-llama/Llama-3.1-8B-Instruct", "nvidia-l4"))
    status = result.to_status()
    assert status is not None
    assert status["gpuCount"] == 1 and status["fits"] is True
    assert status["maxModelLen"] == 8192
    assert status["budgetGiBPerGPU"] == 20.2
