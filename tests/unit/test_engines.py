"""The engine registry and what the rest of the operator reads from it: the API's enum,
default images, spec rules answered from each engine's facts, memory knobs, adapter
listing, the drain answer."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from openmodel import api
from openmodel.api import SpecError
from openmodel.config import DEFAULT_ENGINE_IMAGES, PlatformConfig
from openmodel.engines import ENGINES, RULES, default_images, parse_model_deployment
from openmodel.engines.rules import RegistryRules
from openmodel.gateway.auth.access_control import AccessControl
from openmodel.gateway.proxy import Gateway
from openmodel.gateway.routes import Backend, Endpoint, RouteTable
from openmodel.reconcile.plan import make_plan
from openmodel.sizing.memory import engine_settings

READY = {"type": "Ready", "status": "True"}
HEAD = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "m", "namespace": "team-a"},
}


def body(**spec: Any) -> dict[str, Any]:
    return {**HEAD, "spec": {"model": "org/m", "gpu": {"type": "nvidia-h100-80gb"}, **spec}}


def test_the_apis_engine_enum_is_the_registry() -> None:
    assert tuple(ENGINES) == api.ENGINES
    assert api.DEFAULT_ENGINE in ENGINES
    for name, engine in ENGINES.items():
        assert engine.name == name


def test_default_images_are_each_engines_own() -> None:
    images = default_images()
    assert DEFAULT_ENGINE_IMAGES == images == PlatformConfig().engine_images
    for name, engine in ENGINES.items():
        assert images[name] == engine.image
        assert images.get(f"{name}-cpu") == engine.cpu_image
    assert set(images) == set(ENGINES) | {f"{n}-cpu" for n, e in ENGINES.items() if e.cpu_image}


def test_facts_stated_twice_in_an_engine_agree() -> None:
    for engine in ENGINES.values():
        # Sized as GGUF exactly when it loads GGUF files.
        assert (engine.gguf_file_flag is not None) == engine.memory.weights_always_gguf
        # The sizing's messages name the engine as people know it.
        assert engine.memory.label == engine.display_name
        # A CPU build only for an engine that runs on CPU.
        assert engine.cpu_image is None or engine.runs_on_cpu


@pytest.mark.parametrize(
    ("engine", "args", "fraction", "text", "context"),
    [
        ("vllm", [], 0.9, "vLLM --gpu-memory-utilization 0.90", None),
        (
            "tgi",
            ["--cuda-memory-fraction", "0.5"],
            0.475,
            "TGI --cuda-memory-fraction 0.50 x 0.95",
            None,
        ),
        ("sglang", ["--context-length", "4096"], 0.88, "SGLang --mem-fraction-static 0.88", 4096),
        ("sglang", ["--mem-fraction-static=0.7"], 0.7, "SGLang --mem-fraction-static 0.70", None),
        ("llamacpp", ["-c", "2048"], 0.95, "llama.cpp share 0.95", 2048),
        ("llamacpp", ["--ctx-size", "1024", "-c", "2048"], 0.95, "llama.cpp share 0.95", 1024),
    ],
)
def test_memory_knobs_read_each_engines_flags(
    engine: str, args: list[str], fraction: float, text: str, context: int | None
) -> None:
    settings = engine_settings(ENGINES[engine].memory, args, api.LoraSpec())
    assert settings.memory_fraction == pytest.approx(fraction)
    assert settings.fraction_text == text
    assert settings.max_model_len_arg == context
    # LoRA slots count only where the engine allocates them at start.
    assert (settings.lora is not None) == (engine in ("vllm", "sglang"))


@pytest.mark.parametrize(("engine", "one_byte"), [("vllm", "fp8"), ("sglang", "q8_0")])
def test_a_one_byte_kv_cache_halves_the_kv_bytes(engine: str, one_byte: str) -> None:
    memory = ENGINES[engine].memory
    assert engine_settings(memory, [memory.kv_cache_dtype_flag, one_byte]).kv_cache_bytes == 1
    assert engine_settings(memory).kv_cache_bytes == 2


def test_rules_come_from_the_engines_facts_not_their_names() -> None:
    """A registry where TGI streams from object stores and loads adapters from them:
    the same spec that is refused today passes, and the refusals of the others suggest it."""
    tgi = ENGINES["tgi"]
    assert tgi.adapters is not None
    capable = replace(
        tgi,
        streams_from_object_store=True,
        adapters=replace(tgi.adapters, object_store_sources=True),
        suggested=True,
    )
    rules = RegistryRules({**ENGINES, "tgi": capable})
    s3 = body(engine="tgi", model="s3://b/m", adapters=[{"name": "a", "source": "s3://b/a"}])
    with pytest.raises(SpecError) as err:
        api.parse_model_deployment(s3, RULES)
    assert err.value.reason == "UnsupportedAdapterSource"
    assert api.parse_model_deployment(s3, rules).spec.engine == "tgi"
    with pytest.raises(SpecError) as err:
        api.parse_model_deployment(body(engine="sglang", model="s3://b/m"), rules)
    assert "use engine vllm or tgi," in err.value.message


@pytest.mark.parametrize(
    ("spec", "field", "reason", "message"),
    [
        (
            {"engine": "tgi", "adapters": [{"name": "a", "source": "s3://b/a"}]},
            "spec.adapters[0].source",
            "UnsupportedAdapterSource",
            "engine 'tgi' cannot load adapters from s3:// or gs://; use engine vllm, a Hugging "
            "Face repo id or pvc://<claim>/<path>",
        ),
        (
            {"engine": "vllm", "ggufFile": "x.gguf"},
            "spec.ggufFile",
            "InvalidSpec",
            "is for engine 'llamacpp' only (spec.engine is 'vllm')",
        ),
        (
            {"engine": "llamacpp", "model": "org/m-GGUF"},
            "spec.ggufFile",
            "InvalidSpec",
            "is required with engine 'llamacpp' and a Hugging Face repo: the .gguf file in the "
            "repo (llama.cpp --hf-file), e.g. Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf; or give "
            "the file itself as spec.model pvc://<claim>/<path>.gguf",
        ),
        (
            {"engine": "sglang", "gpu": {"type": "cpu"}},
            "spec.gpu.type",
            "UnsupportedAccelerator",
            "'cpu' (CPU-only nodes) needs engine 'llamacpp' with a GGUF model; engine 'sglang' "
            "needs a GPU type",
        ),
        (
            {"engine": "llamacpp", "model": "pvc://c/m.gguf", "gpu": {"type": "cpu", "count": 2}},
            "spec.gpu.count",
            "InvalidSpec",
            "must be omitted (or 1) with gpu.type 'cpu': one process per replica",
        ),
        (
            {"engine": "sglang", "model": "gs://b/m"},
            "spec.model",
            "UnsupportedModelSource",
            "engine 'sglang' cannot stream weights from s3:// or gs://; use engine vllm, a "
            "Hugging Face repo id or a pvc:// URI",
        ),
        (
            {"engine": "llamacpp", "model": "pvc://c/m.gguf", "lora": {"maxRank": 8}},
            "spec.adapters",
            "UnsupportedAdapters",
            "engine 'llamacpp' serves no named LoRA adapters; use engine vllm or sglang",
        ),
    ],
)
def test_each_engine_rule_refuses_as_before(
    spec: dict[str, Any], field: str, reason: str, message: str
) -> None:
    with pytest.raises(SpecError) as err:
        parse_model_deployment(body(**spec))
    assert (err.value.field, err.value.reason, err.value.message) == (field, reason, message)


def test_an_engine_rule_keeps_its_place_among_the_other_checks() -> None:
    """The first refusal is the same as the CRD order had it: an adapter's engine rule
    before a later adapter's duplicate name; the CPU engine rule before the CPU count."""
    adapters = [{"name": "a", "source": "s3://b/a"}, {"name": "a", "source": "org/a"}]
    with pytest.raises(SpecError) as err:
        parse_model_deployment(body(engine="sglang", adapters=adapters))
    assert err.value.field == "spec.adapters[0].source"
    with pytest.raises(SpecError) as err:
        parse_model_deployment(body(engine="vllm", gpu={"type": "cpu", "count": 2}))
    assert err.value.field == "spec.gpu.type"


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_an_engine_lists_the_adapters_it_renders_at_start(engine: str) -> None:
    spec: dict[str, Any] = {"engine": engine}
    adapters = [{"name": "sql", "source": "pvc://loras/sql"}, {"name": "chat", "source": "o/c"}]
    if ENGINES[engine].adapters is not None:
        spec["adapters"] = adapters
    if ENGINES[engine].gguf_file_flag is not None:
        spec["model"] = "pvc://w/m.gguf"
    md = parse_model_deployment(body(**copy.deepcopy(spec), gpu={"type": "nvidia-l4", "count": 1}))
    deployment = make_plan(md, PlatformConfig(), None).children.deployment
    pod = deployment["spec"]["template"]
    started = ENGINES[engine].started_adapters(pod)
    support = ENGINES[engine].adapters
    if support is not None and support.runtime_api is None:
        assert started == {"sql", "chat"}
    else:
        assert started == frozenset()


def test_the_gateway_retries_on_the_drain_answer_of_the_backends_own_engine() -> None:
    refusal = ENGINES["vllm"].draining_refusal
    assert refusal is not None
    answer = b'{"error":{"message":"' + refusal + b'","code":500}}'
    running = {
        "metadata": {"name": "p"},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [READY]},
    }
    for name, engine in ENGINES.items():
        table = RouteTable()
        backend = Backend(("ns", "m"), "m", frozenset(), engine=name, port=engine.port)
        table.put_backend(backend, [running])
        [endpoint] = table.endpoints(backend.key)
        gateway = Gateway(table, PlatformConfig().gateway, AccessControl.off(CollectorRegistry()))
        retried = gateway._refused_unrun(backend, endpoint, answer)
        assert retried == (engine.draining_refusal is not None), name
        assert not gateway._refused_unrun(backend, endpoint, b'{"error":"out of memory"}')
        # A pod that left the table: never run, whatever the body.
        gone = Endpoint(pod="gone", host="10.0.0.2", port=engine.port)
        assert gateway._refused_unrun(backend, gone, b"")
