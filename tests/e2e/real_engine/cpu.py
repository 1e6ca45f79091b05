"""How the real-engine tests run vLLM on this machine's CPUs: settings a user on a CPU
node would pass through spec.env and spec.args, never special cases in the operator.

- VLLM_CPU_KVCACHE_SPACE: the KV cache size (GiB) vLLM's CPU backend needs, else its
  memory check refuses to start.
- one unbound OpenMP thread: on 2 cores two engines that bind threads to every core starve
  each other (a second one took over 2 minutes to load beside a busy one).
- --enforce-eager: 30 s to healthy instead of 50-80 s with graph compilation.
- --dtype float32: with bf16 vLLM picks its AMX attention kernel, whose first tile
  instruction died with SIGILL on this machine although the CPU flags (and torch) report
  AMX (seen 2026-12-01; it had worked an hour before).
"""

from __future__ import annotations

CPU_ENV = [
    {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"},
    {"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "nobind"},
    {"name": "OMP_NUM_THREADS", "value": "1"},
]
CPU_ARGS = ["--enforce-eager", "--dtype", "float32"]
START_TIMEOUT = 240.0  # seconds for an engine to become Ready, beside a busy one
