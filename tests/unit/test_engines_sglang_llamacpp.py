"""SGLang and llama.cpp: rendered commands, the quantization matrix, GGUF and CPU sizing,
CPU placement, the simulator's exposition read by the autoscaler, static adapters."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from openmodel.accelerators import BUILTIN_ACCELERATORS
from openmodel.api import ENGINES as API_ENGINES
from openmodel.api import QUANTIZATIONS, SpecError
from openmodel.config import DEFAULT_ENGINE_IMAGES, PlatformConfig
from openmodel.engine_metrics.exposition import QueueReading, parse_exposition, read_queue
from openmodel.engines import ENGINES, parse_model_deployment
from openmodel.engines.base import quantization_value
from openmodel.reconcile.plan import make_plan
from openmodel.simulator.exposition import (
    EngineStats,
    cpp_float,
    render_llamacpp,
    render_sglang,
)
from openmodel.sizing.catalogue import LLAMA_31_8B
from openmodel.sizing.cpu import estimate_cpu
from openmodel.sizing.formats import weight_format
from openmodel.sizing.gguf import GGUF_TYPES, gguf_type
from openmodel.sizing.memory import weight_bytes

CRD = Path(__file__).resolve().parents[2] / "crds" / "modeldeployment.yaml"
GGUF_REPO = "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF"
GGUF_FILE = "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"


def md(**spec: Any) -> Any:
    body: dict[str, Any] = {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "team-a", "uid": "u-1"},
        "spec": {"model": "Qwen/Qwen2.5-7B-Instruct", "gpu": {"type": "nvidia-l4"}},
    }
    body["spec"].update(copy.deepcopy(spec))
    return parse_model_deployment(body)


def engine_container(plan: Any) -> dict[str, Any]:
    return plan.children.deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def llama_gguf(**spec: Any) -> Any:
    base = {"model": GGUF_REPO, "ggufFile": GGUF_FILE, "engine": "llamacpp"}
    return md(**(base | spec))


# --- SGLang -------------------------------------------------------------------------


def test_sglang_command_and_every_flag() -> None:
    spec = md(
        engine="sglang",
        model="Qwen/Qwen2.5-72B-Instruct-AWQ",
        quantization="awq",
        gpu={"type": "nvidia-h100-80gb", "count": 2},
        servedModelName="qwen",
        maxModelLen=16384,
    )
    plan = make_plan(spec, PlatformConfig(), None)
    c = engine_container(plan)
    assert c["image"] == DEFAULT_ENGINE_IMAGES["sglang"] == "lmsysorg/sglang:v0.5.19-cu129"
    assert c["command"] == ["python3", "-m", "sglang.launch_server"]
    assert c["args"] == [
        "--model-path", "Qwen/Qwen2.5-72B-Instruct-AWQ",
        "--served-model-name", "qwen",
        "--host", "0.0.0.0",
        "--port", "30000",
        "--tp-size", "2",
        "--enable-metrics",
        "--quantization", "awq",
        "--context-length", "16384",
    ]  # fmt: skip
    assert c["ports"] == [{"name": "http", "containerPort": 30000, "protocol": "TCP"}]
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["resources"] == {"limits": {"nvidia.com/gpu": "2"}}


def test_sglang_lora_paths_sorted_and_slots() -> None:
    spec = md(
        engine="sglang",
        gpu={"type": "nvidia-h100-80gb", "count": 1},
        adapters=[
            {"name": "sql", "source": "pvc://loras/sql"},
            {"name": "chat", "source": "org/chat-lora"},
        ],
        lora={"maxRank": 32, "maxAdapters": 3},
    )
    args = ENGINES["sglang"].args(spec.spec, 1)
    tail = args[args.index("--enable-lora") :]
    assert tail == [
        "--enable-lora",
        "--max-loras-per-batch", "3",
        "--max-lora-rank", "32",
        "--lora-paths", "chat=org/chat-lora", "sql=/models/loras/sql",
    ]  # fmt: skip
    pod = {"spec": {"containers": [{"args": [*args, "--log-level", "info"]}]}}
    assert ENGINES["sglang"].started_adapters(pod) == {"chat", "sql"}


def test_sglang_refuses_gguf_and_s3() -> None:
    with pytest.raises(SpecError) as err:
        quantization_value(ENGINES["sglang"], "gguf")
    assert "engine llamacpp" in err.value.message
    with pytest.raises(SpecError) as err:
        md(engine="sglang", model="s3://bucket/llama")
    assert err.value.field == "spec.model"


# --- llama.cpp ----------------------------------------------------------------------


def test_llamacpp_hub_repo_on_an_l4() -> None:
    plan = make_plan(llama_gguf(servedModelName="llama", maxModelLen=8192), PlatformConfig(), None)
    c = engine_container(plan)
    assert c["image"] == "ghcr.io/ggml-org/llama.cpp:server-cuda"
    assert c["command"] == ["llama-server"]
    assert c["args"] == [
        "--hf-repo", GGUF_REPO,
        "--hf-file", GGUF_FILE,
        "--alias", "llama",
        "--host", "0.0.0.0",
        "--port", "8080",
        "-ngl", "all",
        "--parallel", "4",
        "--kv-unified",
        "--metrics",
        "-c", "8192",
    ]  # fmt: skip
    assert c["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert plan.gpu.count == 1
    assert plan.gpu.estimate is not None and plan.gpu.estimate["quantization"] == "gguf Q4_K_M"
    assert plan.gpu.estimate["fits"] is True


def test_llamacpp_pvc_file_on_cpu_nodes() -> None:
    model = f"pvc://models/llama/{GGUF_FILE}"
    plan = make_plan(
        md(engine="llamacpp", model=model, quantization="gguf", gpu={"type": "cpu"}),
        PlatformConfig(),
        None,
    )
    pod = plan.children.deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "ghcr.io/ggml-org/llama.cpp:server"
    est = estimate_cpu(md(engine="llamacpp", model=model, gpu={"type": "cpu"}).spec)
    assert c["args"] == [
        "-m", f"/models/models/llama/{GGUF_FILE}",
        "--alias", GGUF_FILE,
        "--host", "0.0.0.0",
        "--port", "8080",
        "-ngl", "0",
        "--parallel", "4",
        "--kv-unified",
        "--metrics",
        "-c", "8192",
        "--threads", str(est.cpu),
    ]  # fmt: skip
    assert c["resources"] == {"requests": est.requests(), "limits": est.limits()}
    # Placed where no GPU label is, tolerating no GPU taint.
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}]}
    ]
    assert "tolerations" not in pod  # an empty list would read as drift after the API drops it
    assert plan.gpu.count == 0 and plan.gpu.estimate is not None
    assert plan.gpu.estimate["memoryRequest"] == est.requests()["memory"]


def test_cpu_requests_are_the_file_plus_its_kv_cache() -> None:
    # Llama 3.1 8B Q4_K_M: 8.03e9 x 4.90 / 8 = 4.92e9 B = 4.58 GiB (the file's size);
    # KV: 8192 tokens x 128 KiB = 1 GiB; overhead 0.5 + 512 x 128256 x 4 B = 0.74 GiB.
    est = estimate_cpu(llama_gguf(gpu={"type": "cpu"}).spec)
    assert est.weights_gib == pytest.approx(4.58, abs=0.01)
    assert est.kv_cache_gib == pytest.approx(1.0)
    assert est.overhead_gib == pytest.approx(0.745, abs=0.001)
    assert est.total_gib == pytest.approx(6.33, abs=0.01)
    assert est.requests() == {"cpu": "5", "memory": "6478Mi"}
    assert est.limits() == {"memory": "8098Mi"}
    # A longer context is KV cache only; a bigger type is file only.
    longer = estimate_cpu(llama_gguf(gpu={"type": "cpu"}, maxModelLen=32768).spec)
    assert longer.kv_cache_gib == pytest.approx(4.0)
    assert longer.weights_gib == est.weights_gib
    q8 = estimate_cpu(llama_gguf(gpu={"type": "cpu"}, ggufFile="x-Q8_0.gguf").spec)
    assert q8.weights_gib == pytest.approx(8.03e9 * 8.52 / 8 / 1024**3, rel=1e-6)
    assert q8.cpu == 8


def test_cpu_needs_a_known_model() -> None:
    spec = md(engine="llamacpp", model="pvc://m/mystery.gguf", gpu={"type": "cpu"})
    with pytest.raises(SpecError) as err:
        make_plan(spec, PlatformConfig(), None)
    assert err.value.reason == "UnknownModelSize" and err.value.field == "spec.modelInfo"


def test_llamacpp_quantization_matrix() -> None:
    engine = ENGINES["llamacpp"]
    assert dict(engine.quantizations) == {"none": None, "gguf": None}
    for q in set(QUANTIZATIONS) - {"none", "gguf"}:
        with pytest.raises(SpecError) as err:
            quantization_value(engine, q)
        assert err.value.reason == "UnsupportedQuantization"
        assert "llama.cpp loads GGUF files only" in err.value.message


# The whole matrix, as docs/api.md tables it.
MATRIX = {
    "vllm": {"none", "awq", "gptq", "fp8", "compressed-tensors"},
    "tgi": {"none", "awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors"},
    "sglang": {"none", "awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors"},
    "llamacpp": {"none", "gguf"},
}


def test_engine_quantization_matrix() -> None:
    assert set(API_ENGINES) == set(ENGINES) == set(MATRIX)
    for engine, accepted in MATRIX.items():
        assert set(ENGINES[engine].quantizations) == accepted, engine


def test_crd_refuses_the_matrix_and_the_new_engines_limits() -> None:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["properties"]["engine"]["enum"] == ["vllm", "tgi", "sglang", "llamacpp"]
    rules = " ".join(r["rule"] for r in schema["x-kubernetes-validations"])
    for phrase in (
        "self.engine == 'llamacpp' && has(self.quantization) && !(self.quantization in "
        "['none', 'gguf'])",
        "self.engine == 'sglang' && has(self.quantization) && self.quantization == 'gguf'",
        "self.engine == 'vllm' && has(self.quantization) && (self.quantization == 'gguf'",
        "self.gpu.type == 'cpu' && (!has(self.engine) || self.engine != 'llamacpp')",
        "!has(self.ggufFile)",
    ):
        assert phrase in rules, phrase


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"engine": "llamacpp", "model": GGUF_REPO}, "spec.ggufFile"),
        ({"engine": "vllm", "ggufFile": GGUF_FILE}, "spec.ggufFile"),
        ({"engine": "llamacpp", "model": GGUF_REPO, "ggufFile": "/abs.gguf"}, "spec.ggufFile"),
        ({"engine": "vllm", "gpu": {"type": "cpu"}}, "spec.gpu.type"),
        (
            {"engine": "llamacpp", "model": "pvc://m/a.gguf", "gpu": {"type": "cpu", "count": 2}},
            "spec.gpu.count",
        ),
        (
            {
                "engine": "llamacpp",
                "model": "pvc://m/a.gguf",
                "adapters": [{"name": "a", "source": "org/a"}],
            },
            "spec.adapters",
        ),
    ],
)
def test_operator_rechecks_what_cel_refuses(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        md(**spec)
    assert err.value.field == field


# --- GGUF types ---------------------------------------------------------------------


def test_gguf_types_from_llama_cpp() -> None:
    # Block layouts (ggml-common.h): bytes per block x 8 / weights per block.
    assert GGUF_TYPES["Q4_0"].block_bpw == 4.5  # 2 + 16 bytes / 32
    assert GGUF_TYPES["Q8_0"].block_bpw == 8.5  # 2 + 32 bytes / 32
    assert GGUF_TYPES["Q4_K_M"].block_bpw == 4.5  # 144 bytes / 256
    assert GGUF_TYPES["Q5_K_M"].block_bpw == 5.5  # 176 bytes / 256
    assert GGUF_TYPES["Q6_K"].block_bpw == 6.5625  # 210 bytes / 256
    # Whole files (quantize.cpp's Llama-3-8B sizes): the mixes keep some tensors higher.
    assert {n: t.file_bpw for n, t in GGUF_TYPES.items() if n in ("Q4_K_M", "Q5_K_M")} == {
        "Q4_K_M": 4.9,
        "Q5_K_M": 5.7,
    }
    assert GGUF_TYPES["Q6_K"].file_bpw == 6.57 and GGUF_TYPES["Q8_0"].file_bpw == 8.52
    assert GGUF_TYPES["F16"].bytes_per_param == 2.0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2.5-7b-instruct-q5_k_m.gguf", "Q5_K_M"),
        ("pvc://m/llama/model-Q8_0.gguf", "Q8_0"),
        ("mistral-7b-instruct-v0.3.Q6_K.gguf", "Q6_K"),
        ("phi-3-mini-4k-instruct-q4.gguf", None),
        ("model-f16.gguf", "F16"),
        ("Llama-3.2-3B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
        ("x-Q4_K.gguf", "Q4_K_M"),
        ("Q4_0-model.gguf", "Q4_0"),
    ],
)
def test_gguf_type_in_a_name(name: str, expected: str | None) -> None:
    found = gguf_type(name)
    assert (found.name if found else None) == expected


def test_gguf_file_sizes_llama_8b() -> None:
    # Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf is 4.92 GB; Q8_0 8.54 GB.
    for name, gb in (("x-Q4_K_M.gguf", 4.92), ("x-Q8_0.gguf", 8.55), ("x-Q6_K.gguf", 6.59)):
        fmt = weight_format("gguf", name)
        assert weight_bytes(LLAMA_31_8B, fmt) / 1e9 == pytest.approx(gb, abs=0.02), name


# --- metrics ------------------------------------------------------------------------


def test_autoscaler_reads_both_engines_queue() -> None:
    stats = EngineStats(slots=4, waiting=7, running=4, prompt_tokens=123, generation_tokens=9)
    for engine, body in (
        ("sglang", render_sglang(stats, "qwen")),
        ("llamacpp", render_llamacpp(stats)),
    ):
        parse_exposition(body)  # strict grammar
        reading = read_queue(body, ENGINES[engine].metric_names)
        assert isinstance(reading, QueueReading), engine
        assert (reading.waiting, reading.running) == (7.0, 4.0), engine


def test_sglang_exposition_shape() -> None:
    body = render_sglang(EngineStats(slots=2, waiting=1, running=2), "qwen")
    assert (
        "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.\n"
        "# TYPE sglang:num_queue_reqs gauge\n"
        'sglang:num_queue_reqs{engine_type="unified",model_name="qwen",pp_rank="0",'
        'tp_rank="0"} 1.0\n'
    ) in body
    assert 'sglang:prompt_tokens_total{model_name="qwen"} 0.0' in body


def test_llamacpp_exposition_shape() -> None:
    body = render_llamacpp(EngineStats(slots=4, waiting=3, running=4))
    assert (
        "# HELP llamacpp:requests_deferred Number of requests deferred\n"
        "# TYPE llamacpp:requests_deferred gauge\n"
        "llamacpp:requests_deferred 3\n"
    ) in body
    assert body.index("llamacpp:prompt_tokens_total") < body.index("llamacpp:requests_processing")
    assert [cpp_float(v) for v in (0, 3, 0.25, 12345678.0)] == ["0", "3", "0.25", "1.23457e+07"]


def test_cpu_accelerator_is_builtin_and_never_a_gpu_suggestion() -> None:
    cpu = BUILTIN_ACCELERATORS["cpu"]
    assert cpu.cpu_only and cpu.memory_gib == 0 and cpu.tolerations == ()
    config = PlatformConfig()
    assert config.accelerators.get("cpu") is cpu


def test_platform_cpu_pool() -> None:
    from openmodel.config import parse_config

    config = parse_config(
        {
            "accelerators": {
                "cpu": {
                    "cpuOnly": True,
                    "nodeLabel": "pool",
                    "nodeLabelValues": ["cpu-large"],
                    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "cpu"}],
                }
            }
        }
    )
    plan = make_plan(
        md(engine="llamacpp", model=f"pvc://m/{GGUF_FILE}", gpu={"type": "cpu"}), config, None
    )
    pod = plan.children.deployment["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "pool", "operator": "In", "values": ["cpu-large"]}
    ]
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "cpu"}]


@pytest.mark.parametrize(("engine", "health"), [("sglang", b""), ("llamacpp", b'{"status": "ok"}')])
def test_simulated_engine_serves_health_metrics_and_chat(engine: str, health: bytes) -> None:
    import asyncio

    import aiohttp

    from openmodel.simulator import start_simulator

    async def main() -> None:
        handle = await start_simulator(engine, "127.0.0.1", 0, slots=1, service_time=0.2)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{handle.url}/health") as r:
                    assert r.status == 200 and await r.read() == health
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                chats = [
                    asyncio.ensure_future(
                        session.post(f"{handle.url}/v1/chat/completions", json=body)
                    )
                    for _ in range(3)
                ]
                await asyncio.sleep(0.1)
                async with session.get(f"{handle.url}/metrics") as r:
                    text = await r.text()
                reading = read_queue(text, ENGINES[engine].metric_names)
                assert isinstance(reading, QueueReading), text
                assert (reading.waiting, reading.running) == (2.0, 1.0), text
                for response in await asyncio.gather(*chats):
                    assert response.status == 200
                    response.release()
        finally:
            await handle.stop()

    asyncio.run(main())


def test_cli_validate_and_size_on_cpu(tmp_path: Path) -> None:
    import io

    from openmodel.cli import main as cli_main

    examples = Path(__file__).resolve().parents[2] / "examples"
    out = io.StringIO()
    assert cli_main(["validate", "-f", str(examples / "llama8b-gguf-cpu.yaml")], out=out) == 0
    assert "valid (CPU only; requests cpu 5, memory 6478Mi: 6.3 GiB)" in out.getvalue()
    out = io.StringIO()
    assert cli_main(["size", "--offline", "--gpu", "cpu", GGUF_REPO], out=out) == 0
    assert "gguf Q4_K_M on CPU" in out.getvalue() and "memory 6478Mi" in out.getvalue()
