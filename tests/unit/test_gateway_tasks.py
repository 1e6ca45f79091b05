"""The gateway and a model's task: embeddings, rerank and score routed by `model` to
pooling engines (simulated, in vLLM 0.32's shapes), a request its model's task does not
serve refused with a 400 naming the task before any hold, limit or engine call, and the
engine's own 400 (an empty `input`) passed through."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from openmodel.config import parse_config
from openmodel.gateway.auth.access_control import AccessControl
from openmodel.gateway.limits.reservation import reserve_tokens
from openmodel.gateway.proxy import Gateway
from openmodel.gateway.routes import Backend, RouteTable, backend_from
from openmodel.gateway.static import RoutesFileError, load_static_routes
from openmodel.gateway.tasks import path_task, task_of
from openmodel.simulator.server import SimulatorHandle, start_simulator

T = TypeVar("T")

NAMESPACE = "team-a"


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout=30)

    return asyncio.run(bounded())


def md_body(spec_task: str | None = None, status_task: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "bge", "namespace": NAMESPACE},
        "spec": {"model": "BAAI/bge-large-en-v1.5", "gpu": {"type": "nvidia-l4"}},
    }
    if spec_task is not None:
        body["spec"]["task"] = spec_task
    if status_task is not None:
        body["status"] = {"task": status_task}
    return body


@pytest.mark.parametrize(
    ("spec_task", "status_task", "task"),
    [
        (None, None, "generate"),
        ("embed", None, "embed"),
        (None, "rerank", "rerank"),  # read from the checkpoint by the operator
        ("generate", "embed", "embed"),  # status is what the operator decided
    ],
)
def test_the_task_is_status_then_spec_then_generate(
    spec_task: str | None, status_task: str | None, task: str
) -> None:
    body = md_body(spec_task, status_task)
    assert task_of(body) == task
    backend = backend_from(body)
    assert backend is not None and backend.task == task


def test_each_path_belongs_to_one_task() -> None:
    assert path_task("/v1/chat/completions") == path_task("/v1/completions") == "generate"
    assert path_task("/v1/embeddings") == "embed"
    assert {path_task(p) for p in ("/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score")} \
        == {"rerank"}  # fmt: skip
    assert path_task("/v1/models") is None


def test_pooling_requests_reserve_no_completion_and_estimate_every_text() -> None:
    rerank = {"query": "abcd", "documents": ["efgh", "ijkl"], "max_tokens": 99}
    # '"abcd"' is 6 bytes (2 tokens), '["efgh","ijkl"]' 15 (4): no completion reserved.
    assert reserve_tokens("/v1/rerank", rerank, 1024) == 2 + 4
    assert reserve_tokens("/score", {"text_1": "abcd", "text_2": "efgh"}, 1024) == 2 + 2
    assert reserve_tokens("/v1/embeddings", {"input": ["abcdefgh"]}, 1024) == 3


def test_a_routes_file_takes_a_task_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("models:\n  - {name: bge, hosts: [127.0.0.1], task: embed}\n")
    table = RouteTable()
    load_static_routes(routes, table)
    route = table.route("bge")
    assert route is not None and route.backend.task == "embed"
    routes.write_text("models:\n  - {name: bge, hosts: [127.0.0.1], task: classify}\n")
    with pytest.raises(RoutesFileError, match="`task` must be one of generate, embed, rerank"):
        load_static_routes(routes, RouteTable())


# --- through the gateway, to simulated engines ---


@dataclass
class Running:
    gateway: Gateway
    url: str
    metrics_url: str
    session: aiohttp.ClientSession
    engines: dict[str, SimulatorHandle]

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.session.post(self.url + path, data=json.dumps(body).encode()) as r:
            return r.status, await r.json()

    async def metrics(self) -> str:
        async with self.session.get(self.metrics_url + "/metrics") as r:
            return await r.text()


async def listening(runner: web.AppRunner) -> str:
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def gateway_with_models(limits: dict[str, Any] | None = None) -> AsyncIterator[Running]:
    """Three models, one engine each: `chat` (generate), `bge` (embed), `rank` (rerank);
    and `cold` (embed) at zero replicas."""
    engines: dict[str, SimulatorHandle] = {}
    table = RouteTable()
    try:
        for i, (name, task) in enumerate((("chat", "generate"), ("bge", "embed"),
                                          ("rank", "rerank"))):  # fmt: skip
            sim = await start_simulator(
                "vllm", f"127.0.0.{i + 2}", 0, service_time=0, model=name, task=task
            )
            engines[name] = sim
            pod = {"metadata": {"name": f"{name}-0"}, "status": {
                "phase": "Running", "podIP": sim.host,
                "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
            table.put_backend(
                Backend((NAMESPACE, name), name, frozenset(), "vllm", sim.port, task=task), [pod]
            )
        table.put_backend(Backend((NAMESPACE, "cold"), "cold", frozenset(), "vllm", 8000,
                                  task="embed"))  # fmt: skip
        config = parse_config({"gateway": {"limits": limits}} if limits else {}).gateway
        gateway = Gateway(table, config, AccessControl.off(CollectorRegistry()))
        gateway.ready = True
        runner = web.AppRunner(gateway.application(), handler_cancellation=True)
        monitoring = web.AppRunner(gateway.monitoring_application())
        url, metrics_url = await listening(runner), await listening(monitoring)
        try:
            async with aiohttp.ClientSession() as session:
                yield Running(gateway, url, metrics_url, session, engines)
        finally:
            await runner.cleanup()
            await monitoring.cleanup()
    finally:
        for sim in engines.values():
            await sim.stop()


def usage_prompt_tokens(text: str, model: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "openmodel_gateway_usage_prompt_tokens_total"
                    and sample.labels["model"] == model):  # fmt: skip
                return float(sample.value)
    raise AssertionError(f"no usage for {model} in {text}")


def test_embeddings_rerank_and_score_reach_their_models_and_count_usage() -> None:
    async def scenario() -> None:
        async with gateway_with_models() as gw:
            status, embedded = await gw.post(
                "/v1/embeddings", {"model": "bge", "input": ["hello world", "hi"]}
            )
            assert status == 200, embedded
            assert len(embedded["data"]) == 2 and embedded["usage"]["prompt_tokens"] == 3
            docs = ["a dog", "the cat sat"]
            for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
                status, ranked = await gw.post(
                    path, {"model": "rank", "query": "the cat", "documents": docs}
                )
                assert status == 200, (path, ranked)
                assert sorted(r["index"] for r in ranked["results"]) == [0, 1]
            for path in ("/v1/score", "/score"):
                status, scored = await gw.post(
                    path, {"model": "rank", "text_1": "the cat", "text_2": docs}
                )
                assert status == 200, (path, scored)
                assert [d["index"] for d in scored["data"]] == [0, 1]
            assert gw.engines["bge"].stats.succeeded == 2
            assert gw.engines["rank"].stats.succeeded == 5 * 2
            text = await gw.metrics()
        # The engines' usage: 3 for the embeddings; each pair 2 + (2 or 3) words.
        for model, prompt in (("bge", 3), ("rank", 5 * (4 + 5))):
            assert usage_prompt_tokens(text, model) == prompt

    run(scenario)


@pytest.mark.parametrize(
    ("path", "model", "task", "serves"),
    [
        ("/v1/chat/completions", "bge", "embed", "/v1/embeddings"),
        ("/v1/completions", "rank", "rerank", "/v1/rerank"),
        ("/v1/embeddings", "chat", "generate", "/v1/chat/completions"),
        ("/v1/embeddings", "rank", "rerank", "/v1/score"),
        ("/v1/rerank", "bge", "embed", "/v1/embeddings"),
        ("/v1/score", "chat", "generate", "/v1/completions"),
        # At zero replicas: refused at once, not held (nothing wakes it up).
        ("/v1/chat/completions", "cold", "embed", "/v1/embeddings"),
    ],
)
def test_a_path_the_models_task_does_not_serve_gets_a_400_naming_the_task(
    path: str, model: str, task: str, serves: str
) -> None:
    async def scenario() -> None:
        limits = {"perIdentity": {"requestsPerMinute": 1}}
        async with gateway_with_models(limits) as gw:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}],
                    "input": "hi", "prompt": "hi", "query": "q", "documents": ["d"]}  # fmt: skip
            status, answer = await gw.post(path, body)
            assert status == 400, answer
            error = answer["error"]
            assert error["code"] == "wrong_task" and error["param"] == "model"
            assert error["type"] == "invalid_request_error"
            message = error["message"]
            assert f"`{model}`" in message and f"(task: {task})" in message, message
            assert serves in message and f"not {path}" in message, message
            assert all(sim.stats.requests == 0 for sim in gw.engines.values())
            assert all(m["held"] == 0 for m in gw.gateway.demand()["models"])
            # Not charged: the one request a minute is still there.
            right = {"bge": "/v1/embeddings", "cold": None, "rank": "/v1/score",
                     "chat": "/v1/completions"}[model]  # fmt: skip
            if right is not None:
                status, answer = await gw.post(right, {**body, "text_1": "q", "text_2": "d"})
                assert status == 200, answer
            assert 'reason="wrong_task"' in await gw.metrics()

    run(scenario)


def test_an_empty_input_gets_the_engines_own_400() -> None:
    async def scenario() -> None:
        async with gateway_with_models() as gw:
            status, answer = await gw.post("/v1/embeddings", {"model": "bge", "input": []})
            assert status == 400
            assert answer["error"]["message"] == "You must pass at least one prompt"
            assert answer["error"]["type"] == "BadRequestError"  # the engine's, unchanged
            status, answer = await gw.post(
                "/v1/rerank", {"model": "rank", "query": "q", "documents": []}
            )
            assert status == 400
            assert answer["error"]["message"] == "At least one text_pair element must be given"

    run(scenario)
