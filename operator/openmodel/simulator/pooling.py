"""A pooling model's answers, made up but stable: embeddings, scores, the pairs a score
request names. Pure.

What a real vLLM 0.32 (CPU build) serves for a pooling model, seen here with tiny random
BERT encoders (tests/e2e/test_pooling_contract.py compares them on every real run):

- an embedding model (`--runner pooling`, `BertModel`): /v1/embeddings, and /rerank,
  /v1/rerank, /v2/rerank, /score, /v1/score by the cosine of the two embeddings;
- a cross-encoder (`BertForSequenceClassification`, one label): /rerank, /v1/rerank,
  /v2/rerank, /score, /v1/score, and no /v1/embeddings (404);
- neither serves /v1/completions nor /v1/chat/completions (404);
- every input (or query-document pair) is one request inside the engine, counted in
  `vllm:num_requests_running` / `waiting` like a generation and finished as `stop`;
- refusals, 400 in vLLM's error shape: an empty embeddings `input` list "You must pass
  at least one prompt"; an empty `documents` (rerank) or second text list (score) "At
  least one text_pair element must be given".
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Mapping
from typing import Any, Final

TASKS: Final = ("generate", "embed", "rerank")
EMBEDDING_DIM: Final = 64
EMPTY_INPUT: Final = "You must pass at least one prompt"
EMPTY_PAIRS: Final = "At least one text_pair element must be given"
# The pairs of a score request: (first, second) field names, vLLM's accepted spellings.
SCORE_FIELDS: Final = (("text_1", "text_2"), ("data_1", "data_2"), ("queries", "documents"),
                       ("queries", "items"))  # fmt: skip


class PoolingError(ValueError):
    """A request the engine refuses with 400 and this message."""


def embedding(text: str) -> list[float]:
    """A unit vector that depends only on the text (vLLM normalizes embeddings)."""
    digest = b""
    while len(digest) < EMBEDDING_DIM:
        digest += hashlib.sha256(digest + text.encode()).digest()
    raw = [b / 127.5 - 1.0 for b in digest[:EMBEDDING_DIM]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def encoded(vector: list[float], encoding_format: Any) -> list[float] | str:
    """As `encoding_format` asks: the floats, or base64 of little-endian float32s (what
    the official OpenAI SDK asks for unless told otherwise, and decodes)."""
    if encoding_format in (None, "float"):
        return vector
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    raise PoolingError(f"encoding_format must be float or base64, not {encoding_format!r}")


def score(task: str, query: str, document: str) -> float:
    """An embedding model's score is the cosine of the two embeddings (as vLLM's); a
    cross-encoder's, a sigmoid of one logit in (0, 1), here from a hash of the pair."""
    if task == "embed":
        return sum(a * b for a, b in zip(embedding(query), embedding(document), strict=True))
    digest = hashlib.sha256(f"{query}\x00{document}".encode()).digest()
    logit = int.from_bytes(digest[:4], "big") / 2**32 * 8.0 - 4.0
    return 1.0 / (1.0 + math.exp(-logit))


def texts(value: Any, empty_message: str, field: str) -> list[str]:
    """A string or a list of strings (never empty) as a list."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise PoolingError(f"`{field}` must be a string or a list of strings")
    if not items:
        raise PoolingError(empty_message)
    return items


def rerank_pairs(body: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The query and the documents of a rerank request (Jina's and Cohere's shape)."""
    query = body.get("query")
    if not isinstance(query, str):
        raise PoolingError("`query` must be a string")
    return query, texts(body.get("documents"), EMPTY_PAIRS, "documents")


def score_pairs(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (first, second) pairs of a score request: one first text against each second
    one, or two lists of one length pairwise."""
    for first_field, second_field in SCORE_FIELDS:
        if first_field in body and second_field in body:
            firsts = texts(body[first_field], EMPTY_PAIRS, first_field)
            seconds = texts(body[second_field], EMPTY_PAIRS, second_field)
            break
    else:
        raise PoolingError("a score request needs `text_1` and `text_2` (or `queries` and "
                           "`documents`)")  # fmt: skip
    if len(firsts) == 1:
        return [(firsts[0], s) for s in seconds]
    if len(firsts) != len(seconds):
        raise PoolingError(
            f"`{first_field}` must hold one text or as many as `{second_field}` "
            f"({len(firsts)} against {len(seconds)})"
        )
    return list(zip(firsts, seconds, strict=True))
