"""A fake inference engine: OpenAI-compatible endpoints, a real queue, real metrics.

Each request needs one of ``slots`` (an ``asyncio.Semaphore``) for ``service_time``
seconds. Requests that find every slot busy wait, and are counted in
``vllm:num_requests_waiting`` / ``tgi_queue_size`` until a slot frees up, so load above
``slots / service_time`` requests per second builds a queue the way a saturated engine
does. A client that disconnects, waiting or mid-stream, leaves and frees its slot; like
vLLM 0.32, which counts such an abort in no metric (its ``request_success_total
{finished_reason="abort"}`` stayed 0 after a disconnect here), the simulator only counts
it in ``stats.disconnected``.

Streams (``stream: true``, vllm engine) are vLLM 0.32's server-sent events
(``openai_bodies``). A streamed request holds its slot like any other: once it has one,
its first token comes after ``PREFILL_FRACTION * service_time`` and the others are spaced
evenly so that the last one leaves at ``service_time``.

A pooling model (``task="embed"`` or ``"rerank"``, vllm engine only) serves what vLLM
0.32 serves for one (``pooling``): an embedding model /v1/embeddings and the scores,
a cross-encoder the scores (/rerank, /v1/rerank, /v2/rerank, /score, /v1/score), neither
the generation endpoints. Each input, or query-document pair, holds a slot as one
request, as in the real engine's queue gauges.

``stop(drain_seconds)`` is vLLM's SIGTERM: without a drain (``--shutdown-timeout 0``)
requests in flight are cut at once; with one, requests in flight (streams included) run
on for up to ``drain_seconds`` while the socket still accepts connections, ``/health``
still answers 200, and every new generation request gets vLLM's 500
``cannot schedule new futures after shutdown`` (what a real vLLM 0.32 answered here
during its drain), then the socket closes.

    handle = await start_simulator("vllm", "127.0.0.1", 0, slots=4, service_time=0.5,
                                   model="meta-llama/Llama-3.1-8B-Instruct")
    handle.url     # "http://127.0.0.1:<the port picked>"
    handle.stats   # live counters: waiting, running, tokens, aborts, ...
    await handle.stop(drain_seconds=30)

Many simulators can run in one event loop (one per fake pod IP in 127.0.0.0/8).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from openmodel.simulator import openai_bodies as bodies
from openmodel.simulator import pooling
from openmodel.simulator.exposition import (
    EngineStats,
    render_llamacpp,
    render_sglang,
    render_tgi,
    render_vllm,
)
from openmodel.simulator.prefix_cache import CAPACITY_BLOCKS, PrefixCache

__all__ = [
    "ENGINES", "PREFILL_FRACTION", "TASKS", "SimulatorHandle", "build_app", "start_simulator",
]  # fmt: skip

ENGINES: Final = ("vllm", "tgi", "sglang", "llamacpp")
TASKS: Final = pooling.TASKS
PREFILL_FRACTION: Final = 0.1
_MAX_MODEL_LEN: Final = 4096
_DEFAULT_COMPLETION_TOKENS: Final = 16
_WORDS: Final = ("the", "model", "is", "simulated", "and", "answers", "in", "time")
# What a real vLLM 0.32 answered (500) to a new request while it drained.
_DRAINING_MESSAGE: Final = "cannot schedule new futures after shutdown"
# After cutting the requests in flight, how long their handlers get to unwind.
_CUT_WAIT_S: Final = 5.0
_SHUTDOWN_TIMEOUT_S: Final = 0.25

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadRequest(Exception):
    """A request the engine would refuse, with its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class _Prompt:
    """A prompt's tokens, and how many of the leading ones the prefix cache held."""

    tokens: int
    cached: int = 0


@dataclass(frozen=True)
class _Admission:
    """A request that got its slot: when it arrived and when it started (loop time)."""

    arrived: float
    started: float


class _Engine:
    """The queue and the slots."""

    def __init__(
        self,
        slots: int,
        service_time: float,
        prefill_seconds_per_token: float = 0.0,
        cache_blocks: int = CAPACITY_BLOCKS,
    ) -> None:
        self.stats = EngineStats(slots=slots)
        self.service_time = service_time
        self.prefill_seconds_per_token = prefill_seconds_per_token
        self.prefix_cache = PrefixCache(capacity_blocks=cache_blocks)
        self._slots = asyncio.Semaphore(slots)
        # Set by a stop that cuts what is in flight: an abort from then on is the stop's.
        self.cutting = False

    def _aborted(self) -> None:
        if self.cutting:
            self.stats.aborted_by_stop += 1
        else:
            self.stats.disconnected += 1

    def prompt(self, text: str) -> _Prompt:
        """A prompt's token count and the part of it the prefix cache holds."""
        words = text.split()
        return _Prompt(max(1, len(words)), self.prefix_cache.cached_tokens(words))

    def prefill_delay(self, prompt: _Prompt) -> float:
        """The prefill of the tokens the prefix cache did not hold."""
        return self.prefill_seconds_per_token * (prompt.tokens - prompt.cached)

    @contextlib.asynccontextmanager
    async def slot(self, prompt_tokens: int, cached: int = 0) -> AsyncIterator[_Admission]:
        """Wait in the queue for a slot and hold it; an abort (client gone, or a stop)
        is counted on the way out."""
        loop = asyncio.get_running_loop()
        stats = self.stats
        arrived = loop.time()
        stats.requests += 1
        stats.waiting += 1
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            self._aborted()
            raise
        finally:
            # Reached with the slot, or on cancellation without it.
            stats.waiting -= 1
        started = loop.time()
        queued = started - arrived
        stats.queue_time.observe(queued)
        stats.tgi_queue_duration.observe(queued)
        stats.running += 1
        stats.prompt_tokens += prompt_tokens
        stats.prefix_cache_queries += prompt_tokens
        stats.prefix_cache_hits += cached
        try:
            yield _Admission(arrived, started)
        except (asyncio.CancelledError, ConnectionResetError):
            self._aborted()
            raise
        finally:
            stats.running -= 1
            self._slots.release()

    def finished(self, admission: _Admission, reason: str) -> None:
        stats = self.stats
        stats.succeeded += 1
        stats.finished[reason] = stats.finished.get(reason, 0) + 1
        elapsed = asyncio.get_running_loop().time() - admission.arrived
        stats.e2e.observe(elapsed)
        stats.tgi_duration.observe(elapsed)

    async def serve(self, prompt: _Prompt, completion_tokens: int, reason: str = "length") -> None:
        """One request not streamed: the slot for service_time (and the prefill of what
        the prefix cache did not hold), tokens counted at the end."""
        async with self.slot(prompt.tokens, prompt.cached) as admission:
            await asyncio.sleep(self.service_time + self.prefill_delay(prompt))
        self.stats.generation_tokens += completion_tokens
        self.finished(admission, reason)

    def token_times(self, admission: _Admission, tokens: int, extra: float = 0.0) -> list[float]:
        """Loop times at which a stream's tokens leave: the first after the prefill, the
        last at service_time after the request got its slot; `extra` (the prefill of
        uncached prompt tokens) delays them all."""
        start = admission.started + extra
        if tokens == 1:
            return [start + self.service_time]
        prefill = self.service_time * PREFILL_FRACTION
        step = (self.service_time - prefill) / (tokens - 1)
        return [start + prefill + i * step for i in range(tokens)]


async def _sleep_until(when: float) -> None:
    await asyncio.sleep(max(0.0, when - asyncio.get_running_loop().time()))


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def _token(i: int) -> str:
    """The i-th generated token's text; tokens 0..n-1 joined make ``_text(n)``."""
    word = _WORDS[i % len(_WORDS)]
    return word if i == 0 else f" {word}"


def _text(tokens: int) -> str:
    return "".join(_token(i) for i in range(tokens))


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


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _BadRequest("stream_options must be an object")
    return bool(options.get("include_usage"))


def _message_text(message: object) -> str:
    """A chat message's text: its content as a string, or its text parts joined (OpenAI's
    content parts, `[{"type": "text", "text": ...}]`, as clients such as `vllm bench serve`
    send them). The simulator serves a text model: other kinds of parts are refused, as
    vLLM refuses them for a model without that modality."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise _BadRequest("each message needs a role and a content")
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message["role"] == "assistant":
        return ""  # an assistant turn that only called tools
    if not isinstance(content, list):
        raise _BadRequest("a message's content must be a string or a list of content parts")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            raise _BadRequest("only text content parts are supported by this model")
        if not isinstance(part.get("text"), str):
            raise _BadRequest("a text content part needs a string `text`")
        texts.append(part["text"])
    return "\n".join(texts)


def _strings(value: object, key: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) for p in items):
        raise _BadRequest(f"{key} must be a string or a non-empty list of strings")
    return items


class _Simulator:
    """The HTTP face of one engine."""

    def __init__(self, engine: str, model: str, core: _Engine, task: str = "generate") -> None:
        self.engine = engine
        self.model = model
        self.core = core
        self.task = task
        self.started = int(time.time())
        # Set by a stop with a drain: new generation requests are refused from then on.
        self.draining = False
        # Requests are not hashable: keyed by id() while they are alive.
        self._in_flight: dict[int, web.Request] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_ended = asyncio.Event()

    # --- errors, in each engine's shape ---

    def _error(self, exc: _BadRequest) -> web.Response:
        if self.engine == "tgi":
            body: dict[str, Any] = {"error": exc.message, "error_type": "validation"}
            return web.json_response(body, status=422 if exc.status == 400 else exc.status)
        kinds = {404: "NotFoundError", 500: "InternalServerError"}
        kind = kinds.get(exc.status, "BadRequestError")
        body = {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.status}}
        return web.json_response(body, status=exc.status)

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except _BadRequest as exc:
                return self._error(exc)

        return guarded

    def _generation(self, handler: Handler) -> Handler:
        """Tracks a generation request while in flight (a drain waits for these), and
        refuses new ones once a drain began."""

        async def generation(request: web.Request) -> web.StreamResponse:
            if self.draining:
                self.core.stats.refused_while_draining += 1
                response = self._error(_BadRequest(_DRAINING_MESSAGE, status=500))
                # vLLM's unhandled error ends the connection too.
                response.force_close()
                return response
            self._in_flight[id(request)] = request
            self._idle.clear()
            try:
                return await handler(request)
            finally:
                del self._in_flight[id(request)]
                if not self._in_flight:
                    self._idle.set()

        return generation

    async def drain(self, seconds: float) -> None:
        """Refuse new generation requests; wait up to `seconds` for those in flight
        (or until ``end_drain``)."""
        self.draining = True
        idle = asyncio.ensure_future(self._idle.wait())
        ended = asyncio.ensure_future(self._drain_ended.wait())
        try:
            await asyncio.wait({idle, ended}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            ended.cancel()

    def end_drain(self) -> None:
        self._drain_ended.set()

    async def cut(self) -> None:
        """Abort every request still in flight by closing its connection."""
        self.core.cutting = True
        for request in list(self._in_flight.values()):
            if request.transport is not None:
                request.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), _CUT_WAIT_S)

    def _check_request(self, body: dict[str, Any]) -> bool:
        """Validates what every generation request shares; True when it is streamed."""
        stream = bool(body.get("stream"))
        if stream and self.engine != "vllm":
            raise _BadRequest("stream=true is simulated for the vllm engine only")
        # vLLM refuses other model names; TGI serves one model whatever is asked.
        if self.engine == "vllm" and body.get("model") != self.model:
            raise _BadRequest(f"The model `{body.get('model')}` does not exist.", status=404)
        if body.get("stream_options") is not None and not stream:
            # As vLLM answers it (the real engine's contract, tests/e2e/real_engine).
            raise _BadRequest("Stream options can only be defined when `stream=True`.")
        return stream

    def _head(self, request: web.Request, prefix: str, kind: str) -> bodies.Head:
        rid = bodies.request_id(prefix, request.headers.get("X-Request-Id"))
        return bodies.Head(rid, kind, int(time.time()), self.model)

    # --- streams ---

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        # vLLM sends the headers at once, before the request has a slot.
        response = web.StreamResponse(status=200)
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        await response.prepare(request)
        return response

    async def _stream(
        self,
        request: web.Request,
        head: bodies.Head,
        prompt: _Prompt,
        tokens: int,
        include_usage: bool,
        chunk: Callable[[int, bool], dict[str, Any]],
        role_chunk: dict[str, Any] | None,
    ) -> web.StreamResponse:
        """One streamed request: `chunk(i, last)` is token i's event."""
        prompt_tokens = prompt.tokens
        response = await self._open_stream(request)
        async with self.core.slot(prompt_tokens, prompt.cached) as admission:
            extra = self.core.prefill_delay(prompt)
            for i, when in enumerate(self.core.token_times(admission, tokens, extra)):
                await _sleep_until(when)
                self.core.stats.generation_tokens += 1
                event = bodies.sse_event(chunk(i, i == tokens - 1))
                if i == 0 and role_chunk is not None:
                    event = bodies.sse_event(role_chunk) + event
                await response.write(event)
            tail = bodies.SSE_DONE
            if include_usage:
                tail = bodies.sse_event(bodies.usage_chunk(head, prompt_tokens, tokens)) + tail
            await response.write(tail)
        self.core.finished(admission, "length")
        await response.write_eof()
        return response

    # --- OpenAI-compatible API ---

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_object(request)
        stream = self._check_request(body)
        prompts = _strings(body.get("prompt"), "prompt")
        max_tokens = _positive_int(body, "max_tokens", _DEFAULT_COMPLETION_TOKENS)
        parsed = [self.core.prompt(p) for p in prompts]
        prompt_tokens = [p.tokens for p in parsed]
        head = self._head(request, "cmpl", bodies.COMPLETION_OBJECT)
        if stream:
            if len(prompts) > 1:
                raise _BadRequest("a list of prompts with stream=true is not simulated")
            include_usage = _include_usage(body)

            def chunk(i: int, last: bool) -> dict[str, Any]:
                reason = "length" if last else None
                fingerprint = last and not include_usage
                return bodies.completion_chunk(head, 0, _token(i), reason, fingerprint)

            return await self._stream(
                request, head, parsed[0], max_tokens, include_usage, chunk, None
            )
        # A list of prompts is one request per prompt inside the engine.
        await asyncio.gather(*(self.core.serve(p, max_tokens) for p in parsed))
        texts = [_text(max_tokens)] * len(prompts)
        return web.json_response(
            bodies.completion_response(head, texts, sum(prompt_tokens), max_tokens * len(prompts))
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_object(request)
        stream = self._check_request(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages must be a non-empty list")
        contents = [_message_text(message) for message in messages]
        # OpenAI's newer name wins over the older one.
        max_tokens = _positive_int(body, "max_tokens", _DEFAULT_COMPLETION_TOKENS)
        max_tokens = _positive_int(body, "max_completion_tokens", max_tokens)
        prompt_tokens = sum(_count_tokens(c) for c in contents)
        # The prefix cache sees the messages in order, role first, as a chat template
        # lays them out; the count stays the one the simulator has always answered with.
        laid_out = " ".join(
            f"{m.get('role')} {text}" for m, text in zip(messages, contents, strict=True)
        )
        prompt = _Prompt(prompt_tokens, min(prompt_tokens, self.core.prompt(laid_out).cached))
        if stream:
            include_usage = _include_usage(body)
            head = self._head(request, "chatcmpl", bodies.CHAT_CHUNK_OBJECT)

            def chunk(i: int, last: bool) -> dict[str, Any]:
                reason = "length" if last else None
                fingerprint = last and not include_usage
                return bodies.chat_content_chunk(head, _token(i), reason, fingerprint)

            role = bodies.chat_role_chunk(head)
            return await self._stream(request, head, prompt, max_tokens, include_usage, chunk, role)
        head = self._head(request, "chatcmpl", bodies.CHAT_OBJECT)
        await self.core.serve(prompt, max_tokens)
        return web.json_response(
            bodies.chat_response(head, _text(max_tokens), prompt_tokens, max_tokens)
        )

    # --- a pooling model's API ---

    async def _pooling_body(self, request: web.Request) -> dict[str, Any]:
        body = await _json_object(request)
        if body.get("model") is not None and body.get("model") != self.model:
            raise _BadRequest(f"The model `{body.get('model')}` does not exist.", status=404)
        return body

    async def _pool(self, prompt_tokens: list[int]) -> None:
        """Each input (or pair) is one request inside the engine, finished as `stop`."""
        await asyncio.gather(
            *(self.core.serve(_Prompt(n), 0, reason="stop") for n in prompt_tokens)
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._pooling_body(request)
        try:
            inputs = pooling.texts(body.get("input"), pooling.EMPTY_INPUT, "input")
            vectors = [
                pooling.encoded(pooling.embedding(text), body.get("encoding_format"))
                for text in inputs
            ]
        except pooling.PoolingError as e:
            raise _BadRequest(str(e)) from None
        prompt_tokens = [_count_tokens(text) for text in inputs]
        await self._pool(prompt_tokens)
        head = self._head(request, "embd", "list")
        return web.json_response(bodies.embedding_response(head, vectors, sum(prompt_tokens)))

    async def rerank(self, request: web.Request) -> web.StreamResponse:
        body = await self._pooling_body(request)
        try:
            query, documents = pooling.rerank_pairs(body)
        except pooling.PoolingError as e:
            raise _BadRequest(str(e)) from None
        top_n = body.get("top_n", 0)
        if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0:
            raise _BadRequest("top_n must be an integer >= 0")
        prompt_tokens = [_count_tokens(query) + _count_tokens(d) for d in documents]
        await self._pool(prompt_tokens)
        scores = [pooling.score(self.task, query, d) for d in documents]
        head = self._head(request, "score", "list")
        return web.json_response(
            bodies.rerank_response(head, documents, scores, top_n, sum(prompt_tokens))
        )

    async def score(self, request: web.Request) -> web.StreamResponse:
        body = await self._pooling_body(request)
        try:
            pairs = pooling.score_pairs(body)
        except pooling.PoolingError as e:
            raise _BadRequest(str(e)) from None
        prompt_tokens = [_count_tokens(a) + _count_tokens(b) for a, b in pairs]
        await self._pool(prompt_tokens)
        head = self._head(request, "score", "list")
        scores = [pooling.score(self.task, a, b) for a, b in pairs]
        return web.json_response(bodies.score_response(head, scores, sum(prompt_tokens)))

    async def models(self, request: web.Request) -> web.StreamResponse:
        entry: dict[str, Any] = {
            "id": self.model,
            "object": "model",
            "created": self.started,
            "owned_by": self.engine
            if self.engine in ("vllm", "sglang", "llamacpp")
            else self.model,
        }
        if self.engine == "vllm":
            entry.update(root=self.model, parent=None, max_model_len=_MAX_MODEL_LEN)
        return web.json_response({"object": "list", "data": [entry]})

    async def health(self, request: web.Request) -> web.StreamResponse:
        # Still 200 while draining: vLLM 0.32's /health did not change during its drain.
        if self.engine == "llamacpp":
            return web.json_response({"status": "ok"})
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        stats = self.core.stats
        if self.engine == "vllm":
            text = render_vllm(stats, self.model)
        elif self.engine == "sglang":
            text = render_sglang(stats, self.model)
        elif self.engine == "llamacpp":
            text = render_llamacpp(stats)
            # llama-server's own header (not prometheus_client's).
            return web.Response(
                body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4"}
            )
        else:
            text = render_tgi(stats)
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
        await self.core.serve(_Prompt(_count_tokens(inputs)), max_new_tokens)
        return web.json_response({"generated_text": _text(max_new_tokens)})

    def _served_paths(self) -> list[tuple[str, Handler]]:
        """The POST endpoints of this engine and task (as vLLM 0.32 registers them)."""
        scores: list[tuple[str, Handler]] = [
            ("/rerank", self.rerank), ("/v1/rerank", self.rerank), ("/v2/rerank", self.rerank),
            ("/score", self.score), ("/v1/score", self.score),
        ]  # fmt: skip
        if self.task == "embed":
            return [("/v1/embeddings", self.embeddings), *scores]
        if self.task == "rerank":
            return scores
        generation: list[tuple[str, Handler]] = [
            ("/v1/completions", self.completions),
            ("/v1/chat/completions", self.chat_completions),
        ]
        if self.engine == "tgi":
            generation.append(("/generate", self.generate))
        return generation

    def routes(self) -> list[web.RouteDef]:
        table: list[tuple[str, str, Handler]] = [
            ("POST", path, self._generation(self._guarded(handler)))
            for path, handler in self._served_paths()
        ]
        table += [
            ("GET", "/v1/models", self._guarded(self.models)),
            ("GET", "/health", self.health),
            ("GET", "/metrics", self.metrics),
        ]
        if self.engine == "tgi":
            table.append(("GET", "/info", self.info))
        return [web.route(method, path, handler) for method, path, handler in table]


def _simulator(
    engine: str,
    model: str,
    slots: int,
    service_time: float,
    prefill_seconds_per_token: float,
    cache_blocks: int = CAPACITY_BLOCKS,
    task: str = "generate",
) -> _Simulator:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if task != "generate" and engine != "vllm":
        raise ValueError(f"a pooling model ({task}) is simulated for the vllm engine only")
    if slots < 1 or service_time < 0 or prefill_seconds_per_token < 0 or cache_blocks < 1:
        raise ValueError("slots and cache blocks must be >= 1, the times >= 0")
    core = _Engine(slots, service_time, prefill_seconds_per_token, cache_blocks)
    return _Simulator(engine, model, core, task)


def _application(simulator: _Simulator) -> web.Application:
    app = web.Application()
    app.add_routes(simulator.routes())
    return app


def build_app(
    engine: str,
    model: str,
    slots: int,
    service_time: float,
    prefill_seconds_per_token: float = 0.0,
    task: str = "generate",
) -> tuple[web.Application, EngineStats]:
    """The aiohttp application of one simulated engine, and its live counters."""
    simulator = _simulator(engine, model, slots, service_time, prefill_seconds_per_token, task=task)
    return _application(simulator), simulator.core.stats


class SimulatorHandle:
    """A running simulator; ``stop()`` ends it the way SIGTERM ends vLLM."""

    def __init__(
        self, engine: str, model: str, host: str, port: int, runner: web.AppRunner,
        simulator: _Simulator,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.model = model
        self.host = host
        self.port = port
        self.stats = simulator.core.stats
        self._runner = runner
        self._simulator = simulator
        self._stopped: asyncio.Future[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def draining(self) -> bool:
        return self._simulator.draining

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Without a drain, cut what is in flight and close. With one, keep serving the
        requests in flight (streams included) for up to `drain_seconds` while new
        generation requests get vLLM's drain-time 500, then cut what is left
        (``stats.aborted_by_stop``) and close the socket. A second call waits for the
        first one's end; one without a drain ends the first one's drain at once."""
        if self._stopped is not None:
            if drain_seconds <= 0:
                self._simulator.end_drain()
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            if drain_seconds > 0:
                await self._simulator.drain(drain_seconds)
            await self._simulator.cut()
            await self._runner.cleanup()
        finally:
            self._stopped.set_result(None)


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
    prefill_seconds_per_token: float = 0.0,
    cache_blocks: int = CAPACITY_BLOCKS,
    task: str = "generate",
) -> SimulatorHandle:
    """Serve one simulated engine on host:port (port 0 picks a free one, see ``.port``);
    `prefill_seconds_per_token`: the prefill of each prompt token the prefix cache does
    not hold, `cache_blocks` its size in 16-token blocks (prefix_cache.py); `task`: a
    generative model, or a pooling one (embed, rerank; vllm only: pooling.py)."""
    simulator = _simulator(
        engine, model, slots, service_time, prefill_seconds_per_token, cache_blocks, task
    )
    runner = web.AppRunner(
        _application(simulator),
        access_log=None,
        # A client that goes away (waiting, or mid-stream) ends its handler: it leaves
        # the queue or frees its slot.
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
    return SimulatorHandle(engine, model, host, sock.getsockname()[1], runner, simulator)
