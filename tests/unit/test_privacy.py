"""What may leave an engine pod: the telemetry and offline switches each engine gets, the
NetworkPolicy each ModelDeployment gets (per engine and per model source), the egress
exceptions a platform allows, the private-data namespace marker, and status.egress."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from openmodel.api import SpecError
from openmodel.config import ConfigError, PlatformConfig, parse_config
from openmodel.engines import ENGINES, engine_for, parse_model_deployment
from openmodel.privacy.egress import EGRESS_NOT_ALLOWED, Egress, EgressPlan
from openmodel.problems import Problem
from openmodel.reconcile.plan import make_plan
from openmodel.reconcile.render import render_children
from openmodel.reconcile.status import EGRESS_OPEN, Observation, build_status

# One spec per engine that it serves from a Hugging Face repo, a claim and (where it
# streams them) an object store.
SPECS: dict[str, dict[str, Any]] = {
    "vllm": {"model": "Qwen/Qwen2.5-7B-Instruct", "gpu": {"type": "nvidia-l4", "count": 1}},
    "sglang": {"model": "Qwen/Qwen2.5-7B-Instruct", "gpu": {"type": "nvidia-l4", "count": 1}},
    "tgi": {"model": "Qwen/Qwen2.5-7B-Instruct", "gpu": {"type": "nvidia-l4", "count": 1}},
    "llamacpp": {
        "model": "Qwen/Qwen2.5-7B-Instruct-GGUF",
        "ggufFile": "qwen2.5-7b-instruct-q4_k_m.gguf",
        "gpu": {"type": "nvidia-l4", "count": 1},
    },
}
ON_CLAIM = {
    "vllm": "pvc://weights/qwen",
    "sglang": "pvc://weights/qwen",
    "tgi": "pvc://weights/qwen",
    "llamacpp": "pvc://weights/qwen.gguf",
}


def md(engine: str, namespace: str = "team-a", **spec: Any) -> Any:
    raw = {**copy.deepcopy(SPECS[engine]), "engine": engine, **spec}
    if str(raw["model"]).startswith(("pvc://", "s3://")):
        raw.pop("ggufFile", None)
    return parse_model_deployment(
        {
            "apiVersion": "openmodel.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": namespace, "uid": "u-1", "generation": 1},
            "spec": raw,
        }
    )


def env(children: Any) -> dict[str, str]:
    (c,) = children.deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in c["env"]}


def render(model: Any, config: PlatformConfig | None = None, private: bool = False) -> Any:
    return render_children(model, config or PlatformConfig(), 1, 1, private=private)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_runs_with_its_telemetry_off_unless_the_platform_opts_in(
    engine: str,
) -> None:
    switches = dict(engine_for(engine).telemetry_opt_out)
    rendered = env(render(md(engine)))
    assert switches.items() <= rendered.items()
    opted_in = parse_config({"privacy": {"engineTelemetry": True}})
    assert not switches.keys() & env(render(md(engine), opted_in)).keys()
    # Never in a namespace whose data must stay in, whatever the platform chose.
    assert switches.items() <= env(render(md(engine), opted_in, private=True)).items()


def test_the_engines_documented_switches() -> None:
    assert engine_for("vllm").telemetry_opt_out == {
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    assert engine_for("tgi").telemetry_opt_out["USAGE_STATS"] == "off"
    assert engine_for("llamacpp").offline_env == {"LLAMA_ARG_OFFLINE": "1"}


def test_a_team_cannot_turn_telemetry_back_on_with_its_env() -> None:
    model = md("vllm", env=[{"name": "VLLM_NO_USAGE_STATS", "value": "0"}])
    (c,) = render(model).deployment["spec"]["template"]["spec"]["containers"]
    values = [e["value"] for e in c["env"] if e["name"] == "VLLM_NO_USAGE_STATS"]
    assert values[-1] == "1"  # the last of two equal names is the one the process sees


@pytest.mark.parametrize("engine", ENGINES)
def test_offline_exactly_when_everything_is_on_claims(engine: str) -> None:
    offline = dict(engine_for(engine).offline_env)
    assert offline
    assert offline.items() <= env(render(md(engine, model=ON_CLAIM[engine]))).items()
    assert not offline.keys() & env(render(md(engine))).keys()
    if engine == "vllm":
        hub_adapter = md(engine, model=ON_CLAIM[engine], adapters=[{"name": "a", "source": "o/a"}])
        assert not offline.keys() & env(render(hub_adapter)).keys()


@pytest.mark.parametrize("engine", ENGINES)
def test_the_policy_lets_in_the_gateway_and_the_operator_on_the_engine_port(engine: str) -> None:
    policy = render(md(engine)).network_policy
    assert policy["metadata"]["name"] == "m" and policy["metadata"]["namespace"] == "team-a"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert policy["spec"]["podSelector"] == {"matchLabels": {"openmodel.dev/model-deployment": "m"}}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": engine_for(engine).port}]
    system = {"matchLabels": {"kubernetes.io/metadata.name": "openmodel-system"}}
    gateway, operator = rule["from"]
    assert gateway == {
        "namespaceSelector": system,
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "openmodel",
                "app.kubernetes.io/component": "gateway",
            }
        },
    }
    assert operator == {
        "namespaceSelector": system,
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "openmodel",
                "app.kubernetes.io/component": "operator",
            }
        },
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_a_model_on_a_claim_gets_no_egress_at_all(engine: str) -> None:
    model = md(engine, model=ON_CLAIM[engine])
    spec = render(model).network_policy["spec"]
    assert "Egress" in spec["policyTypes"] and spec["egress"] == []  # deny all
    plan = make_plan(model, PlatformConfig(), None)
    assert plan.egress.state is Egress.CLOSED


@pytest.mark.parametrize(
    ("engine", "model"),
    [
        ("vllm", "Qwen/Qwen2.5-7B-Instruct"),
        ("vllm", "s3://bucket/qwen"),
        ("tgi", "Qwen/Qwen2.5-7B-Instruct"),
        ("sglang", "Qwen/Qwen2.5-7B-Instruct"),
    ],
)
def test_an_engine_that_fetches_weights_gets_dns_and_the_weights_sources(
    engine: str, model: str
) -> None:
    rules = render(md(engine, model=model)).network_policy["spec"]["egress"]
    dns, weights = rules
    assert {"protocol": "UDP", "port": 53} in dns["ports"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert weights["ports"] == [{"protocol": "TCP", "port": 443}]
    (block,) = weights["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert "169.254.0.0/16" in block["ipBlock"]["except"]  # no cloud metadata endpoint
    assert "10.0.0.0/8" in block["ipBlock"]["except"]


def test_the_platform_names_its_own_weights_source_and_more_ingress() -> None:
    config = parse_config(
        {
            "privacy": {
                "networkPolicy": {
                    "weightsEgress": [{"to": [{"ipBlock": {"cidr": "10.20.0.5/32"}}]}],
                    "dnsEgress": [],
                    "engineIngressFrom": [
                        {"namespaceSelector": {"matchLabels": {"name": "gateway-system"}}}
                    ],
                }
            }
        }
    )
    spec = render(md("vllm"), config).network_policy["spec"]
    assert spec["egress"] == [{"to": [{"ipBlock": {"cidr": "10.20.0.5/32"}}]}]
    assert spec["ingress"][0]["from"][2] == {
        "namespaceSelector": {"matchLabels": {"name": "gateway-system"}}
    }


ALLOWLIST = {
    "privacy": {
        "networkPolicy": {
            "egressAllowlist": {
                "tools": [
                    {
                        "to": [{"namespaceSelector": {"matchLabels": {"team": "tools"}}}],
                        "ports": [{"protocol": "TCP", "port": 8080}],
                    }
                ],
                "partner-api": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}],
            }
        }
    }
}


def test_an_exception_the_platform_allows_is_added_and_reported() -> None:
    config = parse_config(ALLOWLIST)
    model = md("vllm", model="pvc://weights/qwen", network={"egress": ["tools"]})
    spec = render(model, config).network_policy["spec"]
    assert spec["egress"] == ALLOWLIST["privacy"]["networkPolicy"]["egressAllowlist"]["tools"]
    plan = make_plan(model, config, None)
    assert plan.egress.state is Egress.OPEN and "'tools'" in plan.egress.message


def test_an_exception_the_platform_does_not_allow_is_refused_naming_what_is() -> None:
    config = parse_config(ALLOWLIST)
    with pytest.raises(SpecError) as refused:
        render(md("vllm", network={"egress": ["internet"]}), config)
    assert refused.value.field == "spec.network.egress"
    assert refused.value.reason == EGRESS_NOT_ALLOWED
    assert "'internet'" in refused.value.message and "partner-api, tools" in refused.value.message


def test_a_private_namespace_gets_no_exception_to_address_ranges() -> None:
    config = parse_config(ALLOWLIST)
    with pytest.raises(SpecError) as refused:
        render(md("vllm", network={"egress": ["partner-api"]}), config, private=True)
    assert "openmodel.dev/data=private" in refused.value.message
    # In-cluster destinations named by selectors stay possible.
    assert render(md("vllm", network={"egress": ["tools"]}), config, private=True)


def test_no_policy_when_the_platform_turns_them_off_and_status_says_so() -> None:
    config = parse_config({"privacy": {"networkPolicy": {"enabled": False}}})
    assert render(md("vllm"), config).network_policy is None
    assert make_plan(md("vllm"), config, None).egress.state is Egress.UNRESTRICTED
    with pytest.raises(SpecError):
        render(md("vllm", network={"egress": ["tools"]}), config)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"engineTelemetry": "yes"}, "engineTelemetry must be true or false"),
        ({"networkPolicy": {"weightsEgress": [{}]}}, "allows everything"),
        (
            {
                "networkPolicy": {
                    "weightsEgress": [
                        {"to": [{"ipBlock": {"cidr": "1.0.0.0/8"}, "podSelector": {}}]}
                    ]
                }
            },
            "an ipBlock stands alone",
        ),
        (
            {"networkPolicy": {"egressAllowlist": {"x": [{"ports": [{"port": 70000}]}]}}},
            "port must be a port number",
        ),
        (
            {"networkPolicy": {"engineIngressFrom": [{"namespaceSelectr": {}}]}},
            "unknown key(s) namespaceSelectr",
        ),
    ],
)
def test_a_bad_privacy_config_fails_at_start_naming_the_key(raw: Any, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"privacy": raw})
    assert says in str(refused.value) and "privacy" in str(refused.value)


def test_spec_network_refuses_what_it_does_not_know() -> None:
    with pytest.raises(SpecError) as refused:
        md("vllm", network={"ingress": ["x"]})
    assert refused.value.field == "spec.network"
    with pytest.raises(SpecError):
        md("vllm", network={"egress": ["a", "a"]})


def observation(egress: EgressPlan | None, problem: Problem | None = None) -> Observation:
    return Observation(
        generation=2,
        name="m",
        label_selector="openmodel.dev/model-deployment=m",
        endpoint=None,
        desired_replicas=1,
        deployment=None,
        problem=problem,
        egress=egress,
    )


def test_status_egress_and_its_condition_and_a_refused_edit_keeps_what_is_in_place() -> None:
    opened = EgressPlan(Egress.OPEN, ({"to": []},), ("allowlist entry 'tools'",))
    first = build_status(observation(opened), None, "2026-01-01T00:00:00Z").status
    assert first["egress"] == "Open"
    (cond,) = [c for c in first["conditions"] if c["type"] == EGRESS_OPEN]
    assert cond["status"] == "True" and cond["reason"] == "EgressAllowed"
    assert "'tools'" in cond["message"]
    closed = build_status(observation(EgressPlan(Egress.CLOSED, ())), first, "later").status
    assert closed["egress"] == "Closed"
    assert [c["status"] for c in closed["conditions"] if c["type"] == EGRESS_OPEN] == ["False"]
    # A refused spec applies nothing: the policy in place is still what status reports.
    refused = build_status(observation(None, Problem("X", "y")), first, "later").status
    assert refused["egress"] == "Open"
    assert [c for c in refused["conditions"] if c["type"] == EGRESS_OPEN] == [cond]


def test_a_cached_model_serves_with_no_egress_and_only_its_download_job_reaches_out() -> None:
    model = md("vllm", cache={"size": "40Gi"})
    children = render(model)
    spec = children.network_policy["spec"]
    assert spec["egress"] == []  # the engine fetches nothing: the Job did
    assert make_plan(model, PlatformConfig(), None).egress.state is Egress.CLOSED
    assert dict(engine_for("vllm").offline_env).items() <= env(children).items()
    job_policy = children.download_policy
    assert job_policy["metadata"]["name"] == "m-weights"
    assert job_policy["spec"]["podSelector"] == {"matchLabels": {"openmodel.dev/weights-for": "m"}}
    job_labels = children.download_job["spec"]["template"]["metadata"]["labels"]
    assert job_labels.items() >= job_policy["spec"]["podSelector"]["matchLabels"].items()
    assert job_policy["spec"]["ingress"] == []
    dns, weights = job_policy["spec"]["egress"]
    assert {"protocol": "UDP", "port": 53} in dns["ports"]
    assert weights["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"


def test_a_filled_claim_is_checked_by_a_job_that_reaches_nothing() -> None:
    model = md("vllm", cache={"size": "40Gi", "accessMode": "ReadOnlyMany", "claimName": "w"})
    job_policy = render(model).download_policy
    assert job_policy["spec"]["egress"] == [] and job_policy["spec"]["ingress"] == []


def test_no_job_no_job_policy() -> None:
    assert render(md("vllm", model=ON_CLAIM["vllm"], cache={"size": "1Gi"})).download_policy is None
    assert render(md("vllm")).download_policy is None
