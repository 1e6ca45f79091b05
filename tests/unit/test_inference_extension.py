"""Gateway API Inference Extension: the platform config key, the InferencePool and
HTTPRoute renderers, the cached CRD discovery, and a reconcile pass with the CRDs
absent (a fake API: nothing breaks, one Warning Event, Ready's inputs untouched)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fake_api_server import FakeApiServer
from kubernetes.client.exceptions import ApiException

from openmodel.config import ConfigError, PlatformConfig, parse_config
from openmodel.config.inference_extension import DEFAULT_MODEL_NAME_HEADER as MODEL_NAME_HEADER
from openmodel.config.inference_extension import (
    EndpointPickerRef,
    GatewayRef,
    InferenceExtensionConfig,
    parse_inference_extension,
)
from openmodel.engines import parse_model_deployment
from openmodel.inference_extension.discovery import CrdDiscovery
from openmodel.inference_extension.gate import UNAVAILABLE_REASON, InferenceExtensionGate
from openmodel.inference_extension.render import render_http_route
from openmodel.reconcile.reconciler import Reconciler
from openmodel.reconcile.render import render_children

BODY: dict[str, Any] = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "m", "namespace": "team-a", "uid": "u-1", "generation": 1},
    "spec": {
        "model": "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        "engine": "vllm",
        "quantization": "awq",
        "gpu": {"type": "nvidia-h100-80gb", "count": 2},
        "replicas": 1,
    },
}
ENABLED = {
    "enabled": True,
    "gateway": {"name": "inference-gateway", "namespace": "gateway-system", "sectionName": "http"},
    "endpointPickerRef": {"name": "{name}-epp"},
}


def config_with(section: Any = ENABLED) -> PlatformConfig:
    return parse_config({"inferenceExtension": section})


def md_with(**spec: Any) -> Any:
    body = copy.deepcopy(BODY)
    body["spec"].update(spec)
    return parse_model_deployment(body)


def render(md: Any, config: PlatformConfig) -> Any:
    return render_children(md, config, 2, 1)


# -- config ----------------------------------------------------------------------------


def test_absent_means_disabled_and_nothing_extra_is_rendered() -> None:
    assert parse_config({}).inference_extension == InferenceExtensionConfig()
    children = render(md_with(), PlatformConfig())
    assert children.inference_pool is None and children.http_route is None
    assert [o["kind"] for o in children.all()] == ["NetworkPolicy", "Deployment", "Service"]


def test_full_section_parses_with_the_v1_schema_defaults() -> None:
    parsed = parse_inference_extension(ENABLED)
    assert parsed == InferenceExtensionConfig(
        enabled=True,
        gateway=GatewayRef("inference-gateway", "gateway-system", "http"),
        endpoint_picker=EndpointPickerRef(
            name="{name}-epp", port=9002, kind="Service", group="", failure_mode="FailClose"
        ),
    )


def test_a_non_service_picker_has_no_default_port() -> None:
    parsed = parse_inference_extension(
        {"gateway": {"name": "g"}, "endpointPickerRef": {"name": "p", "kind": "Picker"}}
    )
    assert parsed.endpoint_picker is not None and parsed.endpoint_picker.port is None
    assert parsed.enabled is False


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ([], "inferenceExtension must be a mapping"),
        ({"enabled": "yes", "gateway": {"name": "g"}}, "inferenceExtension.enabled must be true"),
        ({"enabled": True}, "inferenceExtension.gateway is required"),
        ({"enabled": True, "gateway": {}}, "inferenceExtension.gateway.name must be"),
        ({"gateway": {"name": "g", "namespace": ""}}, "inferenceExtension.gateway.namespace"),
        ({"gateway": {"name": "g", "section": "x"}}, "inferenceExtension.gateway has unknown"),
        ({"gatewy": {"name": "g"}}, "inferenceExtension has unknown key(s) gatewy"),
        ({"endpointPickerRef": {"port": 9002}}, "inferenceExtension.endpointPickerRef.name"),
        (
            {"endpointPickerRef": {"name": "p", "port": 0}},
            "inferenceExtension.endpointPickerRef.port must be an integer in 1..65535",
        ),
        (
            {"endpointPickerRef": {"name": "p", "port": True}},
            "inferenceExtension.endpointPickerRef.port",
        ),
        (
            {"endpointPickerRef": {"name": "p", "failureMode": "FailSoft"}},
            "inferenceExtension.endpointPickerRef.failureMode must be one of FailClose, FailOpen",
        ),
        ({"endpointPickerRef": {"name": "p", "group": 1}}, "endpointPickerRef.group"),
        ({"endpointPickerRef": "p"}, "inferenceExtension.endpointPickerRef must be a mapping"),
    ],
)
def test_config_errors_name_the_key(section: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"inferenceExtension": section})
    assert message in str(err.value)


# -- rendering ---------------------------------------------------------------------------


def test_inference_pool_selects_the_engine_pods_on_the_engine_port() -> None:
    children = render(md_with(), config_with())
    pool = children.inference_pool
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["kind"] == "InferencePool"
    assert pool["metadata"] == children.service["metadata"]  # name, labels, owner
    assert pool["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert pool["spec"] == {
        "selector": {"matchLabels": children.service["spec"]["selector"]},
        "targetPorts": [{"number": 8000}],
        "appProtocol": "http",
        "endpointPickerRef": {
            "group": "",
            "kind": "Service",
            "name": "m-epp",
            "port": {"number": 9002},
            "failureMode": "FailClose",
        },
    }
    tgi = render(md_with(engine="tgi"), config_with()).inference_pool
    assert tgi["spec"]["targetPorts"] == [{"number": 80}]


def test_pool_without_a_picker_and_with_a_fixed_picker_name() -> None:
    bare = render(md_with(), config_with({"enabled": True, "gateway": {"name": "g"}}))
    assert "endpointPickerRef" not in bare.inference_pool["spec"]
    fixed = {**ENABLED, "endpointPickerRef": {"name": "epp", "failureMode": "FailOpen"}}
    ref = render(md_with(), config_with(fixed)).inference_pool["spec"]["endpointPickerRef"]
    assert (ref["name"], ref["failureMode"]) == ("epp", "FailOpen")


def test_http_route_attaches_to_the_gateway_and_routes_the_model_name_to_the_pool() -> None:
    children = render(md_with(servedModelName="llama-70b"), config_with())
    route = children.http_route
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["kind"] == "HTTPRoute"
    assert route["metadata"] == children.service["metadata"]
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "inference-gateway",
            "namespace": "gateway-system",
            "sectionName": "http",
        }
    ]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "m"}
    ]
    assert rule["matches"] == [
        {
            "path": {"type": "PathPrefix", "value": "/"},
            "headers": [{"type": "Exact", "name": MODEL_NAME_HEADER, "value": "llama-70b"}],
        }
    ]


def test_route_matches_the_repo_id_by_default_and_every_adapter_name() -> None:
    md = md_with(
        adapters=[
            {"name": "sql", "source": "org/sql-lora"},
            {"name": "chat", "source": "org/chat-lora"},
        ]
    )
    route = render(md, config_with({"enabled": True, "gateway": {"name": "g"}})).http_route
    values = [m["headers"][0]["value"] for m in route["spec"]["rules"][0]["matches"]]
    assert values == ["hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "chat", "sql"]
    # Gateway namespace omitted: the route's own namespace (the Gateway API default).
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g"}
    ]


def test_children_order_puts_the_extension_objects_last() -> None:
    kinds = [o["kind"] for o in render(md_with(), config_with()).all()]
    assert kinds == ["NetworkPolicy", "Deployment", "Service", "InferencePool", "HTTPRoute"]


# -- discovery ---------------------------------------------------------------------------


class Probe:
    def __init__(self, served: dict[str, frozenset[str]]) -> None:
        self.served = served
        self.calls = 0
        self.error: ApiException | None = None

    def __call__(self, group_version: str) -> frozenset[str] | None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.served.get(group_version)


BOTH = {
    "inference.networking.k8s.io/v1": frozenset({"inferencepools", "inferencepools/status"}),
    "gateway.networking.k8s.io/v1": frozenset({"httproutes", "gateways"}),
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_discovery_is_cached_for_the_ttl() -> None:
    probe, clock = Probe({}), Clock()
    discovery = CrdDiscovery(probe, clock, ttl=60.0)
    missing = discovery.missing()
    assert missing == (
        "inferencepools.inference.networking.k8s.io/v1",
        "httproutes.gateway.networking.k8s.io/v1",
    )
    calls = probe.calls
    for _ in range(50):
        assert discovery.missing() == missing
    assert probe.calls == calls  # no request per pass
    probe.served = BOTH
    clock.now += 59.9
    assert discovery.missing() == missing
    clock.now += 0.2
    assert discovery.missing() == ()
    assert probe.calls == calls + 2


def test_discovery_needs_the_plural_not_just_the_group() -> None:
    only_gateways = {**BOTH, "gateway.networking.k8s.io/v1": frozenset({"gateways"})}
    discovery = CrdDiscovery(Probe(only_gateways), Clock())
    assert discovery.missing() == ("httproutes.gateway.networking.k8s.io/v1",)


def test_discovery_error_keeps_the_last_answer_and_retries_soon() -> None:
    probe, clock = Probe(BOTH), Clock()
    discovery = CrdDiscovery(probe, clock, ttl=60.0, retry=5.0)
    assert discovery.missing() == ()
    probe.error = ApiException(status=503, reason="Service Unavailable")
    clock.now += 61
    assert discovery.missing() == ()
    probe.error = None
    probe.served = {}
    clock.now += 5
    assert len(discovery.missing()) == 2


def test_invalidate_asks_again_at_once() -> None:
    probe = Probe(BOTH)
    discovery = CrdDiscovery(probe, Clock())
    assert discovery.missing() == ()
    probe.served = {}
    discovery.invalidate()
    assert len(discovery.missing()) == 2


# -- reconcile with the CRDs absent (fake API) -------------------------------------------


EXTENSION_KINDS = frozenset({"InferencePool", "HTTPRoute"})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeApiServer:
    return FakeApiServer(unserved=EXTENSION_KINDS).install(monkeypatch)


def serve(fake: FakeApiServer, served: bool) -> None:
    fake.unserved = frozenset() if served else EXTENSION_KINDS


def reconciler(fake: FakeApiServer, probe: Probe, clock: Clock) -> Reconciler:
    r = Reconciler(object(), config_with(), clock=lambda: "2026-12-01T00:00:00Z")  # type: ignore[arg-type]
    r.inference_extension = InferenceExtensionGate(r.api, CrdDiscovery(probe, clock))
    md = copy.deepcopy(BODY)
    fake.objects[("ModelDeployment", "team-a", "m")] = md
    r.cache.observe("ModelDeployment", md)  # what kopf's index feeds from the watch
    return r


def warnings(fake: FakeApiServer) -> list[dict[str, Any]]:
    return [e for e in fake.events if e["reason"] == UNAVAILABLE_REASON]


def test_enabled_without_crds_applies_the_rest_and_warns_once(fake: FakeApiServer) -> None:
    probe, clock = Probe({}), Clock()
    r = reconciler(fake, probe, clock)
    first = r.reconcile_by_name("team-a", "m")
    assert first is not None and first.problem is None
    assert first.applied == ["NetworkPolicy/m", "Service/m", "Deployment/m"]  # the engine last
    assert first.status_written
    (event,) = warnings(fake)
    assert event["type"] == "Warning"
    assert "inferencepools.inference.networking.k8s.io/v1" in event["message"]
    for _ in range(3):
        again = r.reconcile_by_name("team-a", "m")
        assert again is not None and again.applied == [] and again.problem is None
    assert len(warnings(fake)) == 1
    assert probe.calls == 2  # one discovery (two group-versions), cached since
    status = fake.objects[("ModelDeployment", "team-a", "m")]["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"


def test_crds_installed_later_are_picked_up_after_the_ttl(fake: FakeApiServer) -> None:
    probe, clock = Probe({}), Clock()
    r = reconciler(fake, probe, clock)
    r.reconcile_by_name("team-a", "m")
    probe.served = BOTH
    serve(fake, True)
    clock.now += 61
    result = r.reconcile_by_name("team-a", "m")
    assert result is not None and result.applied == ["InferencePool/m", "HTTPRoute/m"]
    assert r.reconcile_by_name("team-a", "m").applied == []  # type: ignore[union-attr]


def test_crds_removed_between_discoveries_do_not_fail_the_pass(fake: FakeApiServer) -> None:
    probe, clock = Probe(BOTH), Clock()
    serve(fake, True)
    r = reconciler(fake, probe, clock)
    assert "HTTPRoute/m" in r.reconcile_by_name("team-a", "m").applied  # type: ignore[union-attr]
    probe.served = {}
    serve(fake, False)
    fake.objects[("Service", "team-a", "m")]["spec"]["type"] = "NodePort"  # forces a pass
    r.cache.observe("Service", fake.objects[("Service", "team-a", "m")])  # the watch event
    # A stale discovery says served; the applies 404: skipped, discovery asked again.
    # (The pool is gone; the object cache, which no watch feeds for it, forgets it at the
    # next audit.)
    fake.objects.pop(("InferencePool", "team-a", "m"))
    r.cache.drop("InferencePool", "team-a", "m")
    result = r.reconcile_by_name("team-a", "m")
    assert result is not None and result.problem is None
    assert result.applied == ["Service/m"]
    r.reconcile_by_name("team-a", "m")
    assert len(warnings(fake)) == 1


def test_the_route_matches_the_header_the_platforms_router_sets() -> None:
    config = parse_inference_extension(
        {"enabled": True, "gateway": {"name": "g"}, "modelNameHeader": "X-Gateway-Base-Model-Name"}
    )
    route = render_http_route({"name": "m", "namespace": "n"}, "m", ["llama"], config)
    (match,) = route["spec"]["rules"][0]["matches"]
    assert match["headers"] == [
        {"type": "Exact", "name": "X-Gateway-Base-Model-Name", "value": "llama"}
    ]
    with pytest.raises(ConfigError, match="modelNameHeader must be an HTTP header name"):
        parse_inference_extension({"gateway": {"name": "g"}, "modelNameHeader": "bad header"})
