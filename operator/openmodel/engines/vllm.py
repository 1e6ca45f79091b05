"""vLLM's OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from openmodel.api import ModelDeploymentSpec
from openmodel.engines.base import model_source, quantization_flag, served_model_name

VLLM_QUANTIZATIONS: Mapping[str, str | None] = {
    "none": None,
    "awq": "awq",
    "gptq": "gptq",
    "fp8": "fp8",
    "bitsandbytes": "bitsandbytes",
    "gguf": "gguf",
    "compressed-tensors": "compressed-tensors",
}


@dataclass(frozen=True)
class VLLM:
    name: str = "vllm"
    port: int = 8000
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    queue_metric: str = "vllm:num_requests_waiting"
    hf_home: str = "/root/.cache/huggingface"
    shm_size: str = "8Gi"
    quantizations: Mapping[str, str | None] = field(default_factory=lambda: VLLM_QUANTIZATIONS)

    def command(self) -> list[str]:
        # Explicit, so the Deployment does not depend on the image's entrypoint
        # (`vllm serve` in newer images, the module in older ones).
        return ["python3", "-m", "vllm.entrypoints.openai.api_server"]

    def args(self, spec: ModelDeploymentSpec, gpu_count: int) -> list[str]:
        source = model_source(spec.model)
        out = [
            "--model",
            source.reference,
            "--served-model-name",
            served_model_name(spec),
            "--host",
            "0.0.0.0",
            "--port",
            str(self.port),
            "--tensor-parallel-size",
            str(gpu_count),
        ]
        quantization = quantization_flag(self, spec)
        if quantization is not None:
            out += ["--quantization", quantization]
        if spec.max_model_len is not None:
            out += ["--max-model-len", str(spec.max_model_len)]
        if source.object_store:
            out += ["--load-format", "runai_streamer"]
        return out
