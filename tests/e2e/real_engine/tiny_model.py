"""Write a tiny random-weight Llama model directory that real vLLM (CPU build) serves.

Run with the vLLM environment's python (it needs torch, transformers, tokenizers):

    $VENV/bin/python tests/e2e/real_engine/tiny_model.py OUT_DIR

OUT_DIR gets config.json, model.safetensors, generation_config.json, tokenizer.json,
tokenizer_config.json and chat_template.jinja (about 300 KB in all); the resolved path
is printed on stdout. Every run writes byte-identical files (fixed seeds, fixed
training text) in about 5 s, nearly all of it importing torch and transformers.

Why each size (smallest that vLLM 0.32 on CPU accepts and still exercises real code):

- head_dim 32: the smallest head size vLLM's CPU attention backend supports
  (CPUAttentionBackend.get_supported_head_sizes: 32, 64, 80, ..., 512); others fail
  when the engine starts.
- 2 attention heads, 2 KV heads -> hidden_size 64: heads divisible by
  --tensor-parallel-size 1 and 2, so a tp=2 argument list still passes vLLM's
  divisibility checks; hidden 64 is a multiple of the 16/32-wide vector kernels.
- intermediate_size 128 (2 x hidden, as small as an MLP gets without being odd), one
  decoder layer: every per-layer code path (attention, KV cache, MLP) runs once.
- max_position_embeddings 4096: tests pass --max-model-len 2048 and 1024, which vLLM
  refuses above the model's own context length.
- vocabulary: a BPE tokenizer trained here on a few hundred ordinary English words,
  Metaspace pre-tokenizer (no byte-level tokens), so every token decodes to readable
  text and random weights still produce words; vocab_size is the tokenizer's exact
  size, so the model never samples an id the tokenizer cannot decode.
- tie_word_embeddings: lm_head shares the embedding, one matrix less on disk.
- bfloat16: the dtype vLLM picks on CPU; saving in it avoids a cast warning.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer  # installed beside vLLM, imported when building

SEED = 0
HEAD_DIM = 32
NUM_HEADS = 2
NUM_KV_HEADS = 2
HIDDEN = HEAD_DIM * NUM_HEADS
INTERMEDIATE = 2 * HIDDEN
LAYERS = 1
MAX_POSITIONS = 4096
BPE_VOCAB_TARGET = 1024

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, IM_START, IM_END]

# ChatML-like; vLLM's /v1/chat/completions renders it with the tokenizer's chat_template.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Kept as lines of text (split when read) so the list stays readable.
WORD_LINES = (
    "the a an and or but if then so because when where what who how why which that this",
    "these those it its is are was were be been being have has had do does did will would",
    "can could shall should may might must not no yes all any some many much more most few",
    "less each every other another same such own only just also very too quite really still",
    "even again ever never always often sometimes here there now today tomorrow yesterday",
    "soon later early late before after during while until since about above below over",
    "under between among through into onto from with without within across along around",
    "behind beside near far up down in out on off at by for of to as than like i you he she",
    "we they me him her us them my your his our their model server request response token",
    "text word sentence answer question reply message user assistant system engine cluster",
    "node pod replica service deployment queue metric health ready load start stop run",
    "serve send read write open close make take give get put set keep find show tell ask",
    "say think know see look come go move turn help try use work play call time day night",
    "week month year morning evening hour minute second moment world city country house",
    "home room door window table chair book paper letter story song music picture color",
    "water fire earth air sun moon star sky rain snow wind cloud river lake sea mountain",
    "forest tree flower grass stone road bridge car train boat plane bird fish dog cat",
    "horse cow sheep red blue green yellow white black small large big little long short",
    "high low new old good bad great happy sad warm cold hot cool fast slow easy hard",
    "simple clear bright dark quiet loud strong weak young kind fine free full empty early",
    "first last next one two three four five six seven eight nine ten hundred thousand",
    "people person man woman child friend family name place thing part way life hand eye",
    "head face voice heart mind idea reason number point",
)
WORDS = [word for line in WORD_LINES for word in line.split()]


def training_text(rng: random.Random) -> list[str]:
    """Sentences of the words above, with the punctuation and newlines chats contain."""
    lines = []
    for _ in range(2000):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", ".", "?", "!", ","]))
    return lines


def train_bpe(rng: random.Random, special_tokens: list[str], unk: str) -> Tokenizer:
    """A byte-pair tokenizer trained on `training_text(rng)`, with Metaspace word
    boundaries and `special_tokens` first in its vocabulary; the caller adds the template
    its model reads (tiny_encoder.py trains its BERT tokenizer here too)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    alphabet += list(".,!?;:'\"()-\n")
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_TARGET,
        min_frequency=1,
        special_tokens=special_tokens,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(training_text(rng), trainer=trainer)
    return tok


def build_tokenizer(rng: random.Random) -> Tokenizer:
    from tokenizers import processors

    tok = train_bpe(rng, SPECIAL_TOKENS, UNK)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def write_model(out: Path, layers: int = LAYERS) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    random.seed(SEED)
    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)

    raw = build_tokenizer(random.Random(SEED))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    portable_tokenizer_config(out / "tokenizer_config.json")

    ids = {t: raw.token_to_id(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(with_added_tokens=True),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=True,
        dtype="bfloat16",
    )
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=[ids[EOS], ids[IM_END]],
        pad_token_id=ids[PAD],
    ).save_pretrained(out)
    for f in out.iterdir():
        # safetensors writes its file 0600; a pod's non-root engine must read it too.
        f.chmod(0o644)


def portable_tokenizer_config(path: Path) -> None:
    """Name the class and special tokens the way transformers 4.x reads them too.

    transformers 5 writes `TokenizersBackend` and a list-valued `extra_special_tokens`,
    which older transformers (as in a vLLM container image) cannot load; both
    versions read `PreTrainedTokenizerFast` and `additional_special_tokens`.
    """
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    path.write_text(json.dumps(config, indent=2) + "\n")


def main(argv: list[str]) -> int:
    # --layers N: a deeper variant, for pipeline parallelism (a stage needs a layer).
    layers = LAYERS
    if len(argv) == 4 and argv[2] == "--layers" and argv[3].isdigit():
        layers = int(argv[3])
    elif len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR [--layers N]", file=sys.stderr)
        return 2
    out = Path(argv[1]).resolve()
    write_model(out, layers)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
