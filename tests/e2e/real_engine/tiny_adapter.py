"""Write a tiny random LoRA adapter (peft format) for the model tiny_model.py writes.

Run with the vLLM environment's python (it needs torch, transformers, peft):

    $VENV/bin/python tests/e2e/real_engine/tiny_adapter.py BASE_DIR OUT_DIR --rank 8 --seed 1 \
        [--also OUT_DIR2 RANK2 SEED2 ...]

OUT_DIR gets adapter_config.json and adapter_model.safetensors (about 10 KB at rank 8,
67 KB at rank 64); the resolved path is printed on stdout. The same BASE_DIR, rank and
seed give byte-identical weights, so tests can compare outputs across runs. Each
`--also` writes one more adapter in the same process (torch, transformers and peft
imported once: most of the ~6 s an adapter takes alone); each adapter is seeded just
before its layers are made, so it gets the same bytes as when written alone.

Why each choice:

- peft's own LoraConfig / save_pretrained: the directory layout vLLM's
  --lora-modules and /v1/load_lora_adapter read (adapter_config.json plus
  adapter_model.safetensors with `base_model.model.<module>.lora_A/B.weight` keys), so
  the test exercises the same loader a real adapter would.
- target_modules q_proj, v_proj: the classic LoRA targets, both supported by vLLM's
  Llama LoRA layers; no embedding or lm_head modules (those need extra vLLM flags).
- init_lora_weights=False: peft normally starts lora_B at zero, which would make the
  adapter an exact no-op; left at the nn.Linear random init, both matrices are nonzero
  and an adapter request answers differently from the base model.
- lora_alpha = 2 x rank (scaling 2): the random delta is strong enough to change greedy
  (temperature 0) outputs of the random base model at every rank.
- --rank: default 8, under the --max-lora-rank 16 tests start vLLM with; pass a larger
  rank (e.g. 64) to exercise vLLM's refusal of an adapter above --max-lora-rank.
- --seed: torch.manual_seed before the adapter layers are created, so different seeds
  give different adapters (different outputs), the same seed the same bytes.
- float32 weights: vLLM on this CPU runs --dtype float32 (its bf16 AMX kernel dies
  with SIGILL here); it casts adapters to the model dtype either way.
- peft's generated README.md model card is removed: vLLM ignores it and it only adds
  noise (and a version string) to the directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TARGET_MODULES = ["q_proj", "v_proj"]


def write_adapter(base: Path, out: Path, rank: int, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out, safe_serialization=True)
    # adapter_config.json records base_model_name_or_path; vLLM does not check it.
    (out / "README.md").unlink(missing_ok=True)
    for f in out.iterdir():
        # safetensors writes its file 0600; a pod's non-root engine must read it too.
        f.chmod(0o644)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=argv[0], description=__doc__.splitlines()[0])
    parser.add_argument("base_dir", type=Path, help="model directory from tiny_model.py")
    parser.add_argument("out_dir", type=Path, help="adapter directory to write")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    parser.add_argument("--seed", type=int, default=1, help="torch seed (default 1)")
    parser.add_argument(
        "--also",
        nargs=3,
        action="append",
        default=[],
        metavar=("OUT_DIR", "RANK", "SEED"),
        help="one more adapter to write (repeatable)",
    )
    args = parser.parse_args(argv[1:])
    adapters = [(args.out_dir, args.rank, args.seed)]
    for out_dir, rank, seed in args.also:
        if not (rank.isdigit() and seed.isdigit()):
            parser.error(f"--also {out_dir} {rank} {seed}: RANK and SEED are whole numbers")
        adapters.append((Path(out_dir), int(rank), int(seed)))
    if any(rank < 1 for _, rank, _ in adapters):
        parser.error("a rank must be at least 1")
    for out_dir, rank, seed in adapters:
        out = out_dir.resolve()
        write_adapter(args.base_dir.resolve(), out, rank, seed)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
