"""llama.cpp's `llama-server`: GGUF files on a GPU or on CPU-only nodes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from openmodel.api import ModelDeploymentSpec
from openmodel.engines.base import model_source, quantization_flag, served_model_name
from openmodel.sizing.cpu import estimate_cpu

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


@dataclass(frozen=True)
class LlamaCpp:
    name: str = "llamacpp"
    port: int = 8080
    # 503 while the model loads (the server listens from the start), 200 once ready.
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    queue_metric: str = "llamacpp:requests_deferred"
    # Where `--hf-repo` downloads go (llama.cpp honours HF_HOME's hub layout).
    hf_home: str = "/root/.cache/huggingface"
    shm_size: str = "1Gi"
    quantizations: Mapping[str, str | None] = field(default_factory=lambda: LLAMACPP_QUANTIZATIONS)
    quantization_hints: Mapping[str, str] = field(
        default_factory=lambda: LLAMACPP_QUANTIZATION_HINTS
    )

    def command(self) -> list[str]:
        return ["llama-server"]

    def args(self, spec: ModelDeploymentSpec, gpu_count: int) -> list[str]:
        """`gpu_count` 0 is a CPU-only replica (gpu.type cpu)."""
        quantization_flag(self, spec)  # refuses what llama.cpp cannot load
        source = model_source(spec.model)
        if source.pvc_claim is not None:
            out = ["-m", source.reference]
        else:
            out = ["--hf-repo", source.reference, "--hf-file", spec.gguf_file or ""]
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
        if gpu_count == 0:
            # Else llama.cpp starts a thread per core of the node, not of the request.
            out += ["--threads", str(estimate_cpu(spec).cpu)]
        return out

    def env(self, spec: ModelDeploymentSpec) -> list[dict[str, str]]:
        return []
