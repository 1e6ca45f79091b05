"""Write a random-weight Llama checkpoint of at least a given size that real vLLM (CPU
build) serves: the tiny model's tokenizer and files (tiny_model.py) with wide layers,
as many as it takes to reach the size.

Run with the vLLM environment's python (it needs torch, transformers, safetensors):

    $VENV/bin/python tests/e2e/real_engine/sized_model.py OUT_DIR [--min-bytes N]

OUT_DIR gets config.json, model.safetensors (bfloat16, at least N bytes; default 1 GiB),
generation_config.json and the tokenizer files. What the weights benchmark downloads:
the tiny model downloads too fast to show a cache's worth.

Shape: a Qwen2/Llama-like layer of a small model (hidden 2048, 16 heads of 128, 4 KV
heads, MLP 5632: ~45 M parameters, ~90 MB in bf16 per layer); 12 layers for 1 GiB.
Head size 128 is one vLLM's CPU attention supports. The tensors are written directly
(random normal x 0.02, one seeded generator) instead of initialising the model: a
second's work per layer instead of a minute, and no float32 copy in memory. The
vocabulary is the tiny model's (~1000 tokens), so the answers are words.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import tiny_model  # beside this script (sys.path[0] when run as one)

HIDDEN = 2048
HEADS = 16
KV_HEADS = 4
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 5632
GiB = 2**30
BF16_BYTES = 2


def layer_parameters() -> int:
    attention = HIDDEN * HEADS * HEAD_DIM * 2 + HIDDEN * KV_HEADS * HEAD_DIM * 2
    return attention + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN


def layers_for(min_bytes: int, vocab: int) -> int:
    embedding = vocab * HIDDEN + HIDDEN  # tied with lm_head; plus the final norm
    return max(1, math.ceil((min_bytes / BF16_BYTES - embedding) / layer_parameters()))


def write_model(out: Path, min_bytes: int) -> int:
    import torch
    from safetensors.torch import save_file
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    out.mkdir(parents=True, exist_ok=True)
    raw = tiny_model.build_tokenizer(random.Random(tiny_model.SEED))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=tiny_model.BOS,
        eos_token=tiny_model.EOS,
        unk_token=tiny_model.UNK,
        pad_token=tiny_model.PAD,
        additional_special_tokens=[tiny_model.IM_START, tiny_model.IM_END],
        model_max_length=tiny_model.MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = tiny_model.CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    tiny_model.portable_tokenizer_config(out / "tokenizer_config.json")

    ids = {t: raw.token_to_id(t) for t in tiny_model.SPECIAL_TOKENS}
    vocab = raw.get_vocab_size(with_added_tokens=True)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers_for(min_bytes, vocab),
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=tiny_model.MAX_POSITIONS,
        bos_token_id=ids[tiny_model.BOS],
        eos_token_id=ids[tiny_model.EOS],
        pad_token_id=ids[tiny_model.PAD],
        tie_word_embeddings=True,
        dtype="bfloat16",
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=ids[tiny_model.BOS],
        eos_token_id=[ids[tiny_model.EOS], ids[tiny_model.IM_END]],
        pad_token_id=ids[tiny_model.PAD],
    ).save_pretrained(out)

    # The names and shapes the model loads, from a model that holds no memory.
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in LlamaForCausalLM(config).state_dict().items()}
    shapes.pop("lm_head.weight", None)  # tied to the embedding
    generator = torch.Generator().manual_seed(tiny_model.SEED)
    tensors = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            tensors[name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in out.iterdir():
        f.chmod(0o644)
    return (out / "model.safetensors").stat().st_size


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sized_model.py")
    parser.add_argument("out", type=Path)
    parser.add_argument("--min-bytes", type=int, default=GiB)
    args = parser.parse_args(argv)
    size = write_model(args.out.resolve(), args.min_bytes)
    print(f"{args.out.resolve()} {size}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
