"""The invalid-ModelDeployment corpus (tests/invalid-manifests/): loading and field matching,
shared by the unit test (`openmodel validate` offline) and the e2e test (the API server)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CORPUS_DIR = Path(__file__).resolve().parent / "invalid-manifests"
_HEADER = re.compile(r"^# (field|why|server): (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class InvalidManifest:
    path: Path
    field: str  # the field the refusal must name, as the API server writes paths
    why: str
    body: dict[str, Any]
    # Where the API server names the field in words instead of its path (apiVersion:
    # "the API version in the data ..."): those words.
    server_words: str | None = None

    @property
    def id(self) -> str:
        return self.path.stem


def load_corpus() -> list[InvalidManifest]:
    corpus = []
    for path in sorted(CORPUS_DIR.glob("*.yaml")):
        text = path.read_text()
        header = dict(_HEADER.findall(text))
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        assert {"field", "why"} <= set(header), f"{path.name}: needs '# field:' and '# why:'"
        assert len(docs) == 1, f"{path.name}: one document per file, got {len(docs)}"
        corpus.append(
            InvalidManifest(path, header["field"], header["why"], docs[0], header.get("server"))
        )
    return corpus


def names_field(named: str, field: str) -> bool:
    """A refusal naming `named` names the corpus' `field` when it is that field or a part
    of it (`spec.adapters[0].name` names `spec.adapters`)."""
    return named == field or named.startswith((f"{field}.", f"{field}["))


def message_names_field(message: str, field: str) -> bool:
    """The API server's message names the field: as a path (`spec.gpu.count: Invalid
    value`), or quoted in a strict-decoding error (`unknown field "spec.adaptors"`)."""
    edge_before, edge_after = r"(^|[\s\"(\[.])", r"($|[\s\":.,\[\])])"
    return re.search(edge_before + re.escape(field) + edge_after, message) is not None
