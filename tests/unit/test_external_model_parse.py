"""ExternalModel parsing: the defaults, and every bad field named as the API server would."""

from __future__ import annotations

from typing import Any

import pytest

from openmodel.api import SecretKeyRef, SpecError
from openmodel.external_model import (
    DEFAULT_API_KEY_HEADER,
    HeaderRule,
    TokenPrice,
    parse_external_model,
)

SPEC: dict[str, Any] = {"baseURL": "https://api.example.test/v1/", "upstreamModel": "big-1"}


def external(spec: dict[str, Any], name: str = "frontier") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team-a", "generation": 3}, "spec": spec}


def test_defaults() -> None:
    model = parse_external_model(external(SPEC))
    assert model.served_name == "frontier"  # metadata.name
    assert model.base_url == "https://api.example.test/v1"  # no trailing slash
    assert model.upstream_model == "big-1"
    assert model.api_key_secret is None
    assert model.api_key_header == DEFAULT_API_KEY_HEADER
    assert model.headers == ()
    assert model.timeout_seconds == 120
    assert model.price is None
    assert model.task == "generate"
    assert (model.namespace, model.generation) == ("team-a", 3)


def test_every_field() -> None:
    spec = {
        **SPEC,
        "servedModelName": "gpt-frontier",
        "apiKeySecretRef": {"name": "frontier-key", "key": "token"},
        "apiKeyHeader": "api-key",
        "headers": [{"name": "OpenAI-Organization", "value": "org-1"}],
        "timeoutSeconds": 30,
        "price": {"promptPerMillionTokens": 1.25, "completionPerMillionTokens": 10},
        "task": "embed",
        "egress": {"cidrs": ["203.0.113.0/24"]},
    }
    model = parse_external_model(external(spec))
    assert model.served_name == "gpt-frontier"
    assert model.api_key_secret == SecretKeyRef(name="frontier-key", key="token")
    assert model.api_key_header == "api-key"
    assert model.headers == (HeaderRule("OpenAI-Organization", "org-1"),)
    assert model.timeout_seconds == 30
    assert model.price == TokenPrice(prompt_per_million=1.25, completion_per_million=10.0)
    assert model.task == "embed"
    assert model.egress_cidrs == ("203.0.113.0/24",)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"baseURL": None}, "spec.baseURL"),
        ({"baseURL": "ftp://host/v1"}, "spec.baseURL"),
        ({"baseURL": "https://user:pw@host/v1"}, "spec.baseURL"),
        ({"baseURL": "https://host/v1?key=x"}, "spec.baseURL"),
        ({"upstreamModel": ""}, "spec.upstreamModel"),
        ({"task": "chat"}, "spec.task"),
        ({"timeoutSeconds": 0}, "spec.timeoutSeconds"),
        ({"timeoutSeconds": True}, "spec.timeoutSeconds"),
        ({"apiKeySecretRef": {"name": "k"}}, "spec.apiKeySecretRef"),
        ({"apiKeyHeader": "bad header"}, "spec.apiKeyHeader"),
        ({"headers": [{"name": "Authorization", "value": "x"}]}, "spec.headers[0].name"),
        ({"headers": [{"name": "X-A", "value": "a\r\nB: c"}]}, "spec.headers[0].value"),
        ({"headers": {"X-A": "a"}}, "spec.headers"),
        ({"price": {"promptPerMillionTokens": -1}}, "spec.price.promptPerMillionTokens"),
        ({"egress": {"cidrs": "10.0.0.0/8"}}, "spec.egress.cidrs"),
        ({"egress": {"cidrs": ["10.0.0.1/8"]}}, "spec.egress.cidrs[0]"),  # host bits set
        ({"egress": {"cidrs": ["api.example.com"]}}, "spec.egress.cidrs[0]"),
    ],
)
def test_bad_values_name_their_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_external_model(external({**SPEC, **patch}))
    assert err.value.field == field


def test_a_spec_is_required() -> None:
    with pytest.raises(SpecError) as err:
        parse_external_model({"metadata": {"name": "x"}})
    assert err.value.field == "spec"
