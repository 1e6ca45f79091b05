"""A tiny random-weight Llama as a GGUF file, written with llama.cpp's own gguf-py (from
the llama-server build's root, hack/install-llama-server.sh): 2 layers, hidden 64, 4
heads (2 KV heads), a byte-level BPE vocabulary of the 256 byte symbols plus a few
merges and two special tokens. ~0.3 MB in F32. Run as a script with the directory of
gguf-py and the output path: ``python tiny_gguf.py GGUF_PY OUT.gguf``."""

from __future__ import annotations

import sys
from pathlib import Path

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN, CONTEXT = 2, 64, 4, 2, 128, 2048


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table: the symbols byte-level BPE vocabularies use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD))
    printable += list(range(0xAE, 0x100))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(printable, codes, strict=True))
    return [chr(table[b]) for b in range(256)]


def write_tiny_gguf(gguf_py: Path, out: Path, seed: int = 0) -> Path:
    sys.path.insert(0, str(gguf_py))
    import gguf  # llama.cpp's gguf-py
    import numpy as np

    merges = ["Ġ t", "h e", "Ġt he", "i n"]
    tokens = [*_byte_symbols(), "Ġt", "he", "Ġthe", "in", "<|bos|>", "<|eos|>"]
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (vocab - 2) + [gguf.TokenType.CONTROL] * 2)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab - 2)
    w.add_eos_token_id(vocab - 1)
    rng = np.random.default_rng(seed)

    def t(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    head_dim = HIDDEN // HEADS
    t("token_embd.weight", vocab, HIDDEN)
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    t("output.weight", vocab, HIDDEN)
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        t(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        t(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        t(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        t(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        t(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        t(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        t(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


if __name__ == "__main__":
    write_tiny_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
