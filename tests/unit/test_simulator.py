"""The engine simulator (openmodel.simulator), end to end on 127.0.0.1."""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from openmodel.engine_metrics.exposition import QueueReading, parse_exposition, read_queue
from openmodel.engines import ENGINES
from openmodel.simulator import SimulatorHandle, start_simulator
from openmodel.simulator.exposition import Histogram, go_float, rust_float
from openmodel.simulator.prefix_cache import PrefixCache
from openmodel.simulator.server import PREFILL_FRACTION

VLLM_METRICS = ENGINES["vllm"].metric_names
TGI_METRICS = ENGINES["tgi"].metric_names

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _queue(reading: object) -> tuple[float, float | None]:
    """The queue part of a reading (the token counters are the metering's)."""
    assert isinstance(reading, QueueReading), reading
    return reading.waiting, reading.running


@contextlib.asynccontextmanager
async def simulator(
    engine: str, slots: int = 2, service_time: float = 0.0, model: str = MODEL
) -> AsyncIterator[tuple[SimulatorHandle, aiohttp.ClientSession]]:
    handle = await start_simulator(engine, "127.0.0.1", 0, slots, service_time, model)
    try:
        async with aiohttp.ClientSession(base_url=handle.url) as client:
            yield handle, client
    finally:
        await handle.stop()


async def until(condition: Callable[[], bool], what: Callable[[], object], seconds: float = 20):
    """Poll `condition` until it holds; fail with what was last seen."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out; last saw {what()}"
        await asyncio.sleep(0.005)


async def post(client: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    async with client.post(path, json=body) as response:
        return response.status, await response.json()


async def get_text(client: aiohttp.ClientSession, path: str) -> tuple[int, str]:
    async with client.get(path) as response:
        return response.status, await response.text()


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def usage(prompt: int, completion: int) -> dict[str, Any]:
    """vLLM 0.32's non-streamed usage object."""
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


# --- OpenAI-compatible API ----------------------------------------------------------------


def test_completion_response_shape():
    async def main() -> None:
        async with simulator("vllm") as (_, client):
            status, body = await post(
                client,
                "/v1/completions",
                {"model": MODEL, "prompt": "Say hi to me", "max_tokens": 5},
            )
        assert status == 200
        assert body["id"].startswith("cmpl-")
        assert body["object"] == "text_completion"
        assert isinstance(body["created"], int) and body["created"] > 1_600_000_000
        assert body["model"] == MODEL
        [choice] = body["choices"]
        assert choice["index"] == 0 and choice["finish_reason"] == "length"
        assert len(choice["text"].split()) == 5
        assert body["usage"] == usage(4, 5)
        assert body["system_fingerprint"].startswith("vllm-0.32.0-")

    run(main)


def test_completion_with_a_list_of_prompts():
    async def main() -> None:
        async with simulator("vllm") as (handle, client):
            status, body = await post(
                client, "/v1/completions", {"model": MODEL, "prompt": ["a b", "c"], "max_tokens": 2}
            )
            assert handle.stats.succeeded == 2
        assert status == 200
        assert [c["index"] for c in body["choices"]] == [0, 1]
        assert body["usage"] == usage(3, 4)

    run(main)


def test_chat_completion_response_shape():
    async def main() -> None:
        async with simulator("vllm") as (_, client):
            request = {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hello there"},
                ],
                "max_completion_tokens": 3,
            }
            status, body = await post(client, "/v1/chat/completions", request)
        assert status == 200
        assert body["id"].startswith("chatcmpl-")
        assert body["object"] == "chat.completion"
        assert body["model"] == MODEL
        [choice] = body["choices"]
        assert choice["message"]["role"] == "assistant"
        assert len(choice["message"]["content"].split()) == 3
        assert body["usage"] == usage(4, 3)

    run(main)


def test_chat_takes_openai_content_parts_and_counts_their_text():
    async def main() -> None:
        parts = [{"type": "text", "text": "hello there"}, {"type": "text", "text": "friend"}]
        async with simulator("vllm") as (_, client):
            status, body = await post(
                client,
                "/v1/chat/completions",
                {"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 2},
            )
            image = [{"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]
            refused, answer = await post(
                client,
                "/v1/chat/completions",
                {"model": MODEL, "messages": [{"role": "user", "content": image}]},
            )
        assert status == 200 and body["usage"] == usage(3, 2)
        assert refused == 400 and "text content parts" in answer["error"]["message"]

    run(main)


def test_models_and_health():
    async def main() -> None:
        async with simulator("vllm") as (_, client):
            async with client.get("/v1/models") as response:
                models = await response.json()
            health, _ = await get_text(client, "/health")
            missing, _ = await get_text(client, "/info")
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == [MODEL]
        assert models["data"][0]["object"] == "model"
        assert health == 200
        assert missing == 404  # /info is TGI's

    run(main)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "other/model", "prompt": "x"}, 404),
        ({"model": MODEL}, 400),
        ({"model": MODEL, "prompt": []}, 400),
        ({"model": MODEL, "prompt": "x", "max_tokens": 0}, 400),
        ({"model": MODEL, "prompt": "x", "max_tokens": "5"}, 400),
        ({"model": MODEL, "prompt": ["x", "y"], "stream": True}, 400),
        ({"model": MODEL, "prompt": "x", "stream": True, "stream_options": 1}, 400),
        (["not", "an", "object"], 400),
    ],
)
def test_vllm_refuses_bad_requests_in_openai_error_shape(body, status):
    async def main() -> None:
        async with simulator("vllm") as (handle, client):
            got, answer = await post(client, "/v1/completions", body)
            assert handle.stats.requests == 0  # nothing reached the queue
        assert got == status
        assert set(answer["error"]) >= {"message", "type", "code"}
        assert answer["error"]["code"] == status

    run(main)


def test_invalid_json_is_a_bad_request():
    async def main() -> None:
        async with (
            simulator("vllm") as (_, client),
            client.post("/v1/completions", data=b"{nope") as response,
        ):
            assert response.status == 400
            assert "invalid JSON" in (await response.json())["error"]["message"]

    run(main)


# --- streams (vLLM 0.32's server-sent events) -------------------------------------------


def events(raw: str) -> list[str]:
    """The `data:` payloads of an SSE body; every event must end in a blank line."""
    assert raw.endswith("\n\n"), raw[-80:]
    parts = raw.split("\n\n")[:-1]
    assert all(p.startswith("data: ") and "\n" not in p for p in parts), parts
    return [p.removeprefix("data: ") for p in parts]


async def stream(client: aiohttp.ClientSession, path: str, body: Any) -> tuple[str, list[Any]]:
    """(Content-Type, chunks) of one whole stream; asserts the [DONE] terminator."""
    async with client.post(path, json=body) as response:
        assert response.status == 200
        payloads = events((await response.read()).decode())
        content_type = response.headers["Content-Type"]
    assert payloads[-1] == "[DONE]", payloads[-3:]
    return content_type, [json.loads(p) for p in payloads[:-1]]


def test_completion_stream_is_vllms_format():
    async def main() -> None:
        async with simulator("vllm") as (handle, client):
            body = {"model": MODEL, "prompt": "a b c", "max_tokens": 4, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            content_type, chunks = await stream(client, "/v1/completions", body)
            unstreamed = {k: v for k, v in body.items() if k != "stream_options"}
            _, plain = await post(client, "/v1/completions", {**unstreamed, "stream": False})
            assert handle.stats.generation_tokens == 8
        assert content_type == "text/event-stream; charset=utf-8"
        *tokens, last = chunks
        assert len(tokens) == 4  # one chunk per token
        assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
        for chunk in tokens:
            assert list(chunk) == ["id", "object", "created", "model", "choices"]
            assert chunk["object"] == "text_completion" and chunk["model"] == MODEL
            [choice] = chunk["choices"]
            assert list(choice) == ["index", "text", "logprobs", "finish_reason", "stop_reason",
                                    "prompt_token_ids", "token_ids"]  # fmt: skip
        assert [c["choices"][0]["finish_reason"] for c in tokens] == [None, None, None, "length"]
        assert "".join(c["choices"][0]["text"] for c in tokens) == plain["choices"][0]["text"]
        assert list(last) == ["id", "object", "created", "model", "choices", "usage",
                              "system_fingerprint"]  # fmt: skip
        assert last["choices"] == []
        assert last["usage"] == {"prompt_tokens": 3, "total_tokens": 7, "completion_tokens": 4}

    run(main)


def test_chat_stream_is_vllms_format():
    async def main() -> None:
        async with simulator("vllm") as (_, client):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}],
                    "max_tokens": 3, "stream": True}  # fmt: skip
            _, chunks = await stream(client, "/v1/chat/completions", body)
            _, with_usage = await stream(
                client, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}}
            )
        role, *tokens = chunks
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["id"].startswith("chatcmpl-")
        assert list(role) == ["id", "object", "created", "model", "choices", "prompt_token_ids",
                              "prompt_text"]  # fmt: skip
        assert role["choices"] == [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
             "finish_reason": None}
        ]  # fmt: skip
        assert len(tokens) == 3
        for chunk in tokens[:-1]:
            assert list(chunk) == ["id", "object", "created", "model", "choices"]
            assert list(chunk["choices"][0]) == [
                "index", "delta", "logprobs", "finish_reason", "token_ids"
            ]  # fmt: skip
            assert list(chunk["choices"][0]["delta"]) == ["content"]
        # Without a usage chunk the last token's chunk carries the fingerprint.
        assert list(tokens[-1]) == ["id", "object", "created", "model", "choices",
                                    "system_fingerprint"]  # fmt: skip
        assert tokens[-1]["choices"][0]["finish_reason"] == "length"
        assert tokens[-1]["choices"][0]["stop_reason"] is None
        assert "".join(c["choices"][0]["delta"]["content"] for c in tokens).split() == [
            "the", "model", "is"
        ]  # fmt: skip
        assert len(with_usage) == 1 + 3 + 1
        assert "system_fingerprint" not in with_usage[-2]
        assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"]["total_tokens"] == 5

    run(main)


def test_stream_timing_first_token_after_the_prefill_last_at_service_time():
    async def main() -> None:
        async with simulator("vllm", slots=1, service_time=0.4) as (_, client):
            body = {"model": MODEL, "prompt": "x", "max_tokens": 5, "stream": True}
            started = time.monotonic()
            async with client.post("/v1/completions", json=body) as response:
                arrivals = []
                async for _ in response.content:
                    arrivals.append(time.monotonic() - started)
        # Lower bounds only: a busy machine may be late, never early.
        data_lines = arrivals[0::2]  # every event is a data line and a blank line
        assert data_lines[0] >= 0.4 * PREFILL_FRACTION * 0.9
        assert data_lines[-1] >= 0.4 * 0.9

    run(main)


def test_token_times_spread_the_request_over_service_time():
    from openmodel.simulator.server import _Admission, _Engine

    async def main() -> None:
        engine = _Engine(slots=1, service_time=2.0)
        admission = _Admission(arrived=10.0, started=11.0)
        assert engine.token_times(admission, 5) == pytest.approx([11.2, 11.65, 12.1, 12.55, 13.0])
        assert engine.token_times(admission, 1) == [13.0]

    run(main)


def test_disconnect_mid_stream_frees_the_slot_and_is_counted_as_vllm_does():
    async def main() -> None:
        # One slot; a long stream holds it, a second request waits behind it.
        async with simulator("vllm", slots=1, service_time=30) as (handle, client):
            body = {"model": MODEL, "prompt": "x", "max_tokens": 30000, "stream": True}
            response = await client.post("/v1/completions", json=body)
            first = await response.content.readuntil(b"\n\n")  # the first token's event
            assert json.loads(first.removeprefix(b"data: "))["choices"][0]["text"] == "the"
            one_token = {**body, "stream": False, "max_tokens": 1}
            queued = asyncio.create_task(post(client, "/v1/completions", one_token))
            stats = handle.stats
            await until(lambda: stats.waiting == 1, lambda: stats)
            response.close()  # the client goes away mid-stream
            await until(lambda: stats.disconnected == 1 and stats.waiting == 0, lambda: stats)
            # The queued request got the freed slot although the stream had ~30 s to go.
            assert stats.running == 1 and stats.succeeded == 0
            queued.cancel()
            await asyncio.gather(queued, return_exceptions=True)
            await until(lambda: stats.running == 0, lambda: stats)
            _, text = await get_text(client, "/metrics")
        # vLLM 0.32 counts a client's abort in no metric: request_success stays 0.
        success = [s for s in parse_exposition(text).samples
                   if s.name == "vllm:request_success_total"]  # fmt: skip
        assert {s.label("finished_reason") for s in success} == {
            "stop", "length", "abort", "error", "repetition"
        }  # fmt: skip
        assert all(s.value == 0 for s in success)
        assert stats.aborted_by_stop == 0

    run(main)


def test_drain_lets_a_stream_finish_and_refuses_new_requests_as_vllm_does():
    async def main() -> None:
        handle = await start_simulator("vllm", "127.0.0.1", 0, 2, 1.0, MODEL)
        async with aiohttp.ClientSession(base_url=handle.url) as client:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 20, "stream": True}
            response = await client.post("/v1/completions", json=body)
            await response.content.readuntil(b"\n\n")
            stopping = asyncio.create_task(handle.stop(drain_seconds=30))
            await until(lambda: handle.draining, lambda: handle.stats)
            # Still listening: a new request gets vLLM's drain-time 500, /health 200.
            async with aiohttp.ClientSession(base_url=handle.url) as fresh:
                status, answer = await post(fresh, "/v1/completions", {**body, "stream": False})
                health, _ = await get_text(fresh, "/health")
            assert status == 500
            assert answer["error"] == {
                "message": "cannot schedule new futures after shutdown",
                "type": "InternalServerError", "param": None, "code": 500,
            }  # fmt: skip
            assert health == 200
            # The stream in flight runs to its end.
            rest = events((await response.content.read()).decode())
            response.close()
            assert rest[-1] == "[DONE]"
            assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"
            await stopping
            stats = handle.stats
            assert (stats.aborted_by_stop, stats.refused_while_draining) == (0, 1)
            assert stats.succeeded == 1
            # Once drained, the socket is closed.
            with pytest.raises(aiohttp.ClientConnectorError):
                await get_text(client, "/health")

    run(main)


@pytest.mark.parametrize("drain_seconds", [0.0, 0.2])
def test_stop_aborts_what_is_in_flight_without_a_drain_or_past_its_budget(drain_seconds):
    async def main() -> None:
        handle = await start_simulator("vllm", "127.0.0.1", 0, 2, 3600, MODEL)
        async with aiohttp.ClientSession(base_url=handle.url) as client:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 10, "stream": True}
            streamed = await client.post("/v1/completions", json=body)
            plain = asyncio.create_task(post(client, "/v1/completions", {**body, "stream": False}))
            stats = handle.stats
            await until(lambda: stats.running == 2, lambda: stats)
            await handle.stop(drain_seconds=drain_seconds)
            # The stream is cut: no [DONE], the body ends in an error.
            with pytest.raises(aiohttp.ClientPayloadError):
                await streamed.content.read()
            streamed.close()
            with pytest.raises(aiohttp.ClientError):
                await plain
        assert (stats.aborted_by_stop, stats.disconnected, stats.succeeded) == (2, 0, 0)
        assert stats.running == stats.waiting == 0

    run(main)


@contextlib.asynccontextmanager
async def pooling_simulator(
    task: str, slots: int = 4, service_time: float = 0.0
) -> AsyncIterator[tuple[SimulatorHandle, aiohttp.ClientSession]]:
    handle = await start_simulator("vllm", "127.0.0.1", 0, slots, service_time, MODEL, task=task)
    try:
        async with aiohttp.ClientSession(base_url=handle.url) as client:
            yield handle, client
    finally:
        await handle.stop()


def test_embeddings_in_vllms_shape():
    async def main() -> None:
        async with pooling_simulator("embed") as (handle, client):
            status, body = await post(
                client, "/v1/embeddings", {"model": MODEL, "input": ["hello world", "hi"]}
            )
            _, again = await post(client, "/v1/embeddings", {"model": MODEL, "input": "hi"})
            # What the official OpenAI SDK asks for unless told otherwise.
            _, packed = await post(
                client,
                "/v1/embeddings",
                {"model": MODEL, "input": "hi", "encoding_format": "base64"},
            )
            assert handle.stats.generation_tokens == 0
            # Each input is one request inside the engine, finished as `stop`.
            assert handle.stats.finished == {"stop": 4}
        assert status == 200
        assert list(body) == ["id", "object", "created", "model", "data", "usage"]
        assert body["id"].startswith("embd-") and body["object"] == "list"
        assert [(d["index"], d["object"]) for d in body["data"]] == [
            (0, "embedding"), (1, "embedding")
        ]  # fmt: skip
        vector = body["data"][1]["embedding"]
        assert vector == again["data"][0]["embedding"]  # the same text, the same vector
        decoded = array.array("f", base64.b64decode(packed["data"][0]["embedding"])).tolist()
        assert decoded == pytest.approx(vector, abs=1e-7)
        assert sum(x * x for x in vector) == pytest.approx(1.0)
        assert body["usage"] == usage(3, 0)

    run(main)


def test_rerank_and_score_in_vllms_shape():
    async def main() -> None:
        async with pooling_simulator("rerank") as (handle, client):
            docs = ["a dog", "the cat sat", "blue sky"]
            rerank = {"model": MODEL, "query": "the cat", "documents": docs}
            status, ranked = await post(client, "/v1/rerank", rerank)
            assert status == 200, ranked
            _, top = await post(client, "/rerank", {**rerank, "top_n": 2})
            _, cohere = await post(client, "/v2/rerank", rerank)
            score = {"model": MODEL, "text_1": "the cat", "text_2": docs[:2]}
            status, scored = await post(client, "/v1/score", score)
            assert status == 200, scored
            _, queries = await post(
                client, "/score", {"model": MODEL, "queries": "the cat", "documents": docs[:2]}
            )
            assert handle.stats.finished == {"stop": 3 + 3 + 3 + 2 + 2}
        assert list(ranked) == ["id", "model", "usage", "results"]
        assert ranked["id"].startswith("score-")
        assert ranked["usage"] == {"prompt_tokens": 2 * 3 + 2 + 3 + 2, "total_tokens": 13}
        results = ranked["results"]
        assert sorted(r["index"] for r in results) == [0, 1, 2]
        relevance = [r["relevance_score"] for r in results]
        assert relevance == sorted(relevance, reverse=True) and all(0 < s < 1 for s in relevance)
        assert [list(r) for r in results] == [["index", "document", "relevance_score"]] * 3
        assert results[0]["document"] == {"text": docs[results[0]["index"]], "multi_modal": None}
        assert top["results"] == results[:2] and cohere["results"] == results
        assert list(scored) == ["id", "object", "created", "model", "data", "usage"]
        assert scored["usage"] == usage(2 + 2 + 2 + 3, 0)
        by_index = {r["index"]: r["relevance_score"] for r in results}
        assert scored["data"] == [
            {"index": i, "object": "score", "score": by_index[i]} for i in (0, 1)
        ]
        assert queries["data"] == scored["data"]

    run(main)


@pytest.mark.parametrize(
    ("task", "path", "body", "message"),
    [
        ("embed", "/v1/embeddings", {"input": []}, "You must pass at least one prompt"),
        ("rerank", "/v1/rerank", {"query": "q", "documents": []},
         "At least one text_pair element must be given"),
        ("rerank", "/v1/score", {"text_1": "q", "text_2": []},
         "At least one text_pair element must be given"),
    ],
)  # fmt: skip
def test_pooling_refusals_are_vllms_400(
    task: str, path: str, body: dict[str, Any], message: str
) -> None:
    async def main() -> None:
        async with pooling_simulator(task) as (handle, client):
            status, answer = await post(client, path, {"model": MODEL, **body})
            assert handle.stats.requests == 0
        assert status == 400
        assert answer == {
            "error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}
        }

    run(main)


@pytest.mark.parametrize(
    ("task", "served", "absent"),
    [
        ("generate", ["/v1/completions", "/v1/chat/completions"],
         ["/v1/embeddings", "/v1/rerank", "/v1/score"]),
        ("embed", ["/v1/embeddings", "/rerank", "/v1/rerank", "/v2/rerank", "/score",
                   "/v1/score"], ["/v1/completions", "/v1/chat/completions"]),
        ("rerank", ["/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score"],
         ["/v1/embeddings", "/v1/completions", "/v1/chat/completions"]),
    ],
)  # fmt: skip
def test_each_task_serves_the_paths_vllm_registers_for_it(
    task: str, served: list[str], absent: list[str]
) -> None:
    async def main() -> None:
        start = start_simulator("vllm", "127.0.0.1", 0, model=MODEL, task=task)
        handle = await start
        try:
            async with aiohttp.ClientSession(base_url=handle.url) as client:
                for path in served + absent:
                    async with client.post(path, json={"model": MODEL}) as r:
                        assert (r.status == 404) == (path in absent), (path, r.status)
        finally:
            await handle.stop()

    run(main)


def test_pooling_is_simulated_for_vllm_only():
    with pytest.raises(ValueError, match="vllm engine only"):
        run(lambda: start_simulator("tgi", "127.0.0.1", 0, task="embed"))


def test_a_pooling_batch_queues_one_request_per_input():
    async def main() -> None:
        async with pooling_simulator("embed", slots=2, service_time=0.5) as (handle, client):
            inputs = [f"text {i}" for i in range(6)]
            task = asyncio.create_task(
                post(client, "/v1/embeddings", {"model": MODEL, "input": inputs})
            )
            stats = handle.stats
            await until(lambda: stats.running == 2 and stats.waiting == 4, lambda: stats)
            async with client.get("/metrics") as r:
                reading = read_queue(await r.text(), VLLM_METRICS)
            assert _queue(reading) == (4.0, 2.0)
            status, body = await task
        assert status == 200 and len(body["data"]) == 6

    run(main)


def test_tgi_does_not_simulate_streams():
    async def main() -> None:
        async with simulator("tgi") as (_, client):
            status, answer = await post(
                client, "/v1/completions", {"model": "tgi", "prompt": "x", "stream": True}
            )
        assert status == 422 and "vllm engine only" in answer["error"]

    run(main)


# --- TGI --------------------------------------------------------------------------------


def test_tgi_info_generate_and_openai_routes():
    async def main() -> None:
        async with simulator("tgi", model="mistralai/Mistral-7B-Instruct-v0.3") as (_, client):
            async with client.get("/info") as response:
                info = await response.json()
            status, generated = await post(
                client, "/generate", {"inputs": "hello", "parameters": {"max_new_tokens": 4}}
            )
            # TGI serves its one model whatever name the client sends.
            chat_status, chat = await post(
                client, "/v1/chat/completions",
                {"model": "tgi", "messages": [{"role": "user", "content": "hi"}]},
            )  # fmt: skip
            bad_status, bad = await post(client, "/generate", {"inputs": ""})
            health, _ = await get_text(client, "/health")
        assert info["model_id"] == "mistralai/Mistral-7B-Instruct-v0.3"
        assert info["max_concurrent_requests"] == 128
        assert status == 200 and len(generated["generated_text"].split()) == 4
        assert chat_status == 200 and chat["object"] == "chat.completion"
        assert bad_status == 422 and bad["error_type"] == "validation"
        assert health == 200

    run(main)


# --- /metrics -------------------------------------------------------------------------------


def test_vllm_metrics_exact_format():
    async def main() -> str:
        async with simulator("vllm", model='odd"name') as (_, client):
            status, _ = await post(
                client, "/v1/completions", {"model": 'odd"name', "prompt": "a b c", "max_tokens": 7}
            )
            assert status == 200
            status, body = await get_text(client, "/metrics")
            assert status == 200
            return body

    body = run(main)
    lines = body.splitlines()
    labels = 'engine="0",model_name="odd\\"name"'
    for expected in [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} 0.0",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{labels}}} 0.0",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{labels}}} 0.0",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{labels}}} 3.0",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{labels}}} 7.0",
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        f'vllm:e2e_request_latency_seconds_bucket{{{labels},le="+Inf"}} 1.0',
        f"vllm:request_queue_time_seconds_count{{{labels}}} 1.0",
    ]:
        assert expected in lines, expected
    parsed = parse_exposition(body)  # strict: every line
    assert not any(s.name.endswith("_created") for s in parsed.samples)
    assert {(s.label("engine"), s.label("model_name")) for s in parsed.samples} == {
        ("0", 'odd"name')
    }
    assert body.endswith("\n")


def test_tgi_metrics_exact_format():
    async def main() -> str:
        async with simulator("tgi") as (_, client):
            for _ in range(2):
                status, _ = await post(client, "/generate", {"inputs": "x"})
                assert status == 200
            return (await get_text(client, "/metrics"))[1]

    body = run(main)
    lines = body.splitlines()
    for expected in [
        "# TYPE tgi_queue_size gauge",
        "tgi_queue_size 0",
        "# TYPE tgi_batch_current_size gauge",
        "tgi_batch_current_size 0",
        "# TYPE tgi_request_count counter",
        "tgi_request_count 2",
        "# TYPE tgi_request_success counter",
        "tgi_request_success 2",
        'tgi_request_duration_bucket{le="+Inf"} 2',
    ]:
        assert expected in lines, expected
    parsed = parse_exposition(body)
    assert not any("_total" in s.name for s in parsed.samples)
    assert all(s.labels == () for s in parsed.samples if not s.name.endswith("_bucket"))
    assert "# HELP" not in body


@pytest.mark.parametrize(("engine", "names"), [("vllm", VLLM_METRICS), ("tgi", TGI_METRICS)])
def test_queue_forms_when_slots_are_busy_and_clears_when_clients_leave(engine, names):
    async def main() -> None:
        # Service takes an hour: the first 2 requests hold the slots, 3 more wait.
        async with simulator(engine, slots=2, service_time=3600) as (handle, client):
            request = {"model": MODEL, "prompt": "hello"}
            tasks = [
                asyncio.create_task(post(client, "/v1/completions", request)) for _ in range(5)
            ]
            await until(lambda: handle.stats.waiting == 3, lambda: handle.stats)
            _, body = await get_text(client, "/metrics")
            assert _queue(read_queue(body, names)) == (3.0, 2.0)
            # Clients giving up leave the queue, as with vLLM's request abort.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stats = handle.stats
            await until(lambda: stats.waiting == stats.running == 0, lambda: stats)
            _, body = await get_text(client, "/metrics")
            assert _queue(read_queue(body, names)) == (0.0, 0.0)

    run(main)


def test_queue_drains_through_the_slots():
    async def main() -> None:
        async with simulator("vllm", slots=1, service_time=0.01) as (handle, client):
            request = {"model": MODEL, "prompt": "one two", "max_tokens": 3}
            calls = [post(client, "/v1/completions", request) for _ in range(4)]
            results = await asyncio.gather(*calls)
            stats = handle.stats
        assert [status for status, _ in results] == [200] * 4
        assert (stats.waiting, stats.running, stats.succeeded) == (0, 0, 4)
        assert (stats.prompt_tokens, stats.generation_tokens) == (8, 12)
        assert stats.queue_time.count == 4
        # One slot: the last request waited for the three before it.
        assert stats.e2e.total >= 0.01 * (1 + 2 + 3 + 4)

    run(main)


def test_many_simulators_in_one_process():
    async def main() -> None:
        hosts = [f"127.0.20.{i}" for i in range(1, 11)]
        handles = [await start_simulator("tgi", host, 0, 1, 0.0, "m") for host in hosts]
        try:
            async with aiohttp.ClientSession() as client:
                for h in handles:
                    async with client.get(f"{h.url}/info") as response:
                        assert (await response.json())["model_id"] == "m"
            assert len({h.url for h in handles}) == 10
        finally:
            for h in handles:
                await h.stop()

    run(main)


def test_start_simulator_rejects_bad_arguments():
    async def main() -> None:
        with pytest.raises(ValueError):
            await start_simulator("ollama", "127.0.0.1", 0)
        with pytest.raises(ValueError):
            await start_simulator("vllm", "127.0.0.1", 0, slots=0)
        handle = await start_simulator("vllm", "127.0.0.1", 0)
        try:
            with pytest.raises(OSError):
                await start_simulator("vllm", "127.0.0.1", handle.port)
        finally:
            await handle.stop()

    run(main)


# --- formatting helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2.0, "2.0"),
        (0.0123, "0.0123"),
        (12345678.0, "1.2345678e+07"),
        (1e9, "1e+09"),
        (123456.0, "123456.0"),
        (1234567.0, "1.234567e+06"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_go_float_matches_prometheus_client(value, text):
    assert go_float(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(3.0, "3"), (0.5, "0.5"), (0.0, "0"), (1e20, "100000000000000000000"), (1e-7, "0.0000001")],
)
def test_rust_float(value, text):
    assert rust_float(value) == text


def test_histogram_buckets_are_cumulative_and_inclusive():
    hist = Histogram((0.3, 0.5, 1.0))
    for value in (0.3, 0.4, 2.0):
        hist.observe(value)
    assert hist.counts == [1, 2, 2]
    assert (hist.count, hist.total) == (3, pytest.approx(2.7))


# --- the command line -----------------------------------------------------------------------


def test_cli_serves_until_sigterm():
    async def main() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "openmodel.simulator",
            "--engine", "tgi", "--host", "127.0.0.1", "--port", "0",
            "--slots", "3", "--service-time", "0", "--model", "org/cli-model",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            assert line.startswith("listening on http://127.0.0.1:"), line
            url = line.split()[-1]
            async with aiohttp.ClientSession() as client:
                async with client.get(f"{url}/info") as response:
                    assert (await response.json())["model_id"] == "org/cli-model"
                async with client.get(f"{url}/metrics") as response:
                    assert _queue(read_queue(await response.text(), TGI_METRICS)) == (0.0, 0.0)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 30) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    run(main)


def test_cli_rejects_bad_arguments():
    async def main() -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "openmodel.simulator", "--slots", "0",
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return await asyncio.wait_for(process.wait(), 60)

    assert run(main) == 2


def test_the_prefix_cache_holds_leading_blocks_after_the_same_beginning() -> None:
    cache = PrefixCache(block_tokens=4, capacity_blocks=4)
    prompt = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]  # two full blocks and a partial one
    assert cache.cached_tokens(prompt) == 0
    assert cache.cached_tokens(prompt) == 8
    # Same second block after another beginning: nothing (blocks chain from the start).
    assert cache.cached_tokens(["x", "y", "z", "w", "e", "f", "g", "h"]) == 0
    # Shared first block only.
    assert cache.cached_tokens(["a", "b", "c", "d", "q", "q", "q", "q"]) == 4
    # Capacity 4 blocks: storing "q q q q" evicted the least recently used, "e f g h"
    # after "a b c d"; "a b c d", just used, is still there.
    assert cache.cached_tokens(prompt) == 4


def test_a_repeated_prefix_is_counted_as_vllm_does_and_prefills_faster() -> None:
    system = "you answer questions about the payroll policy of the company " * 8

    async def main() -> None:
        handle = await start_simulator(
            "vllm", "127.0.0.1", 0, 2, 0.0, MODEL, prefill_seconds_per_token=0.002
        )
        try:
            async with aiohttp.ClientSession(base_url=handle.url) as client:
                timings = []
                for question in ("what is my salary", "when is payday"):
                    body = {
                        "model": MODEL,
                        "max_tokens": 1,
                        "messages": [
                            {"role": "system", "content": system},
                            {"role": "user", "content": question},
                        ],
                    }
                    started = time.perf_counter()
                    status, _ = await post(client, "/v1/chat/completions", body)
                    timings.append(time.perf_counter() - started)
                    assert status == 200
                _, text = await get_text(client, "/metrics")
        finally:
            await handle.stop()
        exposition = parse_exposition(text)
        queries = sum(exposition.values("vllm:prefix_cache_queries_total"))
        hits = sum(exposition.values("vllm:prefix_cache_hits_total"))
        assert queries == 2 * 80 + 4 + 3  # two system prompts of 80 words, two questions
        assert hits == 80  # the second request's system prompt: five 16-token blocks
        # 80 cached tokens at 2 ms each: the second prefill is 160 ms shorter.
        assert timings[0] - timings[1] > 0.1, timings

    run(main)
