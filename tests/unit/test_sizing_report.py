"""The CLI's sizing report."""

from __future__ import annotations

import pytest

from openmodel.accelerators import AcceleratorCatalog
from openmodel.api import SpecError
from openmodel.engines import ENGINES
from openmodel.sizing import format_size_report, size_report

CATALOG = AcceleratorCatalog()
VLLM_MEMORY = ENGINES["vllm"].memory


def test_report_lists_every_valid_count() -> None:
    report = size_report(
        "meta-llama/Llama-3.1-70B-Instruct", "nvidia-h100-80gb", "none", CATALOG, memory=VLLM_MEMORY
    )
    assert [row.gpu_count for row in report.rows] == [1, 2, 4, 8]
    # 131.5 GiB of bf16 weights: one H100 cannot, two can (see test_sizing_fit).
    assert [row.fits for row in report.rows] == [False, True, True, True]
    assert report.smallest_fit == 2
    assert [n for n, _ in report.invalid] == [3, 5, 6, 7]
    text = format_size_report(report)
    assert "Llama 3.1 70B" in text
    assert "Smallest count that fits: 2" in text
    assert "3: 64 attention heads are not divisible by 3" in text
    assert "Context: 8192 tokens (default; model max 131072)" in text


def test_report_with_context_and_quantization() -> None:
    report = size_report(
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        "nvidia-l4",
        "none",
        CATALOG,
        memory=VLLM_MEMORY,
        max_model_len=32768,
    )
    assert report.weight_format.quantization == "awq"
    assert report.context_tokens == 32768
    # 37.06 GiB of weights / 4 = 9.3 GiB + 32768 x 80 KiB = 2.5 GiB KV + ~3 GiB overhead.
    assert report.smallest_fit == 4
    assert "awq 4-bit (from repo name)" in format_size_report(report)


def test_report_nothing_fits() -> None:
    report = size_report(
        "meta-llama/Llama-3.1-405B-Instruct", "nvidia-t4", "none", CATALOG, memory=VLLM_MEMORY
    )
    assert report.smallest_fit is None
    assert "No valid count fits on one node." in format_size_report(report)


def test_report_errors() -> None:
    with pytest.raises(SpecError) as err:
        size_report(
            "meta-llama/Llama-3.1-8B-Instruct", "nvidia-x999", "none", CATALOG, memory=VLLM_MEMORY
        )
    assert err.value.reason == "UnknownAccelerator"
    with pytest.raises(SpecError) as err:
        size_report("acme/unknown", "nvidia-l4", "none", CATALOG, memory=VLLM_MEMORY)
    assert err.value.reason == "UnknownModelSize"
