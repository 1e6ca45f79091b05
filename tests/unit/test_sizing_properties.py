"""Properties of sizing that must hold for every model, format, GPU and context."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from openmodel.accelerators import AcceleratorCatalog
from openmodel.api import QUANTIZATIONS, ModelInfo, SpecError
from openmodel.engines import ENGINES, parse_spec
from openmodel.sizing import catalogue as c
from openmodel.sizing.catalogue import Architecture, recognise
from openmodel.sizing.fit import resolve_gpu_count
from openmodel.sizing.formats import weight_format
from openmodel.sizing.memory import engine_settings, estimate_memory, kv_bytes_per_token
from openmodel.sizing.parallelism import candidate_counts, tp_violations

CATALOG = AcceleratorCatalog()
ARCHITECTURES = [v for v in vars(c).values() if isinstance(v, Architecture)]
REPO_IDS = [
    "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.1-70B-Instruct",
    "meta-llama/Llama-3.1-405B-Instruct",
    "meta-llama/Llama-3.2-1B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-72B-Instruct-AWQ",
    "someone/Qwen2.5-72B-Instruct-AWQ",
    "google/gemma-2-27b-it",
    "microsoft/Phi-3-mini-4k-instruct",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
    "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
    "neuralmagic/Meta-Llama-3.1-405B-Instruct-FP8",
]
architectures = st.sampled_from(ARCHITECTURES)
quantizations = st.sampled_from(QUANTIZATIONS)
accelerators = st.sampled_from(
    sorted((a for a in CATALOG.entries.values() if not a.cpu_only), key=lambda a: a.name)
)
contexts = st.one_of(st.none(), st.integers(min_value=256, max_value=131072))
VLLM = engine_settings(ENGINES["vllm"].memory)


@given(architectures, quantizations, st.integers(1, 8), st.integers(1, 8), accelerators)
def test_more_gpus_never_increase_per_gpu_weights_or_kv(
    arch: Architecture, quantization: str, a: int, b: int, accelerator: Any
) -> None:
    few, many = sorted((a, b))
    fmt = weight_format(quantization, "x")
    lo = estimate_memory(arch, fmt, accelerator, few, 4096, VLLM)
    hi = estimate_memory(arch, fmt, accelerator, many, 4096, VLLM)
    assert hi.weights_gib <= lo.weights_gib
    assert hi.kv_cache_gib <= lo.kv_cache_gib
    per_few = kv_bytes_per_token(arch, few, 2)
    per_many = kv_bytes_per_token(arch, many, 2)
    assert per_few is not None and per_many is not None and per_many <= per_few


@given(
    architectures, st.integers(1, 8), accelerators, st.integers(1, 131072), st.integers(1, 131072)
)
def test_longer_context_never_needs_less(
    arch: Architecture, tp: int, accelerator: Any, a: int, b: int
) -> None:
    short, long = sorted((a, b))
    fmt = weight_format("none", "x")
    lo = estimate_memory(arch, fmt, accelerator, tp, short, VLLM)
    hi = estimate_memory(arch, fmt, accelerator, tp, long, VLLM)
    assert lo.total_gib <= hi.total_gib
    assert lo.fits or not hi.fits


@given(architectures, quantizations, st.integers(1, 8), accelerators, st.integers(1, 131072))
def test_fits_agrees_with_kv_capacity(
    arch: Architecture, quantization: str, tp: int, accelerator: Any, context: int
) -> None:
    est = estimate_memory(arch, weight_format(quantization, "x"), accelerator, tp, context, VLLM)
    assert est.kv_capacity_tokens is not None
    # Capacity is floored to 16-token blocks, so it may trail `context` by < 16 tokens.
    if est.fits:
        assert est.kv_capacity_tokens > context - 16
    else:
        assert est.kv_capacity_tokens < context


@settings(max_examples=300)
@given(
    st.sampled_from(REPO_IDS),
    quantizations,
    accelerators,
    contexts,
    st.sampled_from(["vllm", "tgi"]),
)
def test_chosen_count_is_valid_fits_and_is_the_smallest(
    model: str, quantization: str, accelerator: Any, max_model_len: int | None, engine: str
) -> None:
    raw: dict[str, Any] = {
        "model": model,
        "quantization": quantization,
        "engine": engine,
        "gpu": {"type": accelerator.name},
    }
    if max_model_len is not None:
        raw["maxModelLen"] = max_model_len
    spec = parse_spec(raw)
    try:
        result = resolve_gpu_count(spec, accelerator, CATALOG, memory=ENGINES[spec.engine].memory)
    except SpecError as err:
        assert err.reason == "InsufficientGPUMemory"
        return
    arch = recognise(model)
    assert arch is not None and result.estimate is not None
    assert not tp_violations(arch, result.gpu_count, result.weight_format)
    assert result.gpu_count <= accelerator.max_per_node
    assert result.estimate.fits
    # Smallest: no smaller candidate fits the same context.
    for smaller in candidate_counts(arch, result.weight_format, accelerator.max_per_node):
        if smaller >= result.gpu_count:
            break
        est = estimate_memory(
            arch,
            result.weight_format,
            accelerator,
            smaller,
            result.estimate.context_tokens,
            engine_settings(ENGINES[engine].memory),
        )
        assert not est.fits
    # The context handed to the engine fits at the chosen count.
    if result.max_model_len is not None and max_model_len is None:
        longest = result.estimate.max_fitting_context
        assert longest is not None and result.max_model_len <= longest


@given(
    st.sampled_from(REPO_IDS),
    st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_recognition_ignores_case(model: str, flips: list[bool]) -> None:
    mixed = "".join(
        ch.upper() if flip else ch.lower() for ch, flip in zip(model, flips, strict=False)
    )
    mixed += model[len(flips) :]
    assert recognise(mixed) == recognise(model)


@given(
    st.floats(min_value=0.1, max_value=1000),
    st.integers(1, 8),
    accelerators,
)
def test_model_info_size_only_never_crashes(params: float, count: int, accelerator: Any) -> None:
    spec = parse_spec(
        {
            "model": "acme/x",
            "gpu": {"type": accelerator.name, "count": count},
            "modelInfo": {"parametersBillions": params},
        }
    )
    try:
        result = resolve_gpu_count(spec, accelerator, CATALOG, memory=ENGINES[spec.engine].memory)
    except SpecError as err:
        assert err.reason in ("InsufficientGPUMemory", "InvalidTensorParallelSize")
        return
    assert result.gpu_count == count
    assert result.model is not None and result.model.architecture == c.from_model_info(
        ModelInfo(parameters_billions=params), "acme/x"
    )
