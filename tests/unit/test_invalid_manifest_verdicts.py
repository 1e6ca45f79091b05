"""`openmodel validate`, offline, gives the API server's verdict on the whole invalid corpus
(tests/invalid-manifests/, refused by the real server in
tests/e2e/test_invalid_manifest_corpus.py): exit 1 and a refusal naming the corpus' field.
The shipped examples still validate clean, with no unknown field reported."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from openmodel import cli
from openmodel.api_schema import (
    ENFORCED_KEYWORDS,
    IGNORED_KEYWORDS,
    check_object,
    crd_schema,
    schema_keywords,
)

from invalid_manifests import InvalidManifest, load_corpus, names_field

REPO = Path(__file__).resolve().parents[2]
CORPUS = load_corpus()
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# `<file>: document N: <field>: <message> (<Reason>)`
REFUSAL = re.compile(r"^.*?: document \d+: (?P<field>\S+): (?P<message>.*) \((?P<reason>\w+)\)$")


def validate(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str]]:
    # Offline: no Hub endpoint, the built-in platform config.
    for var in ("HF_ENDPOINT", "OPENMODEL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    out = io.StringIO()
    code = cli.main(["validate", "-f", str(path)], out=out)
    return code, out.getvalue().splitlines()


def refused_fields(lines: list[str]) -> list[str]:
    return [m["field"] for line in lines if (m := REFUSAL.match(line))]


def test_the_corpus_is_big_enough_and_one_document_each() -> None:
    assert len(CORPUS) >= 50
    assert len({m.id for m in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("manifest", CORPUS, ids=lambda m: m.id)
def test_validate_refuses_naming_the_field(
    manifest: InvalidManifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, lines = validate(manifest.path, monkeypatch)
    assert code == cli.EXIT_INVALID, lines
    fields = refused_fields(lines)
    assert fields, f"no refusal line in {lines}"
    assert any(names_field(f, manifest.field) for f in fields), (
        f"{manifest.id}: expected a refusal naming {manifest.field} ({manifest.why}), got {lines}"
    )


def test_verdict_agreement_over_the_whole_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The count the report quotes: every manifest refused, naming its field."""
    agree = 0
    for manifest in CORPUS:
        code, lines = validate(manifest.path, monkeypatch)
        named = any(names_field(f, manifest.field) for f in refused_fields(lines))
        agree += code == cli.EXIT_INVALID and named
    assert agree == len(CORPUS), f"{agree}/{len(CORPUS)} agree"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_clean(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, lines = validate(path, monkeypatch)
    assert code == 0, lines
    assert all(": valid (" in line for line in lines), lines
    for doc in yaml.safe_load_all(path.read_text()):
        assert check_object(doc) == [], path.name


STORED_OBJECTS = sorted((REPO / "argocd" / "testdata").glob("*.yaml"))


@pytest.mark.parametrize("path", STORED_OBJECTS, ids=lambda p: p.name)
def test_stored_objects_with_status_pass_the_schema_walk(path: Path) -> None:
    """Argo CD's fixtures are ModelDeployments as the API server returns them (status,
    managed metadata): the walk finds nothing there either."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "ModelDeployment"]
    assert docs
    for doc in docs:
        assert check_object(doc) == [], path.name


def test_a_status_time_that_is_not_a_date_time_is_refused() -> None:
    body = base()
    body["status"] = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "",
                "lastTransitionTime": "yesterday",
            }
        ]
    }
    assert [p.field for p in check_object(body)] == ["status.conditions[0].lastTransitionTime"]


def test_unknown_fields_are_reported_like_strict_field_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = yaml.safe_load(EXAMPLES[0].read_text())
    body["spec"]["adaptors"] = [{"name": "sql", "source": "org/sql"}]
    body["spec"]["gpu"]["typ"] = "x"
    body["metadata"]["lables"] = {"a": "b"}
    path = tmp_path / "typos.yaml"
    path.write_text(yaml.safe_dump(body))
    code, lines = validate(path, monkeypatch)
    assert code == cli.EXIT_INVALID
    assert sorted(refused_fields(lines)) == ["metadata.lables", "spec.adaptors", "spec.gpu.typ"]
    assert all('unknown field "' in line and "(UnknownField)" in line for line in lines)


def base() -> dict[str, Any]:
    return {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "labels": {"team": "a"}},
        "spec": {"model": "org/m", "gpu": {"type": "nvidia-l4"}},
    }


def test_env_items_keep_unknown_fields_and_nulls_are_dropped() -> None:
    body = base()
    # env items preserve unknown fields (valueFrom etc.), as the CRD says.
    body["spec"]["env"] = [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    # The API server drops null fields of non-nullable schemas instead of refusing them.
    body["spec"]["replicas"] = None
    assert check_object(body) == []


def test_int_or_string_and_int32_bounds() -> None:
    body = base()
    body["spec"]["cache"] = {"size": 200}
    assert check_object(body) == []
    body["spec"]["cache"] = {"size": 2.5}
    assert [p.field for p in check_object(body)] == ["spec.cache.size"]
    body = base()
    body["spec"]["replicas"] = 2**31 - 1
    assert check_object(body) == []
    body["spec"]["replicas"] = 2**31
    assert [p.reason for p in check_object(body)] == ["FieldValueInvalid"]


def test_every_schema_keyword_is_enforced_or_deliberately_left() -> None:
    """A new kind of constraint in the CRD (say `uniqueItems`) fails here until the
    offline walker checks it, so validate cannot silently accept what the server refuses."""
    used = schema_keywords(crd_schema())
    assert used - ENFORCED_KEYWORDS - IGNORED_KEYWORDS == set()
