"""SGLang's OpenAI-compatible server (`python3 -m sglang.launch_server`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openmodel.api import POOLING_TASKS, TASKS, ModelDeploymentSpec, lora_settings, spec_task
from openmodel.engines.base import (
    SNAPSHOT_FILES,
    AdapterSupport,
    MetricNames,
    NodeGroup,
    WeightFiles,
    adapter_path,
    model_source,
    quantization_flag,
    served_model_name,
)
from openmodel.sizing.memory import MemoryKnobs

# SGLang's QUANTIZATION_CHOICES (server_args.py) has every spec.quantization value; gguf
# is refused here all the same: SGLang loads one local .gguf file at most, and GGUF is
# what the llamacpp engine is for (CPU or GPU, the format's own runtime).
SGLANG_QUANTIZATIONS: Mapping[str, str | None] = {
    "none": None,
    "awq": "awq",
    "gptq": "gptq",
    "fp8": "fp8",
    "bitsandbytes": "bitsandbytes",
    "compressed-tensors": "compressed-tensors",
}
SGLANG_QUANTIZATION_HINTS: Mapping[str, str] = {
    "gguf": "serve GGUF files with engine llamacpp (on a GPU type or gpu.type cpu)",
}


# Memory: `--mem-fraction-static` x the card for weights and KV cache. Unset, SGLang
# computes it from the GPU's memory and parallelism; 0.88 is assumed (its value for one
# large GPU). LoRA slots (`--max-loras-per-batch`) are preallocated.
MEMORY = MemoryKnobs(
    label="SGLang",
    default_fraction=0.88,
    fraction_flag="--mem-fraction-static",
    one_byte_kv_dtypes=("fp8", "q8"),
    context_flags=("--context-length",),
    preallocates_lora_slots=True,
)
METRIC_NAMES = MetricNames(
    queue="sglang:num_queue_reqs",
    running="sglang:num_running_reqs",
    prompt_tokens="sglang:prompt_tokens_total",
    generation_tokens="sglang:generation_tokens_total",
)
# Adapters are loaded at start from --lora-paths, which it cannot list.
LORA_PATHS_FLAG = "--lora-paths"
ADAPTERS = AdapterSupport(object_store_sources=False)


# The port of the leader's torch.distributed rendezvous (`--dist-init-addr host:port`).
DIST_INIT_PORT = 5000


def multi_node_args(group: NodeGroup) -> list[str]:
    """SGLang's multi-node launch (server_args.py: `--nnodes`, `--node-rank`,
    `--dist-init-addr`): every node runs the same command with its rank, and rank 0
    serves HTTP. `--tp-size` stays the GPUs of one node and `--pp-size` the nodes, the
    layout the sizing checked (tensor parallel within a node, pipeline parallel across);
    SGLang's DeepSeek recipes use `--tp-size 16` across two nodes instead, which
    spec.args can ask for (its last value wins)."""
    return [
        "--pp-size",
        str(group.nodes),
        "--nnodes",
        str(group.nodes),
        "--node-rank",
        group.rank,
        "--dist-init-addr",
        f"{group.leader_address}:{DIST_INIT_PORT}",
    ]


@dataclass(frozen=True)
class SGLang:
    name: str = "sglang"
    display_name: str = "SGLang"
    # v0.5.19-cu129: the last CUDA 12 build (later tags need a CUDA 13 driver).
    image: str = "lmsysorg/sglang:v0.5.19-cu129"
    cpu_image: str | None = None
    runs_on_cpu: bool = False
    port: int = 30000
    # 200 once the server is up (it listens only after the weights are loaded).
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    metric_names: MetricNames = METRIC_NAMES
    draining_refusal: bytes | None = None
    hf_home: str = "/root/.cache/huggingface"
    # SGLang sends no usage statistics of its own; the Hugging Face libraries it loads
    # models with have telemetry, and DO_NOT_TRACK is the common switch.
    telemetry_opt_out: Mapping[str, str] = field(
        default_factory=lambda: {"HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    )
    offline_env: Mapping[str, str] = field(
        default_factory=lambda: {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    )
    weight_files: WeightFiles | None = SNAPSHOT_FILES
    # Tensor-parallel ranks talk through shared memory (NCCL); SGLang's docs ask for a
    # large /dev/shm, as vLLM's do.
    shm_size: str = "8Gi"
    quantizations: Mapping[str, str | None] = field(default_factory=lambda: SGLANG_QUANTIZATIONS)
    quantization_hints: Mapping[str, str] = field(default_factory=lambda: SGLANG_QUANTIZATION_HINTS)
    streams_from_object_store: bool = False
    gguf_file_flag: str | None = None
    adapters: AdapterSupport | None = ADAPTERS
    memory: MemoryKnobs = MEMORY
    suggested: bool = True
    spans_nodes: bool = True
    tasks: frozenset[str] = frozenset(TASKS)
    task_hint: str | None = None

    def command(self) -> list[str]:
        return ["python3", "-m", "sglang.launch_server"]

    def args(
        self, spec: ModelDeploymentSpec, gpu_count: int, group: NodeGroup | None = None
    ) -> list[str]:
        source = model_source(spec.model)
        # Primary flag names (`--tp-size`, not the `--tp` of the docs' examples, which
        # argparse accepts only as an abbreviation).
        out = [
            "--model-path",
            source.reference,
            "--served-model-name",
            served_model_name(spec),
            "--host",
            "0.0.0.0",
            "--port",
            str(self.port),
            "--tp-size",
            str(gpu_count),
            # Without it /metrics is not served and the autoscaler has no queue.
            "--enable-metrics",
        ]
        if group is not None:
            out += multi_node_args(group)
        if spec_task(spec) in POOLING_TASKS:
            # server_args.py: `--is-embedding` serves a pooling model, an embedding model
            # (/v1/embeddings) or a cross-encoder (/v1/rerank), instead of generation.
            out += ["--is-embedding"]
        quantization = quantization_flag(self, spec)
        if quantization is not None:
            out += ["--quantization", quantization]
        if spec.max_model_len is not None:
            out += ["--context-length", str(spec.max_model_len)]
        lora = lora_settings(spec)
        if lora is not None:
            out += [
                "--enable-lora",
                "--max-loras-per-batch",
                str(lora.max_adapters),
                "--max-lora-rank",
                str(lora.max_rank),
            ]
            # Loaded at start, sorted by name: any change rolls the pods, as on TGI.
            if spec.adapters:
                adapters = sorted(spec.adapters, key=lambda a: a.name)
                out += [LORA_PATHS_FLAG, *(f"{a.name}={adapter_path(a.source)}" for a in adapters)]
        return out

    def env(self, spec: ModelDeploymentSpec) -> list[dict[str, str]]:
        return []

    def started_adapters(self, pod: Mapping[str, Any]) -> frozenset[str]:
        """The adapter names in the `name=path` values after --lora-paths in the pod's args."""
        names: set[str] = set()
        for container in (pod.get("spec") or {}).get("containers") or []:
            args = [str(a) for a in container.get("args") or []]
            if LORA_PATHS_FLAG not in args:
                continue
            for value in args[args.index(LORA_PATHS_FLAG) + 1 :]:
                if value.startswith("--"):
                    break
                names.add(value.split("=", 1)[0])
        return frozenset(names)
