"""Write two tiny random-weight BERT models that real vLLM (CPU build) serves as pooling
models: an embedding model and a cross-encoder (a reranker).

Run with the vLLM environment's python (it needs torch, transformers, tokenizers):

    $VENV/bin/python tests/e2e/real_engine/tiny_encoder.py OUT_ROOT

OUT_ROOT gets `embedder/` (architectures BertModel, with the sentence-transformers
files `modules.json` and `config_sentence_transformers.json` a real embedding repo
ships, and a CLS pooling config) and `reranker/` (BertForSequenceClassification with
num_labels 1, a cross-encoder's head). Every run writes byte-identical files (fixed
seeds, the tiny Llama's fixed training text and word list).

Sizes as tiny_model.py's, for the same reasons: head_dim 32 (the smallest head size
vLLM's CPU attention supports), 2 heads -> hidden 64, intermediate 128, one layer;
max_position_embeddings 512 as BERT's. The tokenizer is a WordPiece-free BPE trained on
the tiny Llama's text, wrapped in BERT's [CLS] a [SEP] b [SEP] template with token type
ids, so a (query, document) pair reaches the cross-encoder as BERT reads one.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_model import WORDS, portable_tokenizer_config, train_bpe

SEED = 0
HEAD_DIM = 32
NUM_HEADS = 2
HIDDEN = HEAD_DIM * NUM_HEADS
INTERMEDIATE = 2 * HIDDEN
LAYERS = 1
MAX_POSITIONS = 512
CLS, SEP, PAD, UNK, MASK = "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]


def build_tokenizer(rng: random.Random):  # type: ignore[no-untyped-def]
    from tokenizers import processors

    tok = train_bpe(rng, SPECIAL_TOKENS, UNK)
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return tok


def write_tokenizer(out: Path, raw) -> None:  # type: ignore[no-untyped-def]
    from transformers import PreTrainedTokenizerFast

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
    portable_tokenizer_config(out / "tokenizer_config.json")


def bert_config(vocab: int, pad_id: int):  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=2,
        pad_token_id=pad_id,
    )


def sentence_transformers_files(out: Path) -> None:
    """What `sentence-transformers` writes beside a model: the module list (a
    Transformer, then CLS pooling, then normalisation) and its own version stamp."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]  # fmt: skip
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (out / "config_sentence_transformers.json").write_text(
        json.dumps({"__version__": {"sentence_transformers": "3.0.1"}}, indent=2) + "\n"
    )
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_POSITIONS, "do_lower_case": False}, indent=2) + "\n"
    )
    pooling = out / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    (pooling / "config.json").write_text(
        json.dumps(
            {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": True,
             "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
             "pooling_mode_mean_sqrt_len_tokens": False},
            indent=2,
        ) + "\n"
    )  # fmt: skip
    (out / "2_Normalize").mkdir(exist_ok=True)


def write_models(root: Path) -> None:
    import torch
    from transformers import BertForSequenceClassification, BertModel

    assert WORDS, "the tiny Llama's word list is empty"
    random.seed(SEED)
    torch.manual_seed(SEED)
    raw = build_tokenizer(random.Random(SEED))
    vocab = raw.get_vocab_size(with_added_tokens=True)
    pad_id = raw.token_to_id(PAD)

    embedder = root / "embedder"
    embedder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(embedder, raw)
    config = bert_config(vocab, pad_id)
    config.architectures = ["BertModel"]
    BertModel(config, add_pooling_layer=False).save_pretrained(embedder, safe_serialization=True)
    sentence_transformers_files(embedder)

    reranker = root / "reranker"
    reranker.mkdir(parents=True, exist_ok=True)
    write_tokenizer(reranker, raw)
    config = bert_config(vocab, pad_id)
    config.num_labels = 1
    config.architectures = ["BertForSequenceClassification"]
    BertForSequenceClassification(config).save_pretrained(reranker, safe_serialization=True)

    for path in root.rglob("*"):
        # safetensors writes its file 0600; a pod's non-root engine must read it too.
        path.chmod(0o755 if path.is_dir() else 0o644)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_ROOT", file=sys.stderr)
        return 2
    root = Path(argv[1]).resolve()
    write_models(root)
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
