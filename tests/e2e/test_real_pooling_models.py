"""Embedding models and rerankers served for real through the operator (spec.task).

Two tiny random BERT models (real_engine/tiny_encoder.py: a BertModel with the
sentence-transformers files, and a BertForSequenceClassification with one label) on a
hostPath PV, each served by a real vLLM (CPU build) on a process node (type
nvidia-a10g), the command and args exactly as the operator rendered them for `task:
embed` and `task: rerank`. Asserted against the engine pods directly: Ready from vLLM's
own /health, status.task, the rendered pooling switches in the running command line,
/v1/embeddings vectors of the hidden size for a batch, /v1/rerank and /v1/score one
score per document, and what vLLM answers to an empty `input` list and to a chat
request (the facts the gateway's task routing relies on). Then the real llama-server
with `--embeddings` on a tiny GGUF decoder (real_engine/tiny_gguf.py), on a process
node the vLLM pods gave back.

vLLM starts twice in this module (~30 s and ~3 GiB each, the two at once on the two
process nodes), llama-server once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness import Cluster, NotYet, describe_namespace, wait_for
from harness.process_nodes import llama_server_root, vllm_env_ready
from openmodel_fixtures import GROUP, PLURAL, VERSION, OperatorProcess, condition, create_md, get_md
from real_engine.cluster_objects import engine_namespace, ready_pods
from real_engine.cpu import CPU_ARGS, CPU_ENV, START_TIMEOUT
from real_engine.fixtures import engine_env

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine]

ENCODER_SCRIPT = Path(__file__).resolve().parent / "real_engine" / "tiny_encoder.py"
TINY_GGUF_SCRIPT = Path(__file__).resolve().parent / "real_engine" / "tiny_gguf.py"
HIDDEN = 64  # tiny_encoder.HIDDEN and tiny_gguf.HIDDEN
VLLM_PORT = 8000
LLAMA_PORT = 8080
EMBEDDER, RERANKER, LLAMA_EMBEDDER = "tiny-embed", "tiny-rerank", "tiny-gguf-embed"


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any


def post(url: str, body: dict[str, Any], timeout: float = 60) -> Answer:
    """The engine's status and JSON body, errors included (they are facts here too)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, json.loads(response.read()))
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return Answer(e.code, json.loads(raw))
        except ValueError:
            return Answer(e.code, raw.decode(errors="replace"))


def cmdline(pod: client.V1Pod) -> list[str]:
    pid = int(pod.status.container_statuses[0].container_id.removeprefix("process://"))
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def md_body(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"gpu": {"type": "nvidia-a10g", "count": 1}, **spec},
    }


def vllm_spec(model: str, task: str) -> dict[str, Any]:
    return {
        "model": model,
        "engine": "vllm",
        "task": task,
        "servedModelName": "tiny",
        "args": CPU_ARGS,
        "env": CPU_ENV,
    }


@dataclass(frozen=True)
class Served:
    name: str
    pod: client.V1Pod
    md: dict[str, Any]

    @property
    def base(self) -> str:
        return f"http://{self.pod.status.pod_ip}:{VLLM_PORT}"


@pytest.fixture(scope="module")
def encoders(vllm_python: Path) -> Iterator[Path]:
    """`<tmp>/models/{embedder,reranker}`, written once."""
    root = Path(tempfile.mkdtemp(prefix="openmodel-tiny-encoders-"))
    out = root / "models"
    done = subprocess.run(
        [str(vllm_python), str(ENCODER_SCRIPT), str(out)],
        capture_output=True, text=True, timeout=300, env=engine_env(), check=False,
    )  # fmt: skip
    if done.returncode != 0 or not (out / "reranker" / "config.json").is_file():
        pytest.fail(f"tiny_encoder.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    yield out
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pooling_namespace(
    api_client: client.ApiClient, cluster: Cluster, encoders: Path
) -> Iterator[str]:
    with engine_namespace(api_client, cluster, "e2e-real-pooling", encoders / "embedder") as ns:
        yield ns


def wait_ready(api: client.ApiClient, ns: str, name: str, timeout: float) -> Served:
    core = client.CoreV1Api(api)

    def ready() -> Served | NotYet:
        md = get_md(api, ns, name)
        degraded = condition(md, "Degraded")
        if degraded.get("status") == "True":
            raise AssertionError(f"{name} cannot start: {degraded}")
        pods = ready_pods(core, ns, name)
        if condition(md, "Ready").get("status") == "True" and pods:
            return Served(name, pods[0], md)
        return NotYet(md.get("status"))

    return wait_for(ready, timeout, lambda: describe_namespace(api, ns), interval=1)


@pytest.fixture(scope="module")
def served(
    api_client: client.ApiClient, pooling_namespace: str, operator: OperatorProcess
) -> dict[str, Served]:
    """The embedder and the reranker, each one real vLLM, started together."""
    ns = pooling_namespace
    create_md(api_client, md_body(ns, EMBEDDER, vllm_spec("pvc://tiny/embedder", "embed")))
    create_md(api_client, md_body(ns, RERANKER, vllm_spec("pvc://tiny/reranker", "rerank")))
    return {name: wait_ready(api_client, ns, name, START_TIMEOUT) for name in (EMBEDDER, RERANKER)}


@pytest.mark.parametrize(
    ("name", "task", "convert"), [(EMBEDDER, "embed", "embed"), (RERANKER, "rerank", "classify")]
)
def test_the_engine_runs_the_pooling_runner_and_status_says_the_task(
    served: dict[str, Served], name: str, task: str, convert: str
) -> None:
    engine = served[name]
    assert engine.md["status"]["task"] == task
    argv = cmdline(engine.pod)
    assert argv[argv.index("--runner") + 1] == "pooling", argv
    assert argv[argv.index("--convert") + 1] == convert, argv
    # Ready came from the same /health probe a generative vLLM answers.
    with urllib.request.urlopen(f"{engine.base}/health", timeout=10) as response:
        assert response.status == 200


def test_embeddings_for_a_batch_are_vectors_of_the_hidden_size(served: dict[str, Served]) -> None:
    batch = ["the cat sat", "a dog runs in the park", "red sky at night", "one"]
    answer = post(f"{served[EMBEDDER].base}/v1/embeddings", {"model": "tiny", "input": batch})
    assert answer.status == 200, answer
    data = answer.body["data"]
    assert [d["index"] for d in data] == list(range(len(batch)))
    assert all(len(d["embedding"]) == HIDDEN for d in data), [len(d["embedding"]) for d in data]
    assert answer.body["usage"]["prompt_tokens"] > len(batch)
    # CLS pooling then normalisation (the sentence-transformers modules): unit vectors.
    norms = [sum(x * x for x in d["embedding"]) ** 0.5 for d in data]
    assert all(abs(n - 1) < 1e-3 for n in norms), norms


def test_what_the_embedder_answers_to_an_empty_input_and_to_a_chat(
    served: dict[str, Served],
) -> None:
    base = served[EMBEDDER].base
    empty = post(f"{base}/v1/embeddings", {"model": "tiny", "input": []})
    print(f"empty input: {empty.status} {json.dumps(empty.body)}")
    assert empty.status == 400, empty
    assert empty.body["error"]["code"] == 400 and empty.body["error"]["message"], empty
    chat = post(f"{base}/v1/chat/completions",
                {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    print(f"chat to the embedder: {chat.status} {json.dumps(chat.body)}")
    assert chat.status == 404, chat  # the pooling runner serves no generation route


def test_rerank_and_score_give_one_score_per_document(served: dict[str, Served]) -> None:
    base = served[RERANKER].base
    documents = ["the dog", "a cat sat on the mat", "red sky", "people in the city"]
    rerank = post(f"{base}/v1/rerank", {"model": "tiny", "query": "a cat", "documents": documents})
    assert rerank.status == 200, rerank
    results = rerank.body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(documents)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True), scores  # best first
    assert all(0 <= s <= 1 for s in scores), scores  # one label, through a sigmoid
    score = post(f"{base}/v1/score",
                 {"model": "tiny", "text_1": "a cat", "text_2": documents})  # fmt: skip
    assert score.status == 200, score
    assert [d["index"] for d in score.body["data"]] == list(range(len(documents)))
    # The same model scored the same pairs the same way through both routes.
    by_index = {r["index"]: r["relevance_score"] for r in results}
    for d in score.body["data"]:
        assert d["score"] == pytest.approx(by_index[d["index"]], abs=1e-5)
    empty = post(f"{base}/v1/rerank", {"model": "tiny", "query": "a cat", "documents": []})
    print(f"empty documents: {empty.status} {json.dumps(empty.body)}")
    assert empty.status == 400, empty


@pytest.fixture(scope="module")
def tiny_gguf(encoders: Path) -> Path:
    """The tiny GGUF decoder beside the encoders, so the same claim serves it
    (`pvc://tiny/tiny.gguf`)."""
    root = llama_server_root()
    if not vllm_env_ready(root) or not (root / "bin" / "llama-server").is_file():
        pytest.fail(f"llama-server is not built at {root}", pytrace=False)
    out = encoders / "tiny.gguf"
    done = subprocess.run(
        [str(root / "py" / "bin" / "python"), str(TINY_GGUF_SCRIPT), str(root / "gguf-py"),
         str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not out.is_file():
        pytest.fail(f"tiny_gguf.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out.chmod(0o644)
    return out


def test_llama_server_serves_embeddings_with_its_own_switch(
    api_client: client.ApiClient,
    pooling_namespace: str,
    served: dict[str, Served],
    tiny_gguf: Path,
    operator: OperatorProcess,
) -> None:
    ns = pooling_namespace
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    # The process nodes hold one engine each: the vLLM pods give theirs back first.
    for name in served:
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

    def freed() -> bool | NotYet:
        left = [p.metadata.name for p in core.list_namespaced_pod(ns).items]
        return not left or NotYet(left)

    wait_for(freed, 90, lambda: describe_namespace(api_client, ns))
    model = f"pvc://tiny/{tiny_gguf.name}"
    create_md(
        api_client,
        md_body(ns, LLAMA_EMBEDDER, {
            "model": model, "engine": "llamacpp", "quantization": "gguf", "task": "embed",
            "servedModelName": "tiny", "maxModelLen": 1024,
            # The tiny GGUF is a decoder that names no pooling of its own.
            "args": ["--pooling", "mean"],
        }),
    )  # fmt: skip
    engine = wait_ready(api_client, ns, LLAMA_EMBEDDER, 120)
    assert engine.md["status"]["task"] == "embed"
    argv = cmdline(engine.pod)
    assert "--embeddings" in argv and argv[argv.index("--ubatch-size") + 1] == "1024", argv
    base = f"http://{engine.pod.status.pod_ip}:{LLAMA_PORT}"
    batch = ["the", "in the", "he the in"]
    answer = post(f"{base}/v1/embeddings", {"model": "tiny", "input": batch})
    assert answer.status == 200, answer
    assert [len(d["embedding"]) for d in answer.body["data"]] == [HIDDEN] * len(batch)
