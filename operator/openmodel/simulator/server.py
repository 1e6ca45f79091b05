"""A fake inference engine: OpenAI-compatible endpoints, a real queue, real metrics.

Each request needs one of ``slots`` (an ``asyncio.Semaphore``) for ``service_time``
seconds. Requests that find every slot busy wait, and are counted in
``vllm:num_requests_waiting`` / ``tgi_queue_size`` until a slot frees up, so load above
``slots / service_time`` requests per second builds a queue the way a saturated engine
does. A client that disconnects while waiting leaves the queue (vLLM aborts such
requests too).

    handle = await start_simulator("vllm", "127.0.0.1", 0, slots=4, service_time=0.5,
                                   model="meta-llama/Llama-3.1-8B-Instruct")
    handle.url     # "http://127.0.0.1:<the port picked>"
    handle.stats   # live counters: waiting, running, tokens, ...
    await handle.stop()

Many simulators can run in one event loop (one per fake pod IP in 127.0.0.0/8).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from openmodel.simulator.exposition import EngineStats, render_tgi, render_vllm

__all__ = ["ENGINES", "SimulatorHandle", "build_app", "start_simulator"]

ENGINES: Final = ("vllm", "tgi")
_MAX_MODEL_LEN: Final = 4096
_DEFAULT_COMPLETION_TOKENS: Final = 16
_WORDS: Final = ("the", "model", "is", "simulated", "and", "answers", "in", "time")
# Stopping a simulator cancels requests still in flight after this long.
_SHUTDOWN_TIMEOUT_S: Final = 0.25

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadRequest(Exception):
    """A request the engine would refuse, with its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _Engine:
    """The queue and the slots."""

    def __init__(self, slots: int, service_time: float) -> None:
        self.stats = EngineStats(slots=slots)
        self._slots = asyncio.Semaphore(slots)
        self._service_time = service_time

    async def serve(self, prompt_tokens: int, completion_tokens: int) -> None:
        loop = asyncio.get_running_loop()
        stats = self.stats
        arrived = loop.time()
        stats.requests += 1
        stats.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            # Reached with the slot, or on cancellation (client gone) without it.
            stats.waiting -= 1
        queued = loop.time() - arrived
        stats.queue_time.observe(queued)
        stats.tgi_queue_duration.observe(queued)
        stats.running += 1
        stats.prompt_tokens += prompt_tokens
        try:
            await asyncio.sleep(self._service_time)  # the simulated GPU work
        finally:
            stats.running -= 1
            self._slots.release()
        stats.generation_tokens += completion_tokens
        stats.succeeded += 1
        elapsed = loop.time() - arrived
        stats.e2e.observe(elapsed)
        stats.tgi_duration.observe(elapsed)


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def _text(tokens: int) -> str:
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(tokens))


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise _BadRequest(f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    return body


def _positive_int(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _BadRequest(f"{key} must be a positive integer")
    return value


class _Simulator:
    """The HTTP face of one engine."""

    def __init__(self, engine: str, model: str, core: _Engine) -> None:
        self.engine = engine
        self.model = model
        self.core = core
        self.started = int(time.time())

    # --- errors, in each engine's shape ---

    def _error(self, exc: _BadRequest) -> web.Response:
        if self.engine == "tgi":
            body: dict[str, Any] = {"error": exc.message, "error_type": "validation"}
            return web.json_response(body, status=422 if exc.status == 400 else exc.status)
        kind = "NotFoundError" if exc.status == 404 else "BadRequestError"
        body = {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.status}}
        return web.json_response(body, status=exc.status)

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except _BadRequest as exc:
                return self._error(exc)

        return guarded

    def _check_request(self, body: dict[str, Any]) -> None:
        if body.get("stream"):
            raise _BadRequest("stream=true is not simulated")
        # vLLM refuses other model names; TGI serves one model whatever is asked.
        if self.engine == "vllm" and body.get("model") != self.model:
            raise _BadRequest(f"The model `{body.get('model')}` does not exist.", status=404)

    # --- OpenAI-compatible API ---

    @staticmethod
    def _usage(prompt: int, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_object(request)
        self._check_request(body)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(
            isinstance(p, str) for p in prompts
        ):
            raise _BadRequest("prompt must be a string or a non-empty list of strings")
        max_tokens = _positive_int(body, "max_tokens", _DEFAULT_COMPLETION_TOKENS)
        prompt_tokens = [_count_tokens(p) for p in prompts]
        # A list of prompts is one request per prompt inside the engine.
        await asyncio.gather(*(self.core.serve(n, max_tokens) for n in prompt_tokens))
        choices = [
            {
                "index": i,
                "text": _text(max_tokens),
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
            for i in range(len(prompts))
        ]
        return web.json_response(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": choices,
                "usage": self._usage(sum(prompt_tokens), max_tokens * len(prompts)),
            }
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_object(request)
        self._check_request(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages must be a non-empty list")
        contents = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise _BadRequest("each message needs a role and a string content")
            contents.append(message["content"])
        # OpenAI's newer name wins over the older one.
        max_tokens = _positive_int(body, "max_tokens", _DEFAULT_COMPLETION_TOKENS)
        max_tokens = _positive_int(body, "max_completion_tokens", max_tokens)
        prompt_tokens = sum(_count_tokens(c) for c in contents)
        await self.core.serve(prompt_tokens, max_tokens)
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": _text(max_tokens)},
                        "logprobs": None,
                        "finish_reason": "length",
                    }
                ],
                "usage": self._usage(prompt_tokens, max_tokens),
            }
        )

    async def models(self, request: web.Request) -> web.StreamResponse:
        entry: dict[str, Any] = {
            "id": self.model,
            "object": "model",
            "created": self.started,
            "owned_by": "vllm" if self.engine == "vllm" else self.model,
        }
        if self.engine == "vllm":
            entry.update(root=self.model, parent=None, max_model_len=_MAX_MODEL_LEN)
        return web.json_response({"object": "list", "data": [entry]})

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        stats = self.core.stats
        text = render_vllm(stats, self.model) if self.engine == "vllm" else render_tgi(stats)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    # --- TGI's own API ---

    async def info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "model_id": self.model,
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": _MAX_MODEL_LEN - 1,
                "max_total_tokens": _MAX_MODEL_LEN,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "simulated",
                "sha": None,
                "docker_label": None,
            }
        )

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await _json_object(request)
        inputs = body.get("inputs")
        if not isinstance(inputs, str) or not inputs:
            raise _BadRequest("`inputs` must be a non-empty string")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise _BadRequest("`parameters` must be an object")
        max_new_tokens = _positive_int(parameters, "max_new_tokens", 20)
        await self.core.serve(_count_tokens(inputs), max_new_tokens)
        return web.json_response({"generated_text": _text(max_new_tokens)})

    def routes(self) -> list[web.RouteDef]:
        table: list[tuple[str, str, Handler]] = [
            ("POST", "/v1/completions", self.completions),
            ("POST", "/v1/chat/completions", self.chat_completions),
            ("GET", "/v1/models", self.models),
            ("GET", "/health", self.health),
            ("GET", "/metrics", self.metrics),
        ]
        if self.engine == "tgi":
            table += [("GET", "/info", self.info), ("POST", "/generate", self.generate)]
        return [web.route(method, path, self._guarded(handler)) for method, path, handler in table]


def build_app(
    engine: str, model: str, slots: int, service_time: float
) -> tuple[web.Application, EngineStats]:
    """The aiohttp application of one simulated engine, and its live counters."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if slots < 1 or service_time < 0:
        raise ValueError("slots must be >= 1 and service_time >= 0")
    simulator = _Simulator(engine, model, _Engine(slots, service_time))
    app = web.Application()
    app.add_routes(simulator.routes())
    return app, simulator.core.stats


class SimulatorHandle:
    """A running simulator; ``stop()`` closes its socket and ends its requests."""

    def __init__(
        self, engine: str, model: str, host: str, port: int, runner: web.AppRunner,
        stats: EngineStats,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.model = model
        self.host = host
        self.port = port
        self.stats = stats
        self._runner = runner

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def start_simulator(
    engine: str,
    host: str,
    port: int,
    slots: int = 4,
    service_time: float = 0.5,
    model: str = "simulated/model",
) -> SimulatorHandle:
    """Serve one simulated engine on host:port (port 0 picks a free one, see ``.port``)."""
    app, stats = build_app(engine, model, slots, service_time)
    runner = web.AppRunner(
        app,
        access_log=None,
        # A client that goes away while queued leaves the queue.
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        sock = _listen_socket(host, port)
    except BaseException:
        await runner.cleanup()
        raise
    try:
        await web.SockSite(runner, sock, backlog=1024).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return SimulatorHandle(engine, model, host, sock.getsockname()[1], runner, stats)
