"""Every manifest of tests/invalid-manifests/ is refused by the real API server at create,
with a message naming the field the corpus says.

One create per manifest in the test's namespace, with `fieldValidation=Strict` (what
`kubectl apply --validate=strict` and `kubectl create --validate=strict` ask for), so a
typo such as `adaptors:` is refused instead of pruned with a warning. Creates are real,
not dry runs; a manifest the server wrongly accepts is left in the namespace, which the
fixture deletes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from invalid_manifests import load_corpus, message_names_field
from openmodel_fixtures import CRD_FILE, EXAMPLES, GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

CORPUS = load_corpus()


def server_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        return str(error.body or error.reason)


def test_every_corpus_manifest_is_refused_naming_its_field(
    api_client: client.ApiClient, namespace: str, crd: None
) -> None:
    custom = client.CustomObjectsApi(api_client)
    wrong: list[str] = []
    verdicts: list[str] = []
    for manifest in CORPUS:
        body = {**manifest.body, "metadata": {**manifest.body.get("metadata", {})}}
        body["metadata"]["namespace"] = namespace
        try:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
            )
        except ApiException as error:
            message = server_message(error)
            verdicts.append(f"{manifest.id}: {error.status} {message}")
            if error.status not in (400, 422):
                wrong.append(f"{manifest.id}: status {error.status}, not 400/422: {message}")
            elif not message_names_field(message, manifest.field) and not (
                manifest.server_words and manifest.server_words in message
            ):
                wrong.append(f"{manifest.id}: refused without naming {manifest.field}: {message}")
            continue
        verdicts.append(f"{manifest.id}: ACCEPTED")
        wrong.append(f"{manifest.id}: accepted ({manifest.field}: {manifest.why})")
    print("\n".join(verdicts))
    assert len(CORPUS) >= 50
    assert not wrong, f"{len(wrong)} of {len(CORPUS)} wrong:\n" + "\n".join(wrong)
    # Every CEL rule refuses at least one manifest, so the unit test's offline verdicts
    # on the same corpus cover each rule's Python twin in openmodel.api.
    unexercised = [
        m
        for m in cel_messages(yaml.safe_load(CRD_FILE.read_text()))
        if not any(m in v for v in verdicts)
    ]
    assert not unexercised, f"CEL rules no corpus manifest trips: {unexercised}"


def cel_messages(node: Any) -> list[str]:
    """The message of every x-kubernetes-validations rule in the CRD."""
    found: list[str] = []
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations") or []:
            found.append(rule["message"])
        for value in node.values():
            found.extend(cel_messages(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(cel_messages(value))
    return found


def test_the_examples_pass_strict_validation(
    api_client: client.ApiClient, namespace: str, crd: None
) -> None:
    """The rules added for the corpus refuse none of the shipped examples (dry run: no
    operator work is started by this test)."""
    custom = client.CustomObjectsApi(api_client)
    for path in sorted(EXAMPLES.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        body["metadata"]["namespace"] = namespace
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict", dry_run="All"
        )
