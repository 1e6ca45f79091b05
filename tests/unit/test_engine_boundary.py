"""An engine is one module: no module of the operator package outside `engines/` names an
engine, in code, strings, comments or docstrings. What differs between engines is asked
of `openmodel.engines` (the registry) instead; a comment naming an engine marks engine
knowledge in the wrong place.

The exemptions are listed below, each with its reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from openmodel.engines import ENGINES

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "openmodel"
# Every registered engine's name, and the other spellings engines go by in prose, images,
# binaries and metric names. Matched case-insensitively, not inside a longer word.
SPELLINGS = sorted(
    set(ENGINES)
    | {"vllm", "tgi", "sglang", "llamacpp", "llama.cpp", "llama-server", "llama_cpp"}
    | {"text-generation-inference", "text-generation-launcher"}
)
ENGINE_WORD = re.compile(
    r"(?<![a-z0-9])(" + "|".join(re.escape(s) for s in SPELLINGS) + r")(?![a-z])",
    re.IGNORECASE,
)
# Whole directories of the package that may name engines, and why.
EXEMPT_DIRS = {
    # Where engine knowledge belongs.
    "engines": "the engine modules and their registry",
    # A test engine: it imitates each engine's HTTP API and /metrics body, so it names
    # them by nature (and arguably belongs outside the operator package).
    "simulator": "the simulated engines used by the tests and benchmarks",
}
# Single definitions that may name engines, by module and the name they assign, and why.
EXEMPT_DEFINITIONS = {
    # The API's enum of spec.engine values and its default: the contract in docs/api.md
    # and the CRD; api.py cannot ask the registry (the engines import api).
    ("api.py", "ENGINES"): "spec.engine's enum, part of the API",
    ("api.py", "DEFAULT_ENGINE"): "spec.engine's default, part of the API",
}


def exempt_lines(path: Path, source: str, names: set[str] | None = None) -> set[int]:
    """The lines of the exempt definitions in `path` (of those in `names` when given)."""
    module = path.relative_to(PACKAGE).as_posix()
    if names is None:
        names = {name for (where, name) in EXEMPT_DEFINITIONS if where == module}
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id in names for t in targets):
                lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def engine_mentions() -> list[str]:
    """`module:line: text` of each line outside the exemptions that names an engine."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in EXEMPT_DIRS:
            continue
        source = path.read_text()
        skipped = exempt_lines(path, source)
        for number, line in enumerate(source.splitlines(), start=1):
            if number not in skipped and ENGINE_WORD.search(line):
                found.append(f"{relative.as_posix()}:{number}: {line.strip()}")
    return found


def test_no_module_outside_engines_names_an_engine() -> None:
    mentions = engine_mentions()
    modules = sorted({m.split(":", 1)[0] for m in mentions})
    assert not mentions, (
        f"{len(modules)} modules name an engine outside openmodel/engines/ (ask the registry, "
        f"or move the fact into engines/<name>.py):\n" + "\n".join(mentions)
    )


def test_the_pattern_finds_engine_names_and_only_them() -> None:
    """The check itself can fail: it sees each spelling, in prose and in identifiers."""
    for text in (
        "vLLM 0.31",
        "TGI's LORA_ADAPTERS",
        "tgi_queue_size",
        "sglang:num_queue_reqs",
        "llama.cpp's -ub",
        "engine == 'llamacpp'",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
        "ghcr.io/huggingface/text-generation-inference:3.3.6",
    ):
        assert ENGINE_WORD.search(text), text
    for text in ("settings", "Tgif", "the engine's queue gauge", "MetricNames"):
        assert not ENGINE_WORD.search(text), text


def test_every_exempt_definition_exists() -> None:
    """An exemption that no longer matches anything is removed, not left to widen."""
    for module, name in EXEMPT_DEFINITIONS:
        path = PACKAGE / module
        assert exempt_lines(path, path.read_text(), {name}), f"{module}: no definition of {name}"
    for directory in EXEMPT_DIRS:
        assert (PACKAGE / directory).is_dir(), directory
