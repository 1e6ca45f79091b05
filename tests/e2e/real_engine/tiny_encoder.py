"""Write a tiny random-weight BERT encoder that real vLLM (CPU build) serves as a pooling
model: an embedding model (`BertModel`) or a cross-encoder reranker
(`BertForSequenceClassification`, one label: vLLM serves /rerank and /score for it).

Run with the vLLM environment's python (it needs torch, transformers, tokenizers):

    $VENV/bin/python tests/e2e/real_engine/tiny_encoder.py OUT_DIR embed|rerank

OUT_DIR gets config.json, model.safetensors and the tokenizer files; the resolved path is
printed on stdout. Every run writes byte-identical files (fixed seeds).

Sizes as the tiny Llama's (tiny_model.py) and for the same reasons: head size 32 (the
smallest vLLM's CPU attention takes), 2 heads so hidden 64, MLP 128, one layer. The
vocabulary is the tiny Llama's BPE trained on the same words, with BERT's special tokens
and its pair template (`[CLS] A [SEP] B [SEP]`, token types 0 then 1), which vLLM's
cross-encoder scoring asks the tokenizer for.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import tiny_model  # beside this script (sys.path[0] when run as one)

HIDDEN = tiny_model.HIDDEN
MAX_POSITIONS = 512
CLS, SEP, PAD, UNK, MASK = "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]
ARCHITECTURES = {"embed": "BertModel", "rerank": "BertForSequenceClassification"}


def write_encoder(out: Path, task: str) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        PreTrainedTokenizerFast,
    )

    rng = random.Random(tiny_model.SEED)
    torch.manual_seed(tiny_model.SEED)
    out.mkdir(parents=True, exist_ok=True)

    raw = Tokenizer(models.BPE(unk_token=UNK))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=tiny_model.BPE_VOCAB_TARGET,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
        show_progress=False,
    )
    raw.train_from_iterator(tiny_model.training_text(rng), trainer=trainer)
    cls_id, sep_id = raw.token_to_id(CLS), raw.token_to_id(SEP)
    raw.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        cls_token=CLS,
        sep_token=SEP,
        pad_token=PAD,
        unk_token=UNK,
        mask_token=MASK,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(out)
    tiny_model.portable_tokenizer_config(out / "tokenizer_config.json")

    config = BertConfig(
        vocab_size=raw.get_vocab_size(with_added_tokens=True),
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=tiny_model.NUM_HEADS,
        intermediate_size=tiny_model.INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=2,
        pad_token_id=raw.token_to_id(PAD),
        num_labels=1,
    )
    config.architectures = [ARCHITECTURES[task]]
    model = BertModel(config) if task == "embed" else BertForSequenceClassification(config)
    model.save_pretrained(out, safe_serialization=True)
    for f in out.iterdir():
        f.chmod(0o644)  # a pod's non-root engine reads them too


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2] not in ARCHITECTURES:
        print(f"usage: {argv[0]} OUT_DIR {'|'.join(ARCHITECTURES)}", file=sys.stderr)
        return 2
    out = Path(argv[1]).resolve()
    write_encoder(out, argv[2])
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
