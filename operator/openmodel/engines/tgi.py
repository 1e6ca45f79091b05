"""Hugging Face text-generation-inference (maintenance mode upstream, still supported)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from openmodel.api import ModelDeploymentSpec, SpecError
from openmodel.engines.base import adapter_path, model_source, quantization_flag

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


@dataclass(frozen=True)
class TGI:
    name: str = "tgi"
    # The image sets PORT=80; we pass --port explicitly as well.
    port: int = 80
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    queue_metric: str = "tgi_queue_size"
    hf_home: str = "/data"
    shm_size: str = "1Gi"
    quantizations: Mapping[str, str | None] = field(default_factory=lambda: TGI_QUANTIZATIONS)
    quantization_hints: Mapping[str, str] = field(default_factory=lambda: TGI_QUANTIZATION_HINTS)

    def command(self) -> list[str]:
        return ["text-generation-launcher"]

    def args(self, spec: ModelDeploymentSpec, gpu_count: int) -> list[str]:
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
        return [{"name": "LORA_ADAPTERS", "value": value}]
