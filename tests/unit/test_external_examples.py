"""The hybrid examples: examples/external/frontier.yaml (an ExternalModel with the Role and
RoleBinding docs/api.md shows) parses, its Role grants exactly `get` on its key Secret to
the gateway's ServiceAccount, and examples/qwen7b-overflow.yaml overflows to its name."""

from __future__ import annotations

from pathlib import Path

import yaml

from openmodel.config import GatewayConfig
from openmodel.engines import parse_model_deployment
from openmodel.external_model import parse_external_model
from openmodel.privacy.gateway_egress import upstream_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_external_model_example_and_its_grant() -> None:
    objs = {
        d["kind"]: d
        for d in yaml.safe_load_all((EXAMPLES / "external" / "frontier.yaml").read_text())
    }
    model = parse_external_model(objs["ExternalModel"])
    assert model.api_key_secret is not None and model.egress_cidrs
    assert upstream_port(model.base_url) == 443
    role, binding = objs["Role"], objs["RoleBinding"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == model.namespace
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"],
         "resourceNames": [model.api_key_secret.name], "verbs": ["get"]}
    ]  # fmt: skip
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    gateway = GatewayConfig()
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": gateway.service_account_name,
         "namespace": gateway.demand_namespace}
    ]  # fmt: skip


def test_the_overflow_example_names_the_external_model() -> None:
    md = parse_model_deployment(yaml.safe_load((EXAMPLES / "qwen7b-overflow.yaml").read_text()))
    external = next(yaml.safe_load_all((EXAMPLES / "external" / "frontier.yaml").read_text()))
    assert md.spec.overflow is not None
    assert md.spec.overflow.model == parse_external_model(external).served_name
    assert md.namespace == external["metadata"]["namespace"]
