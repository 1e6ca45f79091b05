"""SGLang's OpenAI-compatible server (`python3 -m sglang.launch_server`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from openmodel.api import ModelDeploymentSpec, lora_settings
from openmodel.engines.base import adapter_path, model_source, quantization_flag, served_model_name

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


@dataclass(frozen=True)
class SGLang:
    name: str = "sglang"
    port: int = 30000
    # 200 once the server is up (it listens only after the weights are loaded).
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    queue_metric: str = "sglang:num_queue_reqs"
    hf_home: str = "/root/.cache/huggingface"
    # Tensor-parallel ranks talk through shared memory (NCCL); SGLang's docs ask for a
    # large /dev/shm, as vLLM's do.
    shm_size: str = "8Gi"
    quantizations: Mapping[str, str | None] = field(default_factory=lambda: SGLANG_QUANTIZATIONS)
    quantization_hints: Mapping[str, str] = field(default_factory=lambda: SGLANG_QUANTIZATION_HINTS)

    def command(self) -> list[str]:
        return ["python3", "-m", "sglang.launch_server"]

    def args(self, spec: ModelDeploymentSpec, gpu_count: int) -> list[str]:
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
                out += ["--lora-paths", *(f"{a.name}={adapter_path(a.source)}" for a in adapters)]
        return out

    def env(self, spec: ModelDeploymentSpec) -> list[dict[str, str]]:
        return []
