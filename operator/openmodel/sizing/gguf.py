"""GGUF weight types: bits per weight of the format's quantization types, and the type a
file name announces (`Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf` -> Q4_K_M).

Two numbers per type, both from the GGUF reference implementation's sources (ggml):
- `block_bpw`: the ggml block layout (`ggml/src/ggml-common.h`): bytes per block x 8 /
  weights per block, e.g. block_q4_K = 2 fp16 scales + 12 scale bytes + 128 nibble
  bytes for 256 weights = 144 x 8 / 256 = 4.5 bits;
- `file_bpw`: what a whole file of that type averages, which is what a download and
  the loaded weights take: the `llama-quantize` file types are mixes (Q4_K_M keeps
  some attention and FFN tensors and the output in Q6_K), so they are measured, from
  the sizes `tools/quantize/quantize.cpp` lists for Llama-3-8B (8.03e9 parameters), in
  GiB: Q4_K_M 4.58 GiB -> 4.58 x 2^30 x 8 / 8.03e9 = 4.90 bits per weight.
Sizing uses `file_bpw` for every parameter (GGUF quantizes the embeddings too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LLAMA3_8B_PARAMS = 8.03e9


def _measured(gib: float) -> float:
    """Bits per weight of a Llama-3-8B file of `gib` GiB (quantize.cpp's table)."""
    return round(gib * 1024**3 * 8 / _LLAMA3_8B_PARAMS, 2)


@dataclass(frozen=True)
class GgufType:
    name: str  # as llama-quantize spells it, e.g. Q4_K_M
    block_bpw: float  # the ggml block type's own bits per weight
    file_bpw: float  # a whole file of this type, per weight

    @property
    def bytes_per_param(self) -> float:
        return self.file_bpw / 8


GGUF_TYPES: dict[str, GgufType] = {
    t.name: t
    for t in (
        GgufType("F32", 32.0, 32.0),
        GgufType("F16", 16.0, 16.0),
        GgufType("BF16", 16.0, 16.0),
        GgufType("Q8_0", 34 * 8 / 32, _measured(7.96)),
        GgufType("Q6_K", 210 * 8 / 256, _measured(6.14)),
        GgufType("Q5_K_M", 176 * 8 / 256, _measured(5.33)),
        GgufType("Q5_K_S", 176 * 8 / 256, _measured(5.21)),
        GgufType("Q5_1", 24 * 8 / 32, _measured(5.65)),
        GgufType("Q5_0", 22 * 8 / 32, _measured(5.21)),
        GgufType("Q4_K_M", 144 * 8 / 256, _measured(4.58)),
        GgufType("Q4_K_S", 144 * 8 / 256, _measured(4.37)),
        GgufType("Q4_1", 20 * 8 / 32, _measured(4.78)),
        GgufType("Q4_0", 18 * 8 / 32, _measured(4.34)),
        GgufType("IQ4_NL", 18 * 8 / 32, 4.5),
        GgufType("IQ4_XS", 136 * 8 / 256, 4.25),
        GgufType("Q3_K_L", 110 * 8 / 256, _measured(4.03)),
        GgufType("Q3_K_M", 110 * 8 / 256, _measured(3.74)),
        GgufType("Q3_K_S", 110 * 8 / 256, _measured(3.41)),
        GgufType("Q2_K", 84 * 8 / 256, _measured(2.96)),
    )
}
# llama-quantize's aliases: Q4_K is Q4_K_M, Q5_K is Q5_K_M, Q3_K is Q3_K_M.
_ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}
# The usual download when a name says nothing; smaller types only make it safer.
DEFAULT_GGUF_TYPE = GGUF_TYPES["Q4_K_M"]

# A type in a file or repo name, separated by `-`, `_` or `.` from the rest.
_TYPE_IN_NAME = re.compile(
    r"(?<![a-z0-9])(iq4[-_](?:nl|xs)|q[2-8][-_]k(?:[-_][sml])?|q[4-8][-_][01]|bf16|f16|f32)"
    r"(?![a-z0-9])"
)


def gguf_type(name: str) -> GgufType | None:
    """The GGUF type a file or repo name announces, or None."""
    last = name.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    found = _TYPE_IN_NAME.search(last)
    if found is None:
        return None
    key = found.group(1).upper().replace("-", "_")
    return GGUF_TYPES.get(_ALIASES.get(key, key))
