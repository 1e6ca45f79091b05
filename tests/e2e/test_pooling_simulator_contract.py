"""The simulated pooling engines against the real vLLM 0.32 (CPU build), and the gateway
in front of the real ones.

Two tiny random BERT encoders made here (real_engine/tiny_encoder.py): an embedding
model (`BertModel`, `--runner pooling`) and a cross-encoder reranker
(`BertForSequenceClassification`, one label). Each real engine starts once, for the
module (two `vllm serve` processes on loopback, ~30 s and ~1 GiB each, at the same
time). Checked:

- the same requests to the real engine and to the simulator of the same task get the
  same status and the same structure (keys, their order, value types; never the
  numbers), refusals the same message: an empty embeddings `input`, empty documents;
- each serves the paths the other does (404 where the real one has no route);
- every input (query-document pair) is one request inside the engine (the finished
  counter), the queue gauges the operator reads are exported in the simulator's shape;
- through the gateway (a routes file naming the real engines): the official OpenAI SDK
  gets vectors of the model's hidden size for a batch; rerank and score one score per
  document; a chat to the embedding model the gateway's 400 naming its task; an empty
  `input` the engine's own 400, unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from openmodel.simulator.server import SimulatorHandle, start_simulator

from harness import NotYet, wait_for
from harness.operator import ChildProcess, free_port, spawn, wait_until_answering
from real_engine.cpu import START_TIMEOUT
from real_engine.fixtures import engine_env
from real_engine.metrics_contract import compare_families, families, scrape

pytestmark = pytest.mark.real_engine

# The served names: the gateway routes both by name, so they differ.
SERVED = {"embed": "tiny-embed", "rerank": "tiny-rerank"}
HIDDEN = 64  # tiny_encoder.HIDDEN (the tiny Llama's), the embeddings' length
ENCODER_SCRIPT = Path(__file__).resolve().parent / "real_engine" / "tiny_encoder.py"
DOCS = ["a dog", "the cat sat", "blue sky"]


@dataclass
class Engine:
    task: str
    url: str
    process: ChildProcess


def post(url: str, body: Any, timeout: float = 60) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except json.JSONDecodeError:
            return e.code, text.decode(errors="replace")


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys in order and value types, not the values
    (lists by their first item, a list of numbers as one)."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return ["list", shape(value[0]) if value else None]
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


@pytest.fixture(scope="module")
def encoders(vllm_python: Path) -> Iterator[dict[str, Path]]:
    root = Path(tempfile.mkdtemp(prefix="openmodel-tiny-encoders-"))
    done = subprocess.run(
        [str(vllm_python), str(ENCODER_SCRIPT), str(root)],
        capture_output=True, text=True, timeout=300, env=engine_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    made = {"embed": root / "embedder", "rerank": root / "reranker"}
    yield made
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def real_engines(
    encoders: dict[str, Path], vllm_env: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Engine]]:
    """Both real engines, started together, once."""
    logs = tmp_path_factory.mktemp("pooling-engines")
    env = {
        **engine_env(),
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    engines: dict[str, Engine] = {}
    try:
        for task, model_dir in encoders.items():
            port = free_port()
            argv = [str(vllm_env / "bin" / "vllm"), "serve", str(model_dir),
                    "--served-model-name", SERVED[task], "--host", "127.0.0.1", "--port", str(port),
                    "--runner", "pooling", "--enforce-eager", "--dtype", "float32"]  # fmt: skip
            child = ChildProcess(spawn(argv, env, logs / f"{task}.log"), logs / f"{task}.log")
            engines[task] = Engine(task, f"http://127.0.0.1:{port}", child)

        def up() -> bool | NotYet:
            for engine in engines.values():
                if not engine.process.alive():
                    raise AssertionError(f"vllm ({engine.task}) exited:\n"
                                         f"{engine.process.log_tail()}")  # fmt: skip
                try:
                    with urllib.request.urlopen(f"{engine.url}/health", timeout=2) as r:
                        assert r.status == 200
                except (urllib.error.URLError, ConnectionError) as e:
                    return NotYet(f"{engine.task}: {e}")
            return True

        wait_for(up, START_TIMEOUT, "both real pooling engines to answer /health")
        yield engines
    finally:
        for engine in engines.values():
            engine.process.stop()
        for engine in engines.values():
            sys.stderr.write(f"vllm {engine.task} log: {engine.process.log_path}\n")


def with_simulator(task: str, requests: list[tuple[str, Any]]) -> list[tuple[int, Any]]:
    """The answers of a simulated engine of `task` to `requests` (path, body)."""

    async def run() -> list[tuple[int, Any]]:
        sim: SimulatorHandle = await start_simulator(
            "vllm", "127.0.0.1", 0, service_time=0, model=SERVED[task], task=task
        )
        try:
            return [
                await asyncio.to_thread(post, f"{sim.url}{path}", body) for path, body in requests
            ]
        finally:
            await sim.stop()

    return asyncio.run(run())


def contract_requests(task: str) -> list[tuple[str, Any]]:
    model = SERVED[task]
    rerank = {"model": model, "query": "the cat", "documents": DOCS}
    score = {"model": model, "text_1": "the cat", "text_2": DOCS[:2]}
    return [
        ("/v1/rerank", rerank),
        ("/rerank", {**rerank, "top_n": 2}),
        ("/v2/rerank", rerank),
        ("/v1/score", score),
        ("/score", {"model": model, "queries": "the cat", "documents": DOCS[:2]}),
        ("/v1/rerank", {**rerank, "documents": []}),
        ("/v1/score", {**score, "text_2": []}),
        ("/v1/embeddings", {"model": model, "input": ["hello world", "the cat"]}),
        ("/v1/embeddings", {"model": model, "input": "hi", "encoding_format": "base64"}),
        ("/v1/embeddings", {"model": model, "input": []}),
        ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"model": model, "prompt": "hi"}),
    ]


@pytest.mark.parametrize("task", ["embed", "rerank"])
def test_the_simulator_answers_as_the_real_pooling_engine(
    real_engines: dict[str, Engine], task: str
) -> None:
    engine = real_engines[task]
    asked = contract_requests(task)
    real = [post(f"{engine.url}{path}", body) for path, body in asked]
    simulated = with_simulator(task, asked)
    problems = []
    for (path, body), (real_status, real_body), (sim_status, sim_body) in zip(
        asked, real, simulated, strict=True
    ):
        what = f"{path} {json.dumps(body)[:80]}"
        if real_status != sim_status:
            problems.append(f"{what}: {real_status} (real) vs {sim_status} (simulator)")
        elif real_status == 400:
            if real_body != sim_body:
                problems.append(f"{what}: {real_body} (real) vs {sim_body} (simulator)")
        elif real_status == 200 and shape(real_body) != shape(sim_body):
            problems.append(f"{what}: {shape(real_body)} (real) vs {shape(sim_body)} (sim)")
    assert not problems, "\n".join(problems)
    # What the issue records: the real engine's answer to an empty `input` list.
    if task == "embed":
        empty = ("/v1/embeddings", {"model": SERVED[task], "input": []})
        status, body = real[asked.index(empty)]
        print(f"\nreal vLLM, /v1/embeddings with input []: {status} {json.dumps(body)}")


def test_each_input_is_one_engine_request_and_the_queue_gauges_are_the_simulators(
    real_engines: dict[str, Engine],
) -> None:
    for task, engine in real_engines.items():
        before = stopped(scrape(f"{engine.url}/metrics"))
        four = ["one", "two", "three", "four"]
        if task == "embed":
            asked = ("/v1/embeddings", {"model": SERVED[task], "input": four})
        else:
            asked = ("/v1/rerank", {"model": SERVED[task], "query": "q", "documents": four})
        status, _ = post(f"{engine.url}{asked[0]}", asked[1])
        assert status == 200
        text = scrape(f"{engine.url}/metrics")
        assert stopped(text) == before + 4, task
        real = families(text)
        for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            assert real[gauge].type == "gauge", (task, gauge)
        problems = compare_families(text, "vllm", task)
        assert not problems, f"{task}:\n" + "\n".join(problems)


def stopped(text: str) -> float:
    """vllm:request_success_total{finished_reason="stop"}: requests finished in full."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "vllm:request_success_total"
                    and sample.labels.get("finished_reason") == "stop"):  # fmt: skip
                return float(sample.value)
    raise AssertionError("no vllm:request_success_total{finished_reason=stop}")


@pytest.fixture(scope="module")
def gateway_to_real(
    real_engines: dict[str, Engine], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The gateway process with a routes file naming the real engines by their served
    names; authentication off (no cluster here)."""
    work = tmp_path_factory.mktemp("pooling-gateway")
    models = [
        {"name": name, "namespace": "pooling", "hosts": ["127.0.0.1"], "task": task,
         "port": int(real_engines[task].url.rsplit(":", 1)[1])}
        for task, name in SERVED.items()
    ]  # fmt: skip
    (work / "routes.yaml").write_text(yaml.safe_dump({"models": models}))
    (work / "config.yaml").write_text(yaml.safe_dump({"gateway": {"auth": {"mode": "off"}}}))
    port = free_port()
    env = {**os.environ, "OPENMODEL_CONFIG": str(work / "config.yaml"), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "openmodel.gateway", "--host", "127.0.0.1", "--port",
            str(port), "--metrics-port", "0", "--routes", str(work / "routes.yaml")]  # fmt: skip
    child = ChildProcess(spawn(argv, env, work / "gateway.log"), work / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    wait_until_answering(child, f"{url}/readyz", "gateway")
    yield url
    child.stop()


def test_the_real_pooling_engines_through_the_gateway(
    real_engines: dict[str, Engine], gateway_to_real: str
) -> None:
    sdk = openai.OpenAI(base_url=f"{gateway_to_real}/v1", api_key="unused", max_retries=0)
    texts = ["hello world", "the cat sat on the mat", "blue sky", "one"]
    answer = sdk.embeddings.create(model=SERVED["embed"], input=texts)
    assert [d.index for d in answer.data] == [0, 1, 2, 3]
    assert {len(d.embedding) for d in answer.data} == {HIDDEN}
    assert answer.usage.prompt_tokens >= len(texts)
    floats = sdk.embeddings.create(model=SERVED["embed"], input=texts[:1], encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(answer.data[0].embedding, abs=1e-6)

    rerank = {"model": SERVED["rerank"], "query": "the cat", "documents": DOCS}
    status, ranked = post(f"{gateway_to_real}/v1/rerank", rerank)
    assert status == 200, ranked
    assert sorted(r["index"] for r in ranked["results"]) == [0, 1, 2]
    score = {"model": SERVED["rerank"], "text_1": "the cat", "text_2": DOCS}
    status, scored = post(f"{gateway_to_real}/v1/score", score)
    assert status == 200, scored
    assert [d["index"] for d in scored["data"]] == [0, 1, 2]

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(
            model=SERVED["embed"], messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.body["code"] == "wrong_task"  # type: ignore[index]
    assert "(task: embed)" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model=SERVED["rerank"], input="hi")
    assert "(task: rerank)" in refused.value.message

    # An empty batch: the engine's own 400, passed through unchanged.
    empty = {"model": SERVED["embed"], "input": []}
    direct = post(f"{real_engines['embed'].url}/v1/embeddings", empty)
    through = post(f"{gateway_to_real}/v1/embeddings", empty)
    assert through[0] == direct[0] == 400
    assert through[1]["error"]["message"] == direct[1]["error"]["message"]
