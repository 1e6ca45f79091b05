"""The ExternalModel CRD on the real API server: a good object is accepted with its
defaults, and each CEL rule refuses what it is for, naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel_fixtures import EXTERNAL_MODEL_CRD_FILE, GROUP, VERSION

pytestmark = pytest.mark.cluster

PLURAL = "externalmodels"
GOOD: dict[str, Any] = {
    "baseURL": "https://api.example.test/v1",
    "upstreamModel": "big-1",
    "apiKeySecretRef": {"name": "frontier-key", "key": "token"},
}


def body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExternalModel",
        "metadata": {"name": name},
        "spec": spec,
    }


def refusal(custom: client.CustomObjectsApi, namespace: str, spec: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body("bad", spec), field_validation="Strict"
        )
    assert err.value.status == 422, err.value.body
    return str(json.loads(err.value.body or "{}").get("message"))


def test_a_good_external_model_is_accepted_with_its_defaults(
    api_client: client.ApiClient, namespace: str, external_model_crd: None
) -> None:
    custom = client.CustomObjectsApi(api_client)
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body("frontier", GOOD), field_validation="Strict"
    )
    assert created["spec"]["timeoutSeconds"] == 120
    assert created["spec"]["task"] == "generate"


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        ({"baseURL": "ftp://host/v1"}, "spec.baseURL"),
        ({"baseURL": "https://user:pw@host/v1"}, "spec.baseURL"),
        ({"baseURL": "https://host/v1?key=x"}, "spec.baseURL"),
        ({"headers": [{"name": "authorization", "value": "x"}]}, "is set by the gateway"),
        ({"headers": [{"name": "X-A", "value": "a\nB: c"}]}, "must be on one line"),
        ({"task": "chat"}, "spec.task"),
        ({"timeoutSeconds": 0}, "spec.timeoutSeconds"),
        ({"upstreamModel": None}, "upstreamModel"),
    ],
)
def test_each_rule_refuses_naming_its_field(
    api_client: client.ApiClient,
    namespace: str,
    external_model_crd: None,
    patch: dict[str, Any],
    words: str,
) -> None:
    spec = {k: v for k, v in {**GOOD, **patch}.items() if v is not None}
    assert words in refusal(client.CustomObjectsApi(api_client), namespace, spec)


def test_every_rule_is_exercised() -> None:
    """Each CEL message of the CRD is one the test above expects."""
    crd = yaml.safe_load(EXTERNAL_MODEL_CRD_FILE.read_text())
    messages: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            messages.extend(r["message"] for r in node.get("x-kubernetes-validations") or [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(crd)
    assert len(messages) == 3
    assert any(m.startswith("must be an http(s)://") for m in messages)
    assert "is set by the gateway, not here" in messages
    assert "must be on one line" in messages
