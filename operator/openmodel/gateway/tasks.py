"""What a model is for, and which paths the gateway routes to it. Pure.

A ModelDeployment's task (issue 31's contract): `status.task` (what the operator decided,
reading the checkpoint when the spec does not say), else `spec.task`, else `generate`.

    task_of(body)                  # "generate" | "embed" | "rerank"
    TASK_PATHS["embed"]            # ("/v1/embeddings",)
    path_task("/v1/rerank")        # "rerank"; None for a path no task serves

A request to a path its model's task does not serve (a chat to an embedding model, an
embedding of a reranker) is refused by the gateway with a 400 naming the task, before
any hold, limit or engine call: the engine would answer a 404 or a stack trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

GENERATE: Final = "generate"
EMBED: Final = "embed"
RERANK: Final = "rerank"

# Rerank in Jina's shape at /v1/rerank (and the unversioned and Cohere's v2 paths beside
# it), scores at /v1/score and /score: the paths the engines serve them at (docs/gateway.md).
TASK_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    GENERATE: ("/v1/chat/completions", "/v1/completions"),
    EMBED: ("/v1/embeddings",),
    RERANK: ("/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score"),
}
ROUTED_PATHS: Final = tuple(path for paths in TASK_PATHS.values() for path in paths)
POOLING_PATHS: Final = frozenset(TASK_PATHS[EMBED] + TASK_PATHS[RERANK])

_DESCRIPTIONS: Final = {
    GENERATE: "a generative model",
    EMBED: "an embedding model",
    RERANK: "a reranker",
}


def task_of(body: Mapping[str, Any]) -> str:
    """A ModelDeployment object's task: status.task, else spec.task, else generate."""
    for part in ("status", "spec"):
        section = body.get(part)
        task = section.get("task") if isinstance(section, Mapping) else None
        if isinstance(task, str) and task:
            return task
    return GENERATE


def path_task(path: str) -> str | None:
    for task, paths in TASK_PATHS.items():
        if path in paths:
            return task
    return None


def wrong_task_message(model: str, task: str, path: str) -> str:
    """Why `model` (of `task`) does not serve `path`, and what it serves instead."""
    serves = TASK_PATHS.get(task, ())
    what = _DESCRIPTIONS.get(task, f"a model of task {task!r}")
    served = ", ".join(serves) if serves else "nothing through this gateway"
    return f"`{model}` is {what} (task: {task}): it serves {served}, not {path}"
