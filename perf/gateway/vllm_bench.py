"""bench_gateway's second load generator, one nobody here wrote: vLLM's own
`vllm bench serve` (from the vLLM CPU environment), streamed completions of random
prompts against one simulated engine, straight and through a gateway routed to that
engine only, alternated. Its tokenizer is the tiny test model's (written once into the
work directory by tests/e2e/real_engine/tiny_model.py): the simulator does not tokenize,
so only the prompts' shape depends on it."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from perf.runs import REPO

from .client import MODEL
from .processes import BenchError

TINY_MODEL_SCRIPT: Final = REPO / "tests" / "e2e" / "real_engine" / "tiny_model.py"
RUN_DEADLINE_S: Final = 600.0


@dataclass(frozen=True)
class VllmBenchResult:
    path: str  # "direct" or "gateway"
    concurrency: int
    completed: int
    failed: int
    rps: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    e2el_p50_ms: float
    e2el_p99_ms: float


def tokenizer_dir(vllm_env: Path, workdir: Path) -> Path:
    out = workdir / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        result = subprocess.run(
            [str(vllm_env / "bin" / "python"), str(TINY_MODEL_SCRIPT), str(out)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise BenchError(f"tiny_model.py failed: {result.stderr[-2000:]}")
    return out


def run_vllm_bench(
    vllm_env: Path,
    tokenizer: Path,
    base_url: str,
    path: str,
    concurrency: int,
    prompts: int,
    tokens: int,
    workdir: Path,
) -> VllmBenchResult:
    """One `vllm bench serve` run: `prompts` streamed completions of `tokens` tokens
    (random 32-token prompts, ignore_eos), `concurrency` at a time."""
    name = f"vllm-bench-{path}-x{concurrency}-{len(list(workdir.glob('vllm-bench-*.json')))}"
    argv = [
        str(vllm_env / "bin" / "vllm"), "bench", "serve",
        "--backend", "openai", "--endpoint", "/v1/completions", "--base-url", base_url,
        "--model", MODEL, "--tokenizer", str(tokenizer),
        "--dataset-name", "random", "--random-input-len", "32",
        "--random-output-len", str(tokens), "--ignore-eos", "--seed", "1",
        "--num-prompts", str(prompts), "--max-concurrency", str(concurrency),
        "--num-warmups", str(min(prompts, max(concurrency, 8))),
        "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(workdir), "--result-filename", name + ".json",
        "--disable-tqdm",
    ]  # fmt: skip
    log = workdir / (name + ".log")
    with log.open("wb") as out:
        done = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, timeout=RUN_DEADLINE_S, check=False,
            env={"NO_PROXY": "*", "no_proxy": "*", "HF_HUB_OFFLINE": "1",
                 "PATH": f"{vllm_env / 'bin'}:/usr/bin:/bin", "HOME": str(Path.home())},
        )  # fmt: skip
    result_file = workdir / (name + ".json")
    if done.returncode != 0 or not result_file.is_file():
        tail = log.read_text(errors="replace")[-2000:]
        raise BenchError(f"vllm bench serve failed ({done.returncode}):\n{tail}")
    data = json.loads(result_file.read_text())
    return VllmBenchResult(
        path=path,
        concurrency=concurrency,
        completed=int(data["completed"]),
        failed=int(data.get("failed", 0)),
        rps=float(data["request_throughput"]),
        ttft_p50_ms=float(data["p50_ttft_ms"]),
        ttft_p99_ms=float(data["p99_ttft_ms"]),
        e2el_p50_ms=float(data["p50_e2el_ms"]),
        e2el_p99_ms=float(data["p99_e2el_ms"]),
    )


def print_vllm_bench(results: list[VllmBenchResult]) -> None:
    print("\n`vllm bench serve` (streamed completions, one engine; ms):")
    print(
        f"  {'streams':>7} {'path':>8} {'done':>6} {'failed':>6} {'req/s':>8} "
        f"{'TTFT p50':>9} {'TTFT p99':>9} {'e2e p50':>9} {'e2e p99':>9}"
    )
    for r in results:
        print(
            f"  {r.concurrency:>7} {r.path:>8} {r.completed:>6} {r.failed:>6} {r.rps:>8.1f} "
            f"{r.ttft_p50_ms:>9.2f} {r.ttft_p99_ms:>9.2f} {r.e2el_p50_ms:>9.2f} "
            f"{r.e2el_p99_ms:>9.2f}"
        )
    by: dict[tuple[int, str], list[VllmBenchResult]] = {}
    for r in results:
        by.setdefault((r.concurrency, r.path), []).append(r)
    for c in sorted({r.concurrency for r in results}):
        pairs = list(zip(by.get((c, "direct"), []), by.get((c, "gateway"), []), strict=False))
        for i, (d, g) in enumerate(pairs):
            print(
                f"  x{c} round {i + 1}: added TTFT p50 {g.ttft_p50_ms - d.ttft_p50_ms:+.2f} "
                f"p99 {g.ttft_p99_ms - d.ttft_p99_ms:+.2f} ms, throughput "
                f"{g.rps / d.rps if d.rps else 0.0:.1%} of direct"
            )
