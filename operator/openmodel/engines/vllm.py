"""vLLM's OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from openmodel.api import ModelDeploymentSpec, lora_settings
from openmodel.engines.base import model_source, quantization_flag, served_model_name

# No `bitsandbytes` or `gguf`: vLLM 0.32 (the version the real-engine tests run) lists
# neither in QUANTIZATION_METHODS, so `--quantization gguf` (or bitsandbytes) stops it at
# start with "Unknown quantization method: gguf". GGUF moved to the separate
# vllm-gguf-plugin package (the wheel's optional `extra-quant`); bitsandbytes was dropped.
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


# On SIGTERM (a rollout, a scale-down) vLLM's default `--shutdown-timeout 0` aborts every
# request in flight; with N > 0 it drains them for up to N seconds first. Below the pod's
# terminationGracePeriodSeconds (60, render.py), so the kubelet's SIGKILL never cuts it.
DRAIN_SECONDS = 50


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
    quantization_hints: Mapping[str, str] = field(default_factory=lambda: VLLM_QUANTIZATION_HINTS)

    def command(self) -> list[str]:
        # Explicit, so the Deployment does not depend on the image's entrypoint.
        # `vllm serve` replaced the `vllm.entrypoints.openai.api_server` module, which
        # vLLM 0.29 deprecated.
        return ["vllm", "serve"]

    def args(self, spec: ModelDeploymentSpec, gpu_count: int) -> list[str]:
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
