"""The GPU memory share each engine gives itself, with the flags in spec.args that move
it: `memory.engine_settings` for vLLM and TGI, and here for SGLang and llama.cpp.

- SGLang: `--mem-fraction-static` x memory for weights and KV cache. Unset, SGLang
  computes it from the GPU's memory and parallelism; 0.88 is assumed (its value for one
  large GPU). Context flag `--context-length`. LoRA slots (`--max-loras-per-batch`) are
  preallocated like vLLM's.
- llama.cpp: no share; it allocates the offloaded weights, the whole `-c` KV cache and
  its compute buffers, and leaves the rest. 0.95 of memory is budgeted (the CUDA
  context and the driver keep the remainder). Context flag `-c` / `--ctx-size`.
"""

from __future__ import annotations

from collections.abc import Sequence

from openmodel.api import LoraSpec
from openmodel.sizing.memory import EngineSettings, _flag_value, _fraction, _tokens, engine_settings

SGLANG_DEFAULT_FRACTION = 0.88
LLAMACPP_SHARE = 0.95


def _kv_bytes(args: Sequence[str], flag: str) -> int:
    dtype = _flag_value(args, flag) or "auto"
    return 1 if dtype.startswith(("fp8", "q8")) else 2


def settings_for(
    engine: str, args: Sequence[str] = (), lora: LoraSpec | None = None
) -> EngineSettings:
    """`memory.engine_settings`, knowing SGLang's and llama.cpp's flags too."""
    if engine == "sglang":
        fraction = _fraction(args, "--mem-fraction-static", SGLANG_DEFAULT_FRACTION)
        return EngineSettings(
            engine=engine,
            memory_fraction=fraction,
            fraction_text=f"SGLang --mem-fraction-static {fraction:.2f}",
            kv_cache_bytes=_kv_bytes(args, "--kv-cache-dtype"),
            max_model_len_arg=_tokens(args, "--context-length"),
            lora=lora,
        )
    if engine == "llamacpp":
        context = _tokens(args, "--ctx-size") or _tokens(args, "-c")
        return EngineSettings(
            engine=engine,
            memory_fraction=LLAMACPP_SHARE,
            fraction_text=f"llama.cpp share {LLAMACPP_SHARE:.2f}",
            kv_cache_bytes=_kv_bytes(args, "--cache-type-k"),
            max_model_len_arg=context,
        )
    return engine_settings(engine, args, lora)
