"""Embedding models and rerankers (spec.task embed, rerank): the task read from a
checkpoint's own files, the one written to status.task, each engine's switches for a
pooling model, the refusals, and the sizing of encoders (no KV cache) with the numbers
docs/sizing.md quotes for BGE-large, Qwen3-Embedding-8B and BGE-reranker-v2-m3."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import fake_hub
import pytest

from openmodel.accelerators import AcceleratorCatalog
from openmodel.api import SpecError
from openmodel.config import PlatformConfig
from openmodel.config.model_resolver import ModelResolverConfig
from openmodel.engines import ENGINES, parse_model_deployment
from openmodel.model_resolver.hub import HubClient
from openmodel.model_resolver.local import read_local
from openmodel.model_resolver.loop import resolve_once
from openmodel.model_resolver.state import Failed, ModelRef, Pending, Resolved
from openmodel.reconcile.plan import decided_task, make_plan
from openmodel.reconcile.status import Observation, build_status
from openmodel.sizing.checkpoint import (
    SENTENCE_TRANSFORMERS_FILES,
    checkpoint_task,
    read_checkpoint,
)
from openmodel.sizing.fit import resolve_gpu_count
from openmodel.sizing.memory import kv_bytes_per_token

DATA = Path(__file__).parent / "data" / "hf-configs"
CATALOG = AcceleratorCatalog()
BGE = "BAAI/bge-large-en-v1.5"
QWEN_EMBEDDING = "Qwen/Qwen3-Embedding-8B"
RERANKER = "BAAI/bge-reranker-v2-m3"


def config(repo: str) -> dict[str, Any]:
    return json.loads((DATA / (repo.replace("/", "--") + ".json")).read_text())  # type: ignore[no-any-return]


def body(**spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "team-a", "uid": "u-1", "generation": 1},
        "spec": {"model": BGE, "gpu": {"type": "nvidia-l4", "count": 1}},
    }
    out["spec"].update(spec)
    return out


def engine_args(**spec: Any) -> list[str]:
    plan = make_plan(parse_model_deployment(body(**spec)), PlatformConfig(), None)
    containers = plan.children.deployment["spec"]["template"]["spec"]["containers"]
    return [str(a) for a in containers[0]["args"]]


# ---------------------------------------------------------------------------
# The task a checkpoint's files tell
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architectures", "extra", "files", "task"),
    [
        (["BertModel"], {}, frozenset(), "embed"),
        (["XLMRobertaModel"], {}, frozenset(), "embed"),
        (["NomicBertModel"], {}, frozenset(), "embed"),
        (["XLMRobertaForSequenceClassification"], {"id2label": {"0": "LABEL_0"}}, frozenset(),
         "rerank"),
        (["BertForSequenceClassification"], {"num_labels": 1}, frozenset(), "rerank"),
        # Several labels: a classifier, which no task serves; the files do not tell.
        (["BertForSequenceClassification"], {"id2label": {"0": "NEG", "1": "POS"}},
         frozenset(), None),
        # Qwen3-Embedding: a causal LM's architecture, the sentence-transformers files.
        (["Qwen3ForCausalLM"], {}, frozenset({"modules.json"}), "embed"),
        (["Qwen3ForCausalLM"], {}, frozenset({"config_sentence_transformers.json"}), "embed"),
        # Qwen3-Reranker: a causal LM's architecture and no such file: spec.task says it.
        (["Qwen3ForCausalLM"], {}, frozenset({"tokenizer.json"}), "generate"),
        (["LlamaForCausalLM"], {}, frozenset(), "generate"),
        (["Qwen2VLForConditionalGeneration"], {}, frozenset(), "generate"),
        ([], {}, frozenset(), None),
    ],
)  # fmt: skip
def test_the_task_comes_from_the_architecture_and_the_repo_files(
    architectures: list[str], extra: dict[str, Any], files: frozenset[str], task: str | None
) -> None:
    assert checkpoint_task({"architectures": architectures, **extra}, files) == task


@pytest.mark.parametrize(
    ("repo", "files", "task", "encoder"),
    [
        (BGE, SENTENCE_TRANSFORMERS_FILES, "embed", True),
        (QWEN_EMBEDDING, SENTENCE_TRANSFORMERS_FILES, "embed", False),
        (RERANKER, frozenset(), "rerank", True),
        ("Qwen/Qwen3-8B", frozenset(), "generate", False),
    ],
)
def test_stored_checkpoints_read_as_their_task(
    repo: str, files: frozenset[str], task: str, encoder: bool
) -> None:
    checkpoint = read_checkpoint(config(repo), repo, files=files)
    assert checkpoint.task == task
    assert checkpoint.architecture.encoder_only is encoder


def test_an_encoder_keeps_no_kv_cache_and_float32_loads_at_16_bits() -> None:
    bge = read_checkpoint(config(BGE), BGE).architecture
    assert kv_bytes_per_token(bge, 1, 2) == 0
    # 335.1M parameters stored in float32 (1.34 GB), held at 2 bytes each.
    assert bge.checkpoint_weight_bytes == pytest.approx(335_141_888 * 2)


def test_a_pooling_decoder_counts_no_lm_head() -> None:
    embedder = read_checkpoint(
        config(QWEN_EMBEDDING), QWEN_EMBEDDING, files=frozenset({"modules.json"})
    )
    generator = read_checkpoint(config(QWEN_EMBEDDING), QWEN_EMBEDDING)
    lm_head = 151665 * 4096
    assert generator.parameters - embedder.parameters == lm_head
    assert embedder.parameters / 1e9 == pytest.approx(7.57, rel=0.01)  # the Hub's count


def test_the_resolver_reads_the_task_from_the_repo_file_list(tmp_path: Path) -> None:
    hub = fake_hub.FakeHub().start()
    try:
        files = {
            "config.json": json.dumps(config(QWEN_EMBEDDING)).encode(),
            "modules.json": b"[]",
            "config_sentence_transformers.json": b"{}",
        }
        hub.add_repo("acme/house-embedder", files)
        client = HubClient(hub.url, ModelResolverConfig(timeout_seconds=5))
        state = asyncio.run(resolve_once(client, ModelRef("acme/house-embedder"), 0))
        assert isinstance(state, Resolved), state
        assert state.checkpoint.task == "embed"
        plain = asyncio.run(resolve_once(client, ModelRef("Qwen/Qwen3-8B"), 0))
        assert isinstance(plain, Resolved) and plain.checkpoint.task == "generate"
    finally:
        hub.stop()
    # A local directory: the names beside config.json.
    (tmp_path / "config.json").write_text(json.dumps(config(BGE)))
    (tmp_path / "modules.json").write_text("[]")
    assert read_local(str(tmp_path)).files == frozenset({"config.json", "modules.json"})


# ---------------------------------------------------------------------------
# status.task: the decided task
# ---------------------------------------------------------------------------


def test_the_decided_task_spec_then_checkpoint_then_kept_then_generate() -> None:
    spec = parse_model_deployment(body()).spec
    embed_checkpoint = read_checkpoint(config(BGE), BGE)
    resolved = Resolved(ModelRef(BGE), "sha", embed_checkpoint)
    pending = Pending(ModelRef(BGE))
    failed = Failed(ModelRef(BGE), "ModelConfigTimeout", "slow")
    assert decided_task(spec, None) == "generate"
    assert decided_task(spec, resolved) == "embed"
    # Stated wins over the checkpoint.
    stated = parse_model_deployment(body(task="rerank")).spec
    assert decided_task(stated, resolved) == "rerank"
    # While the files are read again (or cannot be), the task decided before holds, so
    # the running engine is not rendered for another task in the meantime.
    assert decided_task(spec, pending, "embed") == "embed"
    assert decided_task(spec, failed, "rerank") == "rerank"
    assert decided_task(spec, pending, None) == "generate"
    assert decided_task(spec, pending, "bogus") == "generate"


def test_status_task_is_written_and_the_plan_renders_for_it() -> None:
    md = parse_model_deployment(body(model="pvc://models/bge"))
    plan = make_plan(md, PlatformConfig(), None, task="embed")
    assert plan.task == "embed"
    args = plan.children.deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--runner") + 1] == "pooling"
    obs = Observation(
        generation=1, name="m", label_selector="x", endpoint=None, desired_replicas=1,
        deployment=None, task=plan.task,
    )  # fmt: skip
    assert build_status(obs, None, "2026-12-05T00:00:00Z").status["task"] == "embed"


def test_a_checkpoint_task_the_engine_cannot_serve_is_a_condition_naming_spec_task() -> None:
    md = parse_model_deployment(body(engine="tgi"))
    resolved = Resolved(ModelRef(BGE), "sha", read_checkpoint(config(BGE), BGE))
    with pytest.raises(SpecError) as refused:
        make_plan(md, PlatformConfig(), None, model_config=resolved)
    assert refused.value.field == "spec.task"
    assert refused.value.reason == "UnsupportedTask"
    assert "read from the checkpoint" in refused.value.message
    assert "text-embeddings-inference" in refused.value.message


# ---------------------------------------------------------------------------
# The API: spec.task and its refusals at apply
# ---------------------------------------------------------------------------


def test_spec_task_is_optional_and_parsed() -> None:
    assert parse_model_deployment(body()).spec.task is None
    assert parse_model_deployment(body(task="embed")).spec.task == "embed"
    with pytest.raises(SpecError) as refused:
        parse_model_deployment(body(task="embedding"))
    assert refused.value.field == "spec.task"


@pytest.mark.parametrize("task", ["embed", "rerank"])
def test_a_pooling_task_on_tgi_is_refused_with_where_to_go(task: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_model_deployment(body(engine="tgi", task=task))
    e = refused.value
    assert e.field == "spec.task" and e.reason == "UnsupportedTask"
    assert "TEI" in e.message and "text-embeddings-inference" in e.message
    assert "vllm" in e.message  # an engine that can
    # generate stays fine on TGI.
    assert parse_model_deployment(body(engine="tgi", task="generate")).spec.task == "generate"


# ---------------------------------------------------------------------------
# Each engine's switches
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "convert"), [("embed", "embed"), ("rerank", "classify")])
def test_vllm_runs_a_pooling_runner_with_the_conversion(task: str, convert: str) -> None:
    args = engine_args(model="pvc://models/m", task=task)
    assert args[args.index("--runner") + 1] == "pooling"
    assert args[args.index("--convert") + 1] == convert
    assert args.count("--runner") == 1 and args.count("--convert") == 1


def test_generation_renders_as_before() -> None:
    for task in (None, "generate"):
        args = engine_args(model="pvc://models/m", **({"task": task} if task else {}))
        assert "--runner" not in args and "--convert" not in args
    sglang = engine_args(model="pvc://models/m", engine="sglang")
    assert "--is-embedding" not in sglang


@pytest.mark.parametrize("task", ["embed", "rerank"])
def test_sglang_serves_a_pooling_model_with_is_embedding(task: str) -> None:
    args = engine_args(model="pvc://models/m", engine="sglang", task=task)
    assert args.count("--is-embedding") == 1


@pytest.mark.parametrize(("task", "switch"), [("embed", "--embeddings"), ("rerank", "--reranking")])
def test_llamacpp_switches_and_a_batch_as_long_as_the_context(task: str, switch: str) -> None:
    args = engine_args(
        model="pvc://models/m.gguf", engine="llamacpp", task=task, maxModelLen=2048,
        quantization="gguf",
    )  # fmt: skip
    assert args.count(switch) == 1
    assert args[args.index("--ubatch-size") + 1] == "2048"
    assert args[args.index("--batch-size") + 1] == "2048"
    other = "--reranking" if switch == "--embeddings" else "--embeddings"
    assert other not in args


def test_every_engine_states_its_tasks() -> None:
    for name, engine in ENGINES.items():
        assert "generate" in engine.tasks, name
        assert engine.task_hint is None or engine.tasks != {"generate", "embed", "rerank"}


# ---------------------------------------------------------------------------
# Sizing an encoder: the numbers in docs/sizing.md
# ---------------------------------------------------------------------------

# (repo, files, accelerator) -> total GiB per GPU on one GPU, weights GiB, KV GiB.
SIZED = {
    (BGE, "nvidia-l4"): (2.3, 0.6, 0.0),
    (BGE, "nvidia-h100-80gb"): (2.3, 0.6, 0.0),
    (RERANKER, "nvidia-l4"): (2.7, 1.1, 0.0),
    (RERANKER, "nvidia-h100-80gb"): (2.7, 1.1, 0.0),
    (QWEN_EMBEDDING, "nvidia-l4"): (17.3, 14.1, 1.1),
    (QWEN_EMBEDDING, "nvidia-h100-80gb"): (17.3, 14.1, 1.1),
}
FILES = {BGE: SENTENCE_TRANSFORMERS_FILES, QWEN_EMBEDDING: SENTENCE_TRANSFORMERS_FILES,
         RERANKER: frozenset()}  # fmt: skip


@pytest.mark.parametrize(("repo", "gpu"), sorted(SIZED))
def test_pooling_models_fit_one_gpu_with_the_documented_numbers(repo: str, gpu: str) -> None:
    checkpoint = read_checkpoint(config(repo), repo, files=FILES[repo])
    spec = parse_model_deployment(body(model=repo, task=checkpoint.task, gpu={"type": gpu})).spec
    accelerator = CATALOG.get(gpu)
    assert accelerator is not None
    result = resolve_gpu_count(
        spec, accelerator, CATALOG, checkpoint=checkpoint, memory=ENGINES["vllm"].memory
    )
    est = result.estimate
    assert est is not None and est.fits and result.gpu_count == 1
    total, weights, kv = SIZED[(repo, gpu)]
    assert (round(est.total_gib, 1), round(est.weights_gib, 1), round(est.kv_cache_gib, 1)) == (
        total, weights, kv,
    )  # fmt: skip
    if checkpoint.architecture.encoder_only:
        # The engine chooses its own context; no KV cache to size one for.
        assert result.max_model_len is None
        assert "no KV cache" in est.summary()


def test_a_pooling_model_is_sized_without_the_sampler_and_lm_head() -> None:
    checkpoint = read_checkpoint(config(QWEN_EMBEDDING), QWEN_EMBEDDING)  # no ST files
    accelerator = CATALOG.get("nvidia-l4")
    assert accelerator is not None
    sized = {}
    for task in ("generate", "embed"):
        spec = parse_model_deployment(body(model=QWEN_EMBEDDING, task=task)).spec
        est = resolve_gpu_count(
            spec, accelerator, CATALOG, checkpoint=checkpoint, memory=ENGINES["vllm"].memory
        ).estimate
        assert est is not None
        sized[task] = est
    # The sampler: 256 sequences x 151665 x fp32 logits and probabilities.
    sampler = 256 * 151665 * 4 * 2 / 1024**3
    assert sized["generate"].overhead_gib - sized["embed"].overhead_gib == pytest.approx(sampler)
    lm_head = 151665 * 4096 * 2 / 1024**3
    assert sized["generate"].weights_gib - sized["embed"].weights_gib == pytest.approx(lm_head)


def test_examples_of_pooling_models_validate() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    for name, task in (("bge-embeddings.yaml", "embed"), ("bge-reranker.yaml", "rerank")):
        import yaml

        doc = yaml.safe_load((examples / name).read_text())
        md = parse_model_deployment(copy.deepcopy(doc))
        assert md.spec.task == task, name
