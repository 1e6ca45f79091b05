"""Hugging Face text-generation-inference (maintenance mode upstream, still supported,
so refusals do not suggest it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openmodel.api import TASK_GENERATE, ModelDeploymentSpec, SpecError
from openmodel.engines.base import (
    SNAPSHOT_FILES,
    AdapterSupport,
    MetricNames,
    NodeGroup,
    WeightFiles,
    adapter_path,
    model_source,
    quantization_flag,
)
from openmodel.sizing.memory import MemoryKnobs

# gguf is not supported by TGI (the CRD's CEL rule refuses it at apply already);
# `none` passes no flag.
TGI_QUANTIZATIONS: Mapping[str, str | None] = {
    "none": None,
    "awq": "awq",
    "gptq": "gptq",
    "fp8": "fp8",
    "bitsandbytes": "bitsandbytes",
    "compressed-tensors": "compressed-tensors",
}
TGI_QUANTIZATION_HINTS: Mapping[str, str] = {
    "gguf": (
        "TGI cannot load GGUF: use a safetensors checkpoint (AWQ, GPTQ, or 16-bit with "
        "fp8 or bitsandbytes applied at load time)"
    ),
}


# Memory: TGI gives its KV cache 93 % of what is free after loading and warm-up (its
# TGI_WIGGLE_ROOM), times `--cuda-memory-fraction` (default 1.0); its effective share is
# 0.93-0.98 of the card depending on how much the weights take, so 0.95 x fraction x
# memory is budgeted. It allocates per loaded adapter, not per LoRA slot.
MEMORY = MemoryKnobs(
    label="TGI",
    default_fraction=1.0,
    fraction_flag="--cuda-memory-fraction",
    fraction_scale=0.95,
    context_flags=("--max-total-tokens",),
)
# TGI counts tokens per request in histograms: their sums are the totals.
METRIC_NAMES = MetricNames(
    queue="tgi_queue_size",
    running="tgi_batch_current_size",
    prompt_tokens="tgi_request_input_length_sum",
    generation_tokens="tgi_request_generated_tokens_sum",
)
# The adapters a pod loads at start, `name=path,...` (see `env`). It exits if one fails
# to load, and cannot list them.
LORA_ADAPTERS_ENV = "LORA_ADAPTERS"
ADAPTERS = AdapterSupport(object_store_sources=False)


@dataclass(frozen=True)
class TGI:
    name: str = "tgi"
    display_name: str = "TGI"
    image: str = "ghcr.io/huggingface/text-generation-inference:3.3.6"
    cpu_image: str | None = None
    runs_on_cpu: bool = False
    # The image sets PORT=80; we pass --port explicitly as well.
    port: int = 80
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    metric_names: MetricNames = METRIC_NAMES
    draining_refusal: bytes | None = None
    hf_home: str = "/data"
    # TGI's launcher reports usage statistics unless `--usage-stats off` (env
    # USAGE_STATS); its Python server uses huggingface_hub.
    telemetry_opt_out: Mapping[str, str] = field(
        default_factory=lambda: {"USAGE_STATS": "off", "HF_HUB_DISABLE_TELEMETRY": "1"}
    )
    offline_env: Mapping[str, str] = field(
        default_factory=lambda: {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    )
    weight_files: WeightFiles | None = SNAPSHOT_FILES
    shm_size: str = "1Gi"
    quantizations: Mapping[str, str | None] = field(default_factory=lambda: TGI_QUANTIZATIONS)
    quantization_hints: Mapping[str, str] = field(default_factory=lambda: TGI_QUANTIZATION_HINTS)
    streams_from_object_store: bool = False
    gguf_file_flag: str | None = None
    adapters: AdapterSupport | None = ADAPTERS
    memory: MemoryKnobs = MEMORY
    suggested: bool = False
    # One pod per replica: no multi-node launch.
    spans_nodes: bool = False
    # TGI generates only; Hugging Face serves embedding models and rerankers with
    # another server, text-embeddings-inference, which openmodel does not run.
    tasks: frozenset[str] = frozenset({TASK_GENERATE})
    task_hint: str | None = (
        "TGI generates text only: Hugging Face serves embedding models and rerankers with "
        "text-embeddings-inference (TEI), a different server"
    )

    def command(self) -> list[str]:
        return ["text-generation-launcher"]

    def args(
        self, spec: ModelDeploymentSpec, gpu_count: int, group: NodeGroup | None = None
    ) -> list[str]:
        source = model_source(spec.model)
        if source.object_store:
            raise SpecError(
                "spec.model",
                "engine 'tgi' cannot stream weights from s3:// or gs://; use engine vllm, "
                "a Hugging Face repo id or a pvc:// URI",
                reason="UnsupportedModelSource",
            )
        out = [
            "--model-id",
            source.reference,
            "--hostname",
            "0.0.0.0",
            "--port",
            str(self.port),
            "--num-shard",
            str(gpu_count),
        ]
        quantization = quantization_flag(self, spec)
        if quantization is not None:
            out += ["--quantize", quantization]
        if spec.max_model_len is not None:
            # TGI needs input < total; the whole window is the user's max length.
            out += [
                "--max-input-tokens",
                str(max(1, spec.max_model_len - 1)),
                "--max-total-tokens",
                str(spec.max_model_len),
            ]
        return out

    def env(self, spec: ModelDeploymentSpec) -> list[dict[str, str]]:
        if not spec.adapters:
            return []
        # TGI loads adapters at start only: a change here rolls the pods, as it must.
        adapters = sorted(spec.adapters, key=lambda a: a.name)
        value = ",".join(f"{a.name}={adapter_path(a.source)}" for a in adapters)
        return [{"name": LORA_ADAPTERS_ENV, "value": value}]

    def started_adapters(self, pod: Mapping[str, Any]) -> frozenset[str]:
        """The adapter names in the pod's LORA_ADAPTERS env."""
        for container in (pod.get("spec") or {}).get("containers") or []:
            for env in container.get("env") or []:
                if env.get("name") == LORA_ADAPTERS_ENV:
                    items = str(env.get("value") or "").split(",")
                    return frozenset(i.split("=", 1)[0] for i in items if i)
        return frozenset()
