"""Weight formats: bytes per parameter for each quantization, and what a repo name implies.

Rates are for the quantized linear layers ("body"). Quantizers leave the input
embedding and lm_head in 16-bit (AWQ, GPTQ, FP8 and compressed-tensors checkpoints,
and fp8/bitsandbytes applied at load time), so when the architecture gives the embedding
size those parameters are counted at 2 bytes. GGUF quantizes the embeddings too, so a
GGUF rate is applied to every parameter.

- bf16/fp16: 2 bytes.
- fp8, int8 (compressed-tensors w8a8): 1 byte (per-channel scales are negligible).
- AWQ/GPTQ/compressed-tensors 4-bit, group 128: 4 bits + a 16-bit scale and a 4-bit
  zero per 128 weights = 0.5 + 2.5/128 ≈ 0.52 bytes.
- GPTQ 8-bit, group 128: 1 + 3/128 ≈ 1.02 bytes.
- bitsandbytes NF4, applied at load time: 4 bits + an fp32 absmax per 64 weights
  = 0.5 + 4/64 ≈ 0.56 bytes; 8-bit LLM.int8 ≈ 1 byte.
- GGUF: bits per weight of the GGUF file type the name announces
  (`openmodel.sizing.gguf`: Q4_K_M ≈ 4.90 → 0.61 bytes; Q4_K_M when the name says none).
"""

from __future__ import annotations

from dataclasses import dataclass

from openmodel.sizing.catalogue import name_tokens, normalised_name
from openmodel.sizing.gguf import DEFAULT_GGUF_TYPE, GgufType, gguf_type

GROUP_SIZE = 128


@dataclass(frozen=True)
class WeightFormat:
    """How weights are stored on the GPU."""

    quantization: str  # a spec.quantization value: none, awq, gptq, fp8, ...
    bits: int
    body_bytes_per_param: float
    # False when embeddings and lm_head stay 16-bit (counted at 2 bytes).
    quantizes_embeddings: bool
    # Set for group-wise formats: the tensor-parallel group-size rule applies.
    group_size: int | None
    # How it was decided, for messages: "spec.quantization", "repo name", "default".
    source: str
    # GGUF: the file type sized with, e.g. Q4_K_M.
    gguf_type: str | None = None

    @property
    def label(self) -> str:
        if self.quantization == "none":
            return "bf16"
        if self.gguf_type is not None:
            return f"gguf {self.gguf_type}"
        return f"{self.quantization} {self.bits}-bit"


def _gguf(model: str) -> GgufType:
    """The GGUF type the name announces (Q4_K_M when it names none)."""
    return gguf_type(model) or DEFAULT_GGUF_TYPE


def _bits(quantization: str, tokens: tuple[str, ...]) -> int:
    """4 or 8, from hints like `int8`, `8bit`, `w8a8`, `fp8`; else the format's usual bits."""
    eight = {"int8", "8bit", "w8a8", "w8a16", "fp8"}
    if quantization == "fp8" or eight.intersection(tokens):
        return 8
    return 4


def _make(quantization: str, tokens: tuple[str, ...], source: str, model: str = "") -> WeightFormat:
    if quantization == "none":
        return WeightFormat("none", 16, 2.0, False, None, source)
    if quantization == "gguf":
        found = _gguf(model)
        rate = found.bytes_per_param
        return WeightFormat("gguf", int(rate * 8), rate, True, None, source, found.name)
    bits = _bits(quantization, tokens)
    if quantization == "fp8":
        return WeightFormat("fp8", 8, 1.0, False, None, source)
    if quantization == "bitsandbytes":
        rate = 1.0 if bits == 8 else 0.5 + 4 / 64
        return WeightFormat("bitsandbytes", bits, rate, False, None, source)
    if quantization == "compressed-tensors" and bits == 8:
        # w8a8 int8 and fp8 schemes are per-channel, not group-wise.
        return WeightFormat(quantization, 8, 1.0, False, None, source)
    # awq, gptq, compressed-tensors w4a16: group-wise integers with a scale per group.
    zero_bytes = bits / 8
    rate = bits / 8 + (2 + zero_bytes) / GROUP_SIZE
    return WeightFormat(quantization, bits, rate, False, GROUP_SIZE, source)


def implied_quantization(model: str) -> str | None:
    """The quantization a repo or file name announces (`…-AWQ`, `…-FP8`, `….gguf`), or None."""
    tokens = set(name_tokens(model))
    if "gguf" in tokens or normalised_name(model).endswith(".gguf"):
        return "gguf"
    if "awq" in tokens:
        return "awq"
    if "gptq" in tokens:
        return "gptq"
    # Neural Magic / Red Hat `quantized.w4a16` and `w8a8` repos are compressed-tensors.
    if tokens & {"w4a16", "w8a8", "w8a16"}:
        return "compressed-tensors"
    if "fp8" in tokens:
        return "fp8"
    if tokens & {"bnb", "bitsandbytes", "nf4"}:
        return "bitsandbytes"
    return None


# spec.quantization values that describe the same checkpoint as the name's hint.
_COMPATIBLE = {frozenset({"fp8", "compressed-tensors"})}


def conflicts(stated: str, implied: str | None) -> bool:
    """True when spec.quantization and the repo name disagree about the format."""
    if stated == "none" or implied is None or stated == implied:
        return False
    return frozenset({stated, implied}) not in _COMPATIBLE


def weight_format(quantization: str, model: str) -> WeightFormat:
    """The format to size with: spec.quantization, or the repo name's when that is `none`.

    With `none` the engine auto-detects the checkpoint's own quantization, so the repo
    name is the best guess at what will be loaded.
    """
    tokens = name_tokens(model)
    if quantization != "none":
        return _make(quantization, tokens, "spec.quantization", model)
    implied = implied_quantization(model)
    if implied is not None:
        return _make(implied, tokens, "repo name", model)
    return _make("none", tokens, "default")


def with_quantization(quantization: str, bits: int = 4) -> WeightFormat:
    """A format for a what-if suggestion ("with fp8 it would fit")."""
    hint = ("int8",) if bits == 8 else ()
    return _make(quantization, hint, "suggestion")
