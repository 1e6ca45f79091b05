"""Benchmark prefix-aware balancing against least-load, side by side in one run, with
simulated engines that model vLLM's prefix cache (openmodel/simulator/prefix_cache.py).

N simulated vLLM engines (processes, 127.0.0.21..) with a prefill time per uncached
prompt token; the gateway (a process, static routes) once with `gateway.balancing.policy:
least-load`, once with `prefix`, the same engines restarted between the two (empty
caches). The workload, seeded and the same for both: `--conversations` multi-turn chats,
each on one of `--system-prompts` long system prompts, `--turns` turns each (every turn
sends the system prompt, the conversation so far and a new question), `--concurrency`
conversations at once. Reported per policy: the engines' prefix-cache hit rate
(vllm:prefix_cache_hits / queries, in tokens, summed over the engines), p50/p99 request
latency, and requests per engine (the spread; the load bound itself is the balancer's
invariant, tests/unit/test_gateway_affinity.py).

    .venv/bin/python -m perf.bench_prefix_routing [--engines 4] [--conversations 96]
        [--turns 4] [--system-prompts 16] [--concurrency 12] [--prefill-ms-per-token 0.5]
        [--cache-blocks 200] [--keep]

Exit status 0 (a benchmark reports), 2 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from openmodel.engine_metrics.exposition import parse_exposition
from perf.gateway.client import MODEL
from perf.gateway.processes import (
    BenchError,
    Processes,
    engine_targets,
    http_get,
    start_engines,
    start_gateway,
)
from perf.runs import remove_or_keep

WORDS = [
    "payroll",
    "invoice",
    "holiday",
    "contract",
    "policy",
    "manager",
    "review",
    "budget",
    "travel",
    "expense",
]
LOAD_FACTOR = 1.25


@dataclass
class Outcome:
    policy: str
    hit_rate: float
    p50_ms: float
    p99_ms: float
    per_engine: list[int]
    seconds: float


def system_prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def conversations(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(system prompt, questions) per conversation: the same for both policies."""
    rng = random.Random(args.seed)
    systems = [system_prompt(rng, args.system_words) for _ in range(args.system_prompts)]
    return [
        (
            systems[i % len(systems)],
            [f"question {i} {t} " + system_prompt(rng, 12) for t in range(args.turns)],
        )
        for i in range(args.conversations)
    ]


async def run_load(base: str, chats: list[tuple[str, list[str]]], concurrency: int) -> list[float]:
    latencies: list[float] = []
    pending = iter(chats)

    async def worker(session: aiohttp.ClientSession) -> None:
        for system, questions in pending:
            history: list[dict[str, str]] = [{"role": "system", "content": system}]
            for question in questions:
                history.append({"role": "user", "content": question})
                body = {"model": MODEL, "messages": history, "max_tokens": 4}
                started = time.perf_counter()
                async with session.post(f"{base}/v1/chat/completions", json=body) as response:
                    answer = await response.json()
                    if response.status != 200:
                        raise BenchError(f"HTTP {response.status}: {answer}")
                latencies.append(time.perf_counter() - started)
                history.append(answer["choices"][0]["message"])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return latencies


def engine_counts(targets: list[tuple[str, int]]) -> tuple[float, float, list[int]]:
    hits = queries = 0.0
    served = []
    for host, port in targets:
        status, text = http_get(f"http://{host}:{port}/metrics")
        if status != 200:
            raise BenchError(f"engine {host}: /metrics {status}")
        exposition = parse_exposition(text)
        hits += sum(exposition.values("vllm:prefix_cache_hits_total"))
        queries += sum(exposition.values("vllm:prefix_cache_queries_total"))
        served.append(int(sum(exposition.values("vllm:request_success_total"))))
    return hits, queries, served


def one_policy(policy: str, args: argparse.Namespace, workdir: Path) -> Outcome:
    procs = Processes(workdir / policy)
    procs.workdir.mkdir(parents=True)
    try:
        engines = start_engines(
            procs, args.engines, args.slots, args.service_time, None,
            prefill_per_token=args.prefill_ms_per_token / 1000, cache_blocks=args.cache_blocks,
        )  # fmt: skip
        targets = engine_targets(engines)
        balancing = {"policy": policy, "loadFactor": LOAD_FACTOR}
        _, base, _ = start_gateway(procs, targets, None, {"balancing": balancing})
        started = time.perf_counter()
        latencies = asyncio.run(run_load(base, conversations(args), args.concurrency))
        seconds = time.perf_counter() - started
        hits, queries, served = engine_counts(targets)
    finally:
        procs.stop_all()
    ordered = sorted(latencies)
    return Outcome(
        policy,
        hits / queries if queries else 0.0,
        statistics.median(ordered) * 1000,
        ordered[int(0.99 * (len(ordered) - 1))] * 1000,
        served,
        seconds,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.bench_prefix_routing")
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=96)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--system-prompts", type=int, default=16)
    parser.add_argument("--system-words", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--service-time", type=float, default=0.02)
    parser.add_argument("--prefill-ms-per-token", type=float, default=0.5)
    # Each engine's prefix cache, in 16-token blocks: half of what the system prompts
    # need (16 x 400 words = 400 blocks), as a KV cache shared by many tenants is.
    parser.add_argument("--cache-blocks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-prefix-"))
    failed = True
    try:
        outcomes = [one_policy(p, args, workdir) for p in ("least-load", "prefix")]
        failed = False
    except BenchError as e:
        print(f"bench_prefix_routing: {e}", file=sys.stderr)
        return 2
    finally:
        remove_or_keep(workdir, args.keep or failed)
    requests = args.conversations * args.turns
    print(
        f"{args.engines} engines, {args.conversations} conversations x {args.turns} turns "
        f"({requests} requests), {args.system_prompts} system prompts of "
        f"{args.system_words} words, {args.concurrency} at once, prefill "
        f"{args.prefill_ms_per_token} ms per uncached token, a prefix cache of "
        f"{args.cache_blocks} blocks of 16 tokens per engine, loadFactor {LOAD_FACTOR}"
    )
    print(f"{'policy':<11} {'hit rate':>8} {'p50 ms':>8} {'p99 ms':>8} {'wall s':>7}  per engine")
    for o in outcomes:
        print(
            f"{o.policy:<11} {o.hit_rate:>8.1%} {o.p50_ms:>8.1f} {o.p99_ms:>8.1f} "
            f"{o.seconds:>7.1f}  {o.per_engine}"
        )
    least, prefix = outcomes
    print(
        f"prefix vs least-load: hit rate {prefix.hit_rate:.1%} vs {least.hit_rate:.1%}, "
        f"p50 {prefix.p50_ms / least.p50_ms:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
