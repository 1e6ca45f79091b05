"""Per-GPU memory estimate and tensor-parallel rules, checked against hand arithmetic."""

from __future__ import annotations

import pytest

from openmodel.accelerators import BUILTIN_ACCELERATORS
from openmodel.api import SpecError
from openmodel.engines import ENGINES
from openmodel.sizing import catalogue as c
from openmodel.sizing.formats import weight_format
from openmodel.sizing.memory import (
    GIB,
    engine_settings,
    estimate_memory,
    kv_bytes_per_token,
    weight_bytes,
)
from openmodel.sizing.parallelism import tp_violations, valid_tp_sizes

H100 = BUILTIN_ACCELERATORS["nvidia-h100-80gb"]
L4 = BUILTIN_ACCELERATORS["nvidia-l4"]
VLLM = engine_settings(ENGINES["vllm"].memory)
BF16 = weight_format("none", "x")


def test_bf16_weights_are_two_bytes_per_parameter() -> None:
    # 8.03e9 x 2 B = 16.06e9 B = 14.96 GiB
    assert weight_bytes(c.LLAMA_31_8B, BF16) / GIB == pytest.approx(14.96, abs=0.01)


def test_awq_keeps_embeddings_in_16_bit() -> None:
    # Llama 3.1 70B: embeddings + lm_head = 2 x 128256 x 8192 = 2.101e9 params at 2 B;
    # the other 68.50e9 at 0.5 + 2.5/128 = 0.5195 B -> 4.203e9 + 35.587e9 = 39.79e9 B,
    # 37.06 GiB (the hugging-quants checkpoint is 39.8 GB on disk).
    fmt = weight_format("awq", "x")
    assert fmt.body_bytes_per_param == pytest.approx(0.5195, abs=1e-4)
    assert weight_bytes(c.LLAMA_31_70B, fmt) / 1e9 == pytest.approx(39.79, abs=0.01)


def test_gguf_rate_applies_to_every_parameter() -> None:
    # Q4_K_M files average 4.90 bits/weight (0.6125 B/param), embeddings included
    fmt = weight_format("none", "bartowski/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf")
    assert weight_bytes(c.LLAMA_31_8B, fmt) / 1e9 == pytest.approx(4.92, abs=0.01)


def test_kv_cache_per_token() -> None:
    # 2 (K, V) x 32 layers x 8 KV heads x 128 head_dim x 2 B = 131072 B = 128 KiB
    assert kv_bytes_per_token(c.LLAMA_31_8B, 1, 2) == 131072
    # Split over ranks: 8 heads / 2 = 4 per rank.
    assert kv_bytes_per_token(c.LLAMA_31_8B, 2, 2) == 65536
    # fp8 KV cache halves it.
    assert kv_bytes_per_token(c.LLAMA_31_8B, 1, 1) == 65536


def test_kv_heads_are_replicated_past_their_count() -> None:
    # Qwen2.5 1.5B has 2 KV heads: at tp 2 and tp 4 every rank holds one head,
    # 2 x 28 x 1 x 128 x 2 B = 14336 B per token, no further saving.
    assert kv_bytes_per_token(c.QWEN25_1_5B, 2, 2) == 14336
    assert kv_bytes_per_token(c.QWEN25_1_5B, 4, 2) == 14336


def test_estimate_adds_up() -> None:
    est = estimate_memory(c.LLAMA_31_8B, BF16, L4, 1, 4096, VLLM)
    # Budget 0.9 x 22.5 = 20.25 GiB; KV 4096 x 128 KiB = 0.5 GiB.
    assert est.budget_gib == pytest.approx(20.25)
    assert est.kv_cache_gib == pytest.approx(0.5)
    # Overhead 1.5 + activations 8192 x (4 x 4096 + 2 x 14336) x 2 B = 0.6875 GiB
    # + sampler 256 x 128256 x 4 B x 2 = 0.2446 GiB = 2.432 GiB.
    assert est.overhead_gib == pytest.approx(2.432, abs=0.001)
    assert est.total_gib == pytest.approx(14.96 + 0.5 + 2.432, abs=0.01)
    assert est.fits
    assert "fits" in est.summary() and "nvidia-l4" in est.summary()
    assert est.to_status()["totalGiBPerGPU"] == pytest.approx(17.9)


def test_engine_settings_from_args() -> None:
    assert VLLM.memory_fraction == 0.9
    tuned = engine_settings(
        ENGINES["vllm"].memory,
        ["--gpu-memory-utilization=0.95", "--kv-cache-dtype", "fp8", "--max-model-len", "4096"],
    )
    assert (tuned.memory_fraction, tuned.kv_cache_bytes, tuned.max_model_len_arg) == (
        0.95,
        1,
        4096,
    )
    # TGI gives the KV cache 93 % of what is free after load: 0.95 of the card, modelled.
    tgi = engine_settings(ENGINES["tgi"].memory, ["--max-total-tokens", "2048"])
    assert tgi.memory_fraction == pytest.approx(0.95)
    assert tgi.max_model_len_arg == 2048
    with pytest.raises(SpecError) as err:
        engine_settings(ENGINES["vllm"].memory, ["--gpu-memory-utilization", "95"])
    assert err.value.reason == "InvalidEngineArgs" and err.value.field == "spec.args"


# ---- tensor-parallel rules ------------------------------------------------------


def test_qwen25_7b_valid_counts() -> None:
    # 28 heads: divisors up to 8 are 1, 2, 4, 7. 4 KV heads: 7 > 4 and 7 % 4 != 0 -> out.
    assert valid_tp_sizes(c.QWEN25_7B, BF16, 8) == (1, 2, 4)
    # GPTQ: 18944 / tp must be a multiple of 128: 148, 74, 37 groups for 1, 2, 4 -> same.
    gptq = weight_format("none", "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4")
    assert valid_tp_sizes(c.QWEN25_7B, gptq, 8) == (1, 2, 4)


def test_64_head_model_counts() -> None:
    assert valid_tp_sizes(c.LLAMA_31_70B, BF16, 8) == (1, 2, 4, 8)
    assert tp_violations(c.LLAMA_31_70B, 3, BF16) == (
        "64 attention heads are not divisible by 3",
        "8 KV heads are not divisible by 3",
    )
    # Capped by the node: 16 would divide 64 heads but is not offered.
    assert valid_tp_sizes(c.LLAMA_31_70B, BF16, 4) == (1, 2, 4)


def test_replicated_kv_heads_allow_multiples() -> None:
    # Qwen2.5 1.5B: 12 heads, 2 KV heads. tp 6: 12 % 6 == 0 and 6 % 2 == 0 -> valid;
    # tp 3: 3 % 2 != 0 -> not.
    assert valid_tp_sizes(c.QWEN25_1_5B, BF16, 8) == (1, 2, 4, 6)


def test_group_size_rule_for_awq() -> None:
    awq = weight_format("awq", "x")
    # Qwen2.5 72B unpadded: 29568 = 231 x 128 and 231 is odd -> only tp 1.
    assert valid_tp_sizes(c.QWEN25_72B, awq, 8) == (1,)
    assert valid_tp_sizes(c.QWEN25_72B, BF16, 8) == (1, 2, 4, 8)
    # Qwen2.5 14B: 13824 / 8 = 1728 = 13.5 x 128 -> 8 is out for AWQ only.
    assert valid_tp_sizes(c.QWEN25_14B, awq, 8) == (1, 2, 4)
    assert valid_tp_sizes(c.QWEN25_14B, BF16, 8) == (1, 2, 4, 8)
    # fp8 is per-channel: no group rule.
    assert valid_tp_sizes(c.QWEN25_72B, weight_format("fp8", "x"), 8) == (1, 2, 4, 8)
