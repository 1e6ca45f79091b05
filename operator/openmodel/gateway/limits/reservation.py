"""How many tokens a request may use, known before it runs: what admission reserves.

    reserved = reserve_tokens(path, body, default_max_tokens)

completion: `max_completion_tokens`, else `max_tokens`, else the platform's
`defaultMaxTokens`; times `n` choices, times the prompts of a list-of-prompts completion;
0 for embeddings, rerank and score (a pooling model generates nothing). prompt: the UTF-8
bytes of the JSON of `messages` / `prompt` / `input` divided by 4, rounded up (about four
bytes a token for English with today's BPE tokenizers; the JSON punctuation and role
names stand in for the chat template's tokens); for rerank and score, of the query and
every document (the field names of rerank and score requests) together, although a
cross-encoder reads the query once per document. The settlement against the engine's
usage corrects both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from openmodel.gateway.tasks import POOLING_PATHS

_PROMPT_FIELDS: Final = ("messages", "prompt", "input")
# The texts of a rerank (query, documents) or score request (text_1/text_2, data_1/data_2,
# queries with documents or items).
_SCORING_FIELDS: Final = (
    "query", "documents", "text_1", "text_2", "data_1", "data_2", "queries", "items",
)  # fmt: skip
BYTES_PER_TOKEN: Final = 4


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def _tokens(value: Any) -> int:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)


def prompt_estimate(body: Mapping[str, Any]) -> int:
    for name in _PROMPT_FIELDS:
        if name in body:
            return _tokens(body[name])
    return sum(_tokens(body[name]) for name in _SCORING_FIELDS if name in body)


def completion_reservation(path: str, body: Mapping[str, Any], default_max_tokens: int) -> int:
    if path in POOLING_PATHS:
        return 0
    max_tokens = (
        _positive_int(body.get("max_completion_tokens"))
        or _positive_int(body.get("max_tokens"))
        or default_max_tokens
    )
    choices = _positive_int(body.get("n")) or 1
    prompt = body.get("prompt")
    # A list of strings is that many prompts (a list of token ids is one).
    many = isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)
    prompts = len(prompt) if isinstance(prompt, list) and many else 1
    return max_tokens * choices * max(1, prompts)


def reserve_tokens(path: str, body: Mapping[str, Any], default_max_tokens: int) -> int:
    return prompt_estimate(body) + completion_reservation(path, body, default_max_tokens)
