"""The simulator against a real vLLM. Streams: the same streamed chat and completion
requests to both, compared by structure — the keys at every level and their order, the
`object` values, the order of the chunks (chat: role chunk, content chunks, the chunk
with finish_reason, the usage chunk; then `data: [DONE]`), the SSE framing and the
Content-Type — never the generated text, ids or timestamps. Requests: the shapes clients
send (content parts, `max_completion_tokens`, sampling parameters, ...) get the same
answer status from both: what vLLM accepts, the simulator accepts, and what vLLM refuses
with 400, the simulator refuses too."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from openmodel.simulator.server import start_simulator

MODEL = "tiny"


@dataclass(frozen=True)
class Stream:
    content_type: str
    raw: str


def post_stream(base: str, path: str, body: dict[str, Any], timeout: float = 60) -> Stream:
    request = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200, response.status
        return Stream(response.headers["Content-Type"], response.read().decode())


def requests() -> dict[str, tuple[str, dict[str, Any]]]:
    """Name -> (path, body): the streamed requests both engines get."""
    completion = {"model": MODEL, "prompt": "the cat", "max_tokens": 4, "ignore_eos": True,
                  "stream": True}  # fmt: skip
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
            "ignore_eos": True, "stream": True}  # fmt: skip
    usage = {"stream_options": {"include_usage": True}}
    return {
        "completion": ("/v1/completions", completion),
        "completion+usage": ("/v1/completions", {**completion, **usage}),
        "chat": ("/v1/chat/completions", chat),
        "chat+usage": ("/v1/chat/completions", {**chat, **usage}),
    }


def request_shapes() -> dict[str, tuple[str, dict[str, Any]]]:
    """Name -> (path, body): the request shapes a client may send, not streamed."""
    chat: dict[str, Any] = {"model": MODEL, "max_tokens": 2}
    user = {"role": "user", "content": "hello"}
    parts = {"role": "user", "content": [{"type": "text", "text": "hello"},
                                         {"type": "text", "text": "there"}]}  # fmt: skip
    completion: dict[str, Any] = {"model": MODEL, "prompt": "the cat", "max_tokens": 2}
    return {
        "chat, string content": ("/v1/chat/completions", {**chat, "messages": [user]}),
        "chat, content parts": ("/v1/chat/completions", {**chat, "messages": [parts]}),
        "chat, system and assistant turns": ("/v1/chat/completions", {**chat, "messages": [
            {"role": "system", "content": "be brief"}, user,
            {"role": "assistant", "content": "hi"}, user]}),
        "chat, max_completion_tokens": ("/v1/chat/completions", {
            "model": MODEL, "messages": [user], "max_completion_tokens": 2}),
        "chat, sampling and ignore_eos": ("/v1/chat/completions", {
            **chat, "messages": [user], "temperature": 0.7, "top_p": 0.9, "seed": 7,
            "stop": ["\n\n"], "ignore_eos": True, "user": "someone"}),
        "chat, stream_options without stream": ("/v1/chat/completions", {
            **chat, "messages": [user], "stream": False,
            "stream_options": {"include_usage": True}}),
        "chat, max_tokens null": ("/v1/chat/completions", {
            "model": MODEL, "messages": [user], "max_tokens": None, "max_completion_tokens": 2}),
        "completion, prompt list": ("/v1/completions", {**completion, "prompt": ["the cat"]}),
        "completion, sampling and ignore_eos": ("/v1/completions", {
            **completion, "temperature": 0, "seed": 1, "ignore_eos": True, "stop": "."}),
        # Refused by both:
        "chat, no messages": ("/v1/chat/completions", {**chat, "messages": []}),
        "chat, content a number": ("/v1/chat/completions", {
            **chat, "messages": [{"role": "user", "content": 5}]}),
        "completion, max_tokens 0": ("/v1/completions", {**completion, "max_tokens": 0}),
    }  # fmt: skip


def answer_status(base: str, path: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def compare_acceptance(real_base: str) -> list[str]:
    """Request shapes the real engine and the simulator answer with different statuses."""

    async def simulated() -> dict[str, int]:
        handle = await start_simulator("vllm", "127.0.0.1", 0, service_time=0.01, model=MODEL)
        try:
            return {
                name: await asyncio.to_thread(answer_status, handle.url, path, body)
                for name, (path, body) in request_shapes().items()
            }
        finally:
            await handle.stop()

    sim = asyncio.run(simulated())
    problems = []
    for name, (path, body) in request_shapes().items():
        real = answer_status(real_base, path, body)
        if real != sim[name]:
            problems.append(f"{name}: real vLLM {real}, simulator {sim[name]}: {body}")
    return problems


def _keys(value: Any) -> Any:
    """The shape of a JSON value: dicts as (key, shape) in order, lists by their items'
    shapes, scalars by type (None kept apart: null is part of vLLM's format)."""
    if isinstance(value, dict):
        return tuple((k, _keys(v)) for k, v in value.items())
    if isinstance(value, list):
        return ("list", tuple(_keys(v) for v in value))
    return "null" if value is None else type(value).__name__


def shape(stream: Stream) -> list[Any]:
    """The stream as a sequence of chunk shapes; runs of same-shaped chunks collapse to
    one (the number of tokens is not part of the format), with their `object` and
    finish_reason values (which are)."""
    problems = []
    if not stream.raw.endswith("\n\n"):
        problems.append("the body does not end in a blank line")
    events = stream.raw.split("\n\n")[:-1]
    out: list[Any] = [("content-type", stream.content_type)]
    for event in events:
        if not event.startswith("data: ") or "\n" in event:
            problems.append(f"not one `data:` line: {event[:80]!r}")
            continue
        payload = event.removeprefix("data: ")
        if payload == "[DONE]":
            item: Any = "[DONE]"
        else:
            chunk = json.loads(payload)
            reasons = tuple(c.get("finish_reason") for c in chunk.get("choices", []))
            item = (chunk.get("object"), reasons, _keys(chunk))
        if not out or out[-1] != item:
            out.append(item)
    return out + problems


def simulator_streams() -> dict[str, Stream]:
    async def run() -> dict[str, Stream]:
        handle = await start_simulator("vllm", "127.0.0.1", 0, service_time=0.05, model=MODEL)
        try:
            return {
                name: await asyncio.to_thread(post_stream, handle.url, path, body)
                for name, (path, body) in requests().items()
            }
        finally:
            await handle.stop()

    return asyncio.run(run())


def compare_streams(real_base: str) -> list[str]:
    """Differences between the real engine's and the simulator's streams ([] when they
    agree), one line per request that differs, with both shapes."""
    sim = simulator_streams()
    problems = []
    for name, (path, body) in requests().items():
        real_shape = shape(post_stream(real_base, path, body))
        sim_shape = shape(sim[name])
        if real_shape != sim_shape:
            problems.append(
                f"{name}: real vLLM\n  "
                + "\n  ".join(map(str, real_shape))
                + "\nsimulator\n  "
                + "\n  ".join(map(str, sim_shape))
            )
    return problems
