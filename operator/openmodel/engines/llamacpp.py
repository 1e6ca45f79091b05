"""llama.cpp's `llama-server`: GGUF files on a GPU or on CPU-only nodes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openmodel.api import TASK_EMBED, TASK_RERANK, TASKS, ModelDeploymentSpec, spec_task
from openmodel.engines.base import (
    AdapterSupport,
    MetricNames,
    NodeGroup,
    WeightFiles,
    model_source,
    quantization_flag,
    served_model_name,
)
from openmodel.sizing.cpu import estimate_cpu
from openmodel.sizing.memory import MemoryKnobs

# llama.cpp reads GGUF only, with the types the file itself records: `none` and `gguf`
# both pass no flag.
LLAMACPP_QUANTIZATIONS: Mapping[str, str | None] = {"none": None, "gguf": None}
_SAFETENSORS = "use engine vllm or sglang, or a GGUF conversion of the model"
LLAMACPP_QUANTIZATION_HINTS: Mapping[str, str] = {
    q: f"llama.cpp loads GGUF files only: {_SAFETENSORS} with quantization gguf"
    for q in ("awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors")
}
# Request slots: concurrent requests decoded together; more wait in the queue that
# `llamacpp:requests_deferred` counts. They share the `-c` KV cache (--kv-unified).
SLOTS = 4
# Memory on a GPU: no share to set; it allocates the offloaded weights, the whole `-c` KV
# cache and its compute buffers, and leaves the rest. 0.95 of the card is budgeted (the
# CUDA context and the driver keep the remainder). On CPU (sizing/cpu.py) its defaults
# are sized: f16 K and V (`--cache-type-k/v`), one 512-token micro-batch (`-ub`).
MEMORY = MemoryKnobs(
    label="llama.cpp",
    default_fraction=0.95,
    kv_cache_dtype_flag="--cache-type-k",
    one_byte_kv_dtypes=("fp8", "q8"),
    context_flags=("--ctx-size", "-c"),
    weights_always_gguf=True,
)
HF_FILE_FLAG = "--hf-file"
# `requests_deferred`: tasks that found no free slot and wait in the server's queue.
METRIC_NAMES = MetricNames(
    queue="llamacpp:requests_deferred",
    running="llamacpp:requests_processing",
    prompt_tokens="llamacpp:prompt_tokens_total",
    generation_tokens="llamacpp:tokens_predicted_total",
)


@dataclass(frozen=True)
class LlamaCpp:
    name: str = "llamacpp"
    display_name: str = "llama.cpp"
    # llama.cpp publishes rolling tags per variant; pin a build (server-bNNNN) in the
    # platform config for reproducible rollouts.
    image: str = "ghcr.io/ggml-org/llama.cpp:server-cuda"
    cpu_image: str | None = "ghcr.io/ggml-org/llama.cpp:server"
    runs_on_cpu: bool = True
    port: int = 8080
    # 503 while the model loads (the server listens from the start), 200 once ready.
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    metric_names: MetricNames = METRIC_NAMES
    draining_refusal: bytes | None = None
    # Where `--hf-repo` downloads go (llama.cpp honours HF_HOME's hub layout).
    hf_home: str = "/root/.cache/huggingface"
    # llama-server reports nothing home; `--offline` (env LLAMA_ARG_OFFLINE) keeps its
    # -hf download path from the network.
    telemetry_opt_out: Mapping[str, str] = field(default_factory=dict)
    offline_env: Mapping[str, str] = field(default_factory=lambda: {"LLAMA_ARG_OFFLINE": "1"})
    # llama-server fetches its GGUF file itself (--hf-repo); no download Job yet.
    weight_files: WeightFiles | None = None
    shm_size: str = "1Gi"
    quantizations: Mapping[str, str | None] = field(default_factory=lambda: LLAMACPP_QUANTIZATIONS)
    quantization_hints: Mapping[str, str] = field(
        default_factory=lambda: LLAMACPP_QUANTIZATION_HINTS
    )
    streams_from_object_store: bool = False
    gguf_file_flag: str | None = HF_FILE_FLAG
    adapters: AdapterSupport | None = None
    memory: MemoryKnobs = MEMORY
    suggested: bool = True
    # One pod per replica: no multi-node launch.
    spans_nodes: bool = False
    tasks: frozenset[str] = frozenset(TASKS)
    task_hint: str | None = None

    def command(self) -> list[str]:
        return ["llama-server"]

    def args(
        self, spec: ModelDeploymentSpec, gpu_count: int, group: NodeGroup | None = None
    ) -> list[str]:
        """`gpu_count` 0 is a CPU-only replica (gpu.type cpu)."""
        quantization_flag(self, spec)  # refuses what llama.cpp cannot load
        source = model_source(spec.model)
        if source.pvc_claim is not None:
            out = ["-m", source.reference]
        else:
            out = ["--hf-repo", source.reference, HF_FILE_FLAG, spec.gguf_file or ""]
        out += [
            "--alias",
            served_model_name(spec),
            # Its default listen address is loopback.
            "--host",
            "0.0.0.0",
            "--port",
            str(self.port),
            # Every layer on the GPU(s), none on CPU (the CPU build ignores the flag).
            "-ngl",
            "all" if gpu_count > 0 else "0",
            "--parallel",
            str(SLOTS),
            # One KV cache of `-c` tokens shared by the slots, so one request may use all
            # of maxModelLen; without it each slot gets only c / parallel.
            "--kv-unified",
            "--metrics",
        ]
        if spec.max_model_len is not None:
            out += ["-c", str(spec.max_model_len)]
        out += self._task_args(spec)
        if gpu_count == 0:
            # Else llama.cpp starts a thread per core of the node, not of the request.
            out += ["--threads", str(estimate_cpu(spec).cpu)]
        return out

    def _task_args(self, spec: ModelDeploymentSpec) -> list[str]:
        """`--embeddings` (/v1/embeddings, the model's own pooling unless spec.args
        gives `--pooling`) or `--reranking` (/v1/rerank, rank pooling over a
        classification head). A pooling model reads each input in one physical batch
        (an encoder's attention is not causal): with a known context, the logical and
        physical batches (`-b`, `-ub`, 2048 and 512 by default) are made that long, so
        an input up to maxModelLen is not refused as too large."""
        task = spec_task(spec)
        if task not in (TASK_EMBED, TASK_RERANK):
            return []
        out = ["--embeddings"] if task == TASK_EMBED else ["--reranking"]
        if spec.max_model_len is not None:
            out += ["--batch-size", str(spec.max_model_len),
                    "--ubatch-size", str(spec.max_model_len)]  # fmt: skip
        return out

    def env(self, spec: ModelDeploymentSpec) -> list[dict[str, str]]:
        return []

    def started_adapters(self, pod: Mapping[str, Any]) -> frozenset[str]:
        return frozenset()  # serves no named adapters
