"""vLLM 0.32's OpenAI response bodies, streamed and not: pure builders, no I/O.

Every key and its place is what a real vLLM 0.32 (CPU build) sent here for the tiny
test model (tests/e2e/real_engine/openai_contract.py compares them on every real-engine
run); values the simulator cannot know (ids, text) are stand-ins of the same type.

Streams are server-sent events: ``data: <compact JSON>`` and a blank line per event,
``data: [DONE]`` last, Content-Type ``text/event-stream; charset=utf-8``.

- completions: one ``text_completion`` chunk per token; the last token's chunk carries
  ``finish_reason``. Each choice has ``index, text, logprobs, finish_reason, stop_reason,
  prompt_token_ids, token_ids``.
- chat: first a ``chat.completion.chunk`` whose delta is ``{role: assistant, content: ""}``
  (that chunk alone has top-level ``prompt_token_ids`` and ``prompt_text``, both null, and
  its choice has no ``stop_reason`` nor ``token_ids``), then one chunk per token with delta
  ``{content}``; the last carries ``finish_reason`` and ``stop_reason``.
- ``system_fingerprint`` appears on the last token's chunk when no usage chunk follows;
  with ``stream_options.include_usage`` a final chunk ``choices: []`` with ``usage``
  (``prompt_tokens, total_tokens, completion_tokens``) and ``system_fingerprint`` does.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Final

SSE_CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
SSE_DONE: Final = b"data: [DONE]\n\n"
# vLLM's is "vllm-<version>-<8 hex of a config hash>".
SYSTEM_FINGERPRINT: Final = "vllm-0.32.0-5e5e5e5e"
COMPLETION_OBJECT: Final = "text_completion"
CHAT_OBJECT: Final = "chat.completion"
CHAT_CHUNK_OBJECT: Final = "chat.completion.chunk"

JSON = dict[str, Any]


def request_id(prefix: str, header: str | None = None) -> str:
    """vLLM's ``<prefix>-<X-Request-Id or 16 hex digits>``."""
    return f"{prefix}-{header if header is not None else uuid.uuid4().hex[:16]}"


def sse_event(payload: JSON) -> bytes:
    """One event, compact JSON as pydantic's model_dump_json writes it."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}\n\n".encode()


@dataclass(frozen=True)
class Head:
    """What every chunk of one response repeats."""

    id: str
    object: str
    created: int
    model: str

    def fields(self) -> JSON:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model}


def stream_usage(prompt: int, completion: int) -> JSON:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }


def full_usage(prompt: int, completion: int) -> JSON:
    return {
        **stream_usage(prompt, completion),
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def completion_chunk(head: Head, index: int, text: str, finish_reason: str | None,
                     fingerprint: bool) -> JSON:  # fmt: skip
    chunk = head.fields()
    chunk["choices"] = [
        {
            "index": index,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "prompt_token_ids": None,
            "token_ids": None,
        }
    ]
    if fingerprint:
        chunk["system_fingerprint"] = SYSTEM_FINGERPRINT
    return chunk


def chat_role_chunk(head: Head) -> JSON:
    chunk = head.fields()
    chunk["choices"] = [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    chunk["prompt_token_ids"] = None
    chunk["prompt_text"] = None
    return chunk


def chat_content_chunk(head: Head, text: str, finish_reason: str | None,
                       fingerprint: bool) -> JSON:  # fmt: skip
    choice: JSON = {"index": 0, "delta": {"content": text}, "logprobs": None}
    choice["finish_reason"] = finish_reason
    if finish_reason is not None:
        choice["stop_reason"] = None
    choice["token_ids"] = None
    chunk = head.fields()
    chunk["choices"] = [choice]
    if fingerprint:
        chunk["system_fingerprint"] = SYSTEM_FINGERPRINT
    return chunk


def usage_chunk(head: Head, prompt: int, completion: int) -> JSON:
    chunk = head.fields()
    chunk["choices"] = []
    chunk["usage"] = stream_usage(prompt, completion)
    chunk["system_fingerprint"] = SYSTEM_FINGERPRINT
    return chunk


def _tail(body: JSON, usage: JSON, extra: tuple[str, ...]) -> JSON:
    body["service_tier"] = None
    body["system_fingerprint"] = SYSTEM_FINGERPRINT
    body["usage"] = usage
    for key in extra:
        body[key] = None
    return body


def completion_response(head: Head, texts: list[str], prompt: int, completion: int) -> JSON:
    body = head.fields()
    body["choices"] = [
        {
            "index": i,
            "text": text,
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }
        for i, text in enumerate(texts)
    ]
    extra = ("kv_transfer_params", "ec_transfer_params", "metrics")
    return _tail(body, full_usage(prompt, completion), extra)


def chat_response(head: Head, text: str, prompt: int, completion: int) -> JSON:
    message = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    body = head.fields()
    body["choices"] = [
        {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
            "token_ids": None,
            "routed_experts": None,
        }
    ]
    extra = (
        "prompt_logprobs", "prompt_token_ids", "prompt_text",
        "kv_transfer_params", "ec_transfer_params", "metrics",
    )  # fmt: skip
    return _tail(body, full_usage(prompt, completion), extra)


def embedding_response(head: Head, vectors: list[list[float] | str], prompt: int) -> JSON:
    """vLLM's EmbeddingResponse.model_dump(): usage keeps completion_tokens 0 and the
    two null details (a real vLLM's answer for a tiny BERT embedding model)."""
    body = head.fields()
    body["data"] = [
        {"index": i, "object": "embedding", "embedding": vector} for i, vector in enumerate(vectors)
    ]
    body["usage"] = full_usage(prompt, 0)
    return body


def score_response(head: Head, scores: list[float], prompt: int) -> JSON:
    """vLLM's ScoreResponse: `data` of `{index, object: "score", score}` in the order of
    the pairs, the full usage (completion_tokens 0, null details); the id is `score-…`."""
    body = head.fields()
    body["data"] = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
    body["usage"] = full_usage(prompt, 0)
    return body


def rerank_response(
    head: Head, documents: list[str], scores: list[float], top_n: int, prompt: int
) -> JSON:
    """vLLM's RerankResponse (Jina's shape): `id, model, usage, results` and no `object`
    nor `created`; usage is `{prompt_tokens, total_tokens}` alone; results by relevance,
    highest first, the first `top_n` (0: all), each `{index, document: {text,
    multi_modal}, relevance_score}` (the document comes back whatever
    `return_documents` says)."""
    ranked = sorted(range(len(documents)), key=lambda i: scores[i], reverse=True)
    if 0 < top_n < len(ranked):
        ranked = ranked[:top_n]
    return {
        "id": head.id,
        "model": head.model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        "results": [
            {
                "index": i,
                "document": {"text": documents[i], "multi_modal": None},
                "relevance_score": scores[i],
            }
            for i in ranked
        ],
    }
