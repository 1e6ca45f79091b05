"""The engine simulator (openmodel.simulator), end to end on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from openmodel.autoscaler.metrics import (
    TGI_METRICS,
    VLLM_METRICS,
    QueueReading,
    parse_exposition,
    read_queue,
)
from openmodel.simulator import SimulatorHandle, start_simulator
from openmodel.simulator.exposition import Histogram, go_float, rust_float

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


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
        assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}

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
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}

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
        assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}

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
        ({"model": MODEL, "prompt": "x", "stream": True}, 400),
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
            assert read_queue(body, names) == QueueReading(waiting=3.0, running=2.0)
            # Clients giving up leave the queue, as with vLLM's request abort.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stats = handle.stats
            await until(lambda: stats.waiting == stats.running == 0, lambda: stats)
            _, body = await get_text(client, "/metrics")
            assert read_queue(body, names) == QueueReading(waiting=0.0, running=0.0)

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
            await start_simulator("sglang", "127.0.0.1", 0)
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
                    assert read_queue(await response.text(), TGI_METRICS) == QueueReading(0.0, 0.0)
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
