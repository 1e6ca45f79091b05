"""The Helm chart's own features, rendered with `helm template`: the release namespace
in the platform config, the CRDs as templates (upgraded, kept), a closed
values.schema.json whose `config` part is the platform config parse_config reads, the
gateway's scheduling values, the optional ServiceMonitor, `helm test`, NOTES.txt and the
README generated from values.yaml."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import test_manifests
import yaml
from test_manifests import (
    CHART,
    KUBE_VERSION,
    REPO,
    Obj,
    documents,
    helm_refusal,
    helm_refusal_of,
    is_hook,
    rule_set,
    run,
    template,
)

import openmodel.config as config_module
from openmodel.config import PlatformConfig, parse_config
from openmodel.metering import dashboard

helm = test_manifests.helm  # the fixture
_spec = importlib.util.spec_from_file_location("dashboard_script", REPO / "hack" / "dashboard.py")
assert _spec is not None and _spec.loader is not None
dashboard_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dashboard_script)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
OTHER_NAMESPACE = "ai-platform"
GATEWAY = "openmodel-gateway"


def rendered_config(objs: Mapping[tuple[str, str], Obj]) -> dict[str, Any]:
    return yaml.safe_load(objs[("ConfigMap", "openmodel-config")]["data"]["config.yaml"])  # type: ignore[no-any-return]


def with_values(helm: Path, tmp_path: Path, text: str, *args: str) -> dict[tuple[str, str], Obj]:
    values = tmp_path / "values.yaml"
    values.write_text(text)
    return template(helm, "-f", str(values), *args)


def pod_spec(objs: Mapping[tuple[str, str], Obj], name: str) -> dict[str, Any]:
    return objs[("Deployment", name)]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


# -- the release namespace ---------------------------------------------------------------


def test_another_namespace_is_where_the_operator_looks_for_gateways_and_itself(helm):
    rendered = template(helm, "--namespace", OTHER_NAMESPACE)
    config = parse_config(rendered_config(rendered))
    assert config.gateway.demand_namespace == OTHER_NAMESPACE
    assert config.privacy.network_policy.operator_namespace == OTHER_NAMESPACE
    # ... and where the gateway's pods are, with the labels the operator selects them by.
    gateway = rendered[("Deployment", GATEWAY)]
    assert gateway["metadata"]["namespace"] == OTHER_NAMESPACE
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    wanted = dict(pair.split("=") for pair in config.gateway.demand_selector.split(","))
    assert wanted.items() <= labels.items()
    # Nothing else names the default namespace either.
    text = run(
        helm, "template", "openmodel", CHART, "--namespace", OTHER_NAMESPACE,
        "--kube-version", KUBE_VERSION.group(1) if KUBE_VERSION else "",
    )  # fmt: skip
    assert "openmodel-system" not in text


def test_namespaces_set_in_the_values_are_kept(helm, tmp_path):
    rendered = with_values(
        helm, tmp_path,
        "config: {gateway: {demandNamespace: gateways},"
        " privacy: {networkPolicy: {operator: {namespace: operators}}}}",
        "--namespace", OTHER_NAMESPACE,
    )  # fmt: skip
    config = parse_config(rendered_config(rendered))
    assert config.gateway.demand_namespace == "gateways"
    assert config.privacy.network_policy.operator_namespace == "operators"


def test_the_operator_is_told_the_gateways_service_account(helm, tmp_path):
    """Whose right to read an ExternalModel's key the operator checks: the gateway's own
    ServiceAccount, as the chart names it, unless the values say otherwise."""
    rendered = with_values(helm, tmp_path, "{}", "--namespace", OTHER_NAMESPACE)
    config = parse_config(rendered_config(rendered))
    accounts = [
        name for (kind, name), obj in rendered.items()
        if kind == "ServiceAccount" and obj["metadata"]["namespace"] == OTHER_NAMESPACE
    ]  # fmt: skip
    assert config.gateway.service_account_name in accounts
    assert config.gateway.service_account_name.endswith("-gateway")


# -- the CRDs ----------------------------------------------------------------------------


def crds(objs: Mapping[tuple[str, str], Obj]) -> dict[str, Obj]:
    return {name: o for (kind, name), o in objs.items() if kind == "CustomResourceDefinition"}


def test_crds_are_templates_rendered_from_the_source_and_kept_on_uninstall(helm):
    # Not in the chart's crds/ (which Helm never upgrades).
    assert not (CHART / "crds").exists()
    rendered = crds(template(helm))
    sources = {
        (doc := yaml.safe_load(p.read_text()))["metadata"]["name"]: doc
        for p in sorted((REPO / "crds").glob("*.yaml"))
    }
    assert set(rendered) == set(sources) == {
        "modeldeployments.openmodel.dev", "apikeys.openmodel.dev", "externalmodels.openmodel.dev"
    }  # fmt: skip
    for name, crd in rendered.items():
        meta = crd["metadata"]
        assert meta["annotations"]["helm.sh/resource-policy"] == "keep", name
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm", name
        source = sources[name]
        bare = {**crd, "metadata": {"name": meta["name"]}}
        assert source["metadata"] == {"name": name}
        assert bare == source, f"{name}: the rendered CRD differs from crds/"
    assert crds(template(helm, "--set", "crds.enabled=false")) == {}


# -- values.schema.json ------------------------------------------------------------------


def object_nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node that takes an object, with where it is."""
    if not isinstance(node, dict):
        return
    for name, definition in (node.get("$defs") or {}).items():
        yield from object_nodes(definition, f"$defs.{name}")
    if node.get("type") == "object" or "properties" in node:
        yield path or "(top)", node
    for key, child in (node.get("properties") or {}).items():
        yield from object_nodes(child, f"{path}.{key}")
    for keyword in ("additionalProperties", "items"):
        yield from object_nodes(node.get(keyword), f"{path}[{keyword}]")
    for keyword in ("oneOf", "anyOf"):
        for i, child in enumerate(node.get(keyword) or []):
            yield from object_nodes(child, f"{path}[{keyword}{i}]")


# Affinity terms are passed to Kubernetes as they are (its API server checks them).
FREE_FORM = {
    "$defs.affinity.nodeAffinity", "$defs.affinity.podAffinity",
    "$defs.affinity.podAntiAffinity",
}  # fmt: skip


def test_the_schema_is_closed_at_every_level():
    open_nodes = [
        path
        for path, node in object_nodes(SCHEMA)
        if "additionalProperties" not in node and path not in FREE_FORM
    ]
    assert open_nodes == []
    assert SCHEMA["additionalProperties"] is False


def test_the_schema_names_every_value_and_no_other():
    def keys(values: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
        props = schema.get("properties")
        if not isinstance(values, dict) or props is None:
            return
        assert set(values) <= set(props), f"{path}: no schema for {set(values) - set(props)}"
        for key, value in values.items():
            yield f"{path}.{key}"
            yield from keys(value, props[key], f"{path}.{key}")

    assert set(VALUES) == set(SCHEMA["properties"])
    assert list(keys(VALUES, SCHEMA, ""))


@pytest.mark.parametrize(
    "setting, named",
    [
        ("replicaCont=2", "replicaCont"),
        ("tolerations=notalist", "tolerations"),
        ("gateway.tolerations=notalist", "tolerations"),
        ("gateway.nodeselector.x=y", "nodeselector"),
        ("image.digest=latest", "digest"),
        ("metrics.serviceMonitor.enable=true", "enable"),
        ("serviceAccount.create=yes", "create"),
        ("crds.enabled=maybe", "enabled"),
        ("tests.enable=false", "enable"),
        ("tests.gatewayURL=models.example.com", "gatewayURL"),
        ("config.privacy.networkPolicy.operator.namespce=x", "namespce"),
        ("config.operator.workerz=3", "workerz"),
        ("resources.request.cpu=1", "request"),
        ("tolerations[0].keyy=x", "keyy"),
        ("networkPolicy.metricsFrom[0].podSelecter.x=y", "podSelecter"),
    ],
)
def test_the_schema_refuses(helm, setting, named):
    assert named in helm_refusal(helm, setting)


# Every key parse_config reads, at every level, with a value it takes: the schema must
# accept this file as `config`, and name nothing that is not in it.
FULL_CONFIG = """
engineImages: {vllm: registry.example/vllm:1, llamacpp-cpu: registry.example/llama:2}
accelerators:
  amd-mi300x:
    memoryGiB: 192
    nodeLabel: amd.com/gpu.product-name
    nodeLabelValues: [AMD_Instinct_MI300X_OAM]
    resourceName: amd.com/gpu
    tolerations: [{key: amd.com/gpu, operator: Equal, value: present, effect: NoSchedule}]
    maxPerNode: 8
  cpu-big:
    cpuOnly: true
    nodeLabel: pool
    nodeLabelValues: [cpu-big]
    tolerations: [{key: pool, operator: Exists}]
autoscaler: {pollSeconds: 5, tolerance: 0.1, scrapeTimeoutSeconds: 2}
cost:
  currency: EUR
  gpuHourPrices: {nvidia-h100-80gb: 2.5, amd-mi300x: 3}
  cpuCoreHourPrice: 0.02
  memoryGiBHourPrice: 0.003
  pollSeconds: 15
  checkpointSeconds: 60
adapters: {pollSeconds: 5}
cache:
  accessMode: ReadWriteMany
  storageClassName: nfs
  downloaderImage: registry.example/openmodel:1
  downloadTimeoutSeconds: 3600
  downloadBackoffLimit: 2
  hubEndpoint: https://hub.example
  downloadNodeSelector: {pool: download}
  downloadTolerations: [{key: pool, operator: Equal, value: download, effect: NoSchedule}]
gateway:
  namespaces: [team-a]
  holdSeconds: 300
  holdQueueLength: 256
  maxBodyBytes: 8388608
  queuePollSeconds: 2
  demandSelector: app.kubernetes.io/name=openmodel,app.kubernetes.io/component=gateway
  demandNamespace: ai-platform
  serviceAccountName: ai-gateway
  demandUrls: [http://127.0.0.1:9090/demand]
  auth:
    mode: audit
    audiences: [openmodel-gateway]
    tokenCacheSeconds: 60
    tokenCacheSize: 10000
    deniedCacheSeconds: 5
    accessCacheSeconds: 10
    accessCacheSize: 10000
    reviewTimeoutSeconds: 2
    maxConcurrentReviews: 8
  tls: {certFile: /tls/tls.crt, keyFile: /tls/tls.key}
  limits:
    perIdentity: {requestsPerMinute: 600, tokensPerMinute: 200000, concurrentRequests: 16}
    perNamespace: {requestsPerMinute: 6000, tokensPerMinute: 1000000, concurrentRequests: 64}
    namespaces:
      team-a:
        perIdentity: {tokensPerMinute: null}
        perNamespace: {concurrentRequests: 8}
    defaultMaxTokens: 512
    windowSeconds: 30
    replicas: auto
  balancing: {policy: prefix, prefixCharacters: 1024, loadFactor: 1.5}
startupBudgetSeconds: 1800
clusterDomain: cluster.local
operator: {workers: 16, apiQPS: 100, apiBurst: 200, cacheAuditSeconds: 3600}
modelResolver:
  endpoint: https://hub.example.internal
  tokenFile: /var/run/secrets/hf/token
  timeoutSeconds: 10
  maxBackoffSeconds: 300
  cacheEntries: 512
inferenceExtension:
  enabled: true
  gateway: {name: inference-gateway, namespace: gateway-system, sectionName: http}
  endpointPickerRef: {name: "{name}-epp", port: 9002, kind: Service, group: "",
                      failureMode: FailOpen}
  modelNameHeader: X-Gateway-Base-Model-Name
privacy:
  engineTelemetry: false
  networkPolicy:
    enabled: true
    operator:
      namespace: ai-platform
      podSelector:
        matchLabels: {app.kubernetes.io/name: openmodel}
        matchExpressions: [{key: tier, operator: In, values: [control]}]
    engineIngressFrom:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: gateway-system}}
        podSelector: {matchLabels: {app: envoy}}
      - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    weightsEgress:
      - to: [{ipBlock: {cidr: 192.168.10.0/24}}]
        ports: [{protocol: TCP, port: 443}, {protocol: TCP, port: 8000, endPort: 8100}]
    dnsEgress:
      - ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: dns}]
    egressAllowlist:
      internal-tools:
        - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: tools}}}]
"""

MAP_KEY = "*"  # a schema level whose keys are names (additionalProperties: {schema})
LIST_ITEM = "[]"


class Recording(Mapping[str, Any]):
    """A read-only view of a config mapping that notes every key looked up in it."""

    def __init__(self, data: Mapping[str, Any], path: tuple[str, ...], seen: set[tuple[str, ...]]):
        self._data, self._path, self._seen = data, path, seen

    def _note(self, key: str) -> None:
        self._seen.add((*self._path, key))

    def __getitem__(self, key: str) -> Any:
        self._note(key)
        return recording(self._data[key], (*self._path, key), self._seen)

    def __contains__(self, key: object) -> bool:
        self._note(str(key))
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        self._note(key)
        return self[key] if key in self._data else default

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def recording(value: Any, path: tuple[str, ...], seen: set[tuple[str, ...]]) -> Any:
    if isinstance(value, Mapping):
        return Recording(value, path, seen)
    if isinstance(value, list):
        return [recording(v, (*path, LIST_ITEM), seen) for v in value]
    return value


def schema_at(path: tuple[str, ...]) -> dict[str, Any] | None:
    """The schema node of a config key path (None: not in the schema). A Kubernetes type
    ($ref to $defs, checked by the helm tests against real objects) or a free-form node
    (an object without properties) takes any key below it."""
    node: dict[str, Any] = SCHEMA["properties"]["config"]
    for key in path:
        if "$ref" in node:
            return node
        if key == LIST_ITEM:
            node = node.get("items") or {}
            continue
        props = node.get("properties")
        if props is not None and key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif props is None and node.get("additionalProperties") is not False:
            return node
        else:
            return None
    return node


def test_every_config_key_parse_config_reads_is_in_the_schema(monkeypatch):
    raw = yaml.safe_load(FULL_CONFIG)
    seen: set[tuple[str, ...]] = set()
    parse_config(recording(raw, (), seen))
    assert len(seen) > 80, sorted(seen)
    missing = sorted(".".join(p) for p in seen if schema_at(p) is None)
    assert missing == [], "read by parse_config, not in values.schema.json's config"


def normalized(path: tuple[str, ...]) -> tuple[str, ...]:
    """`path` with each name in a map (accelerators.<name>, ...) as MAP_KEY."""
    node: dict[str, Any] = SCHEMA["properties"]["config"]
    out: list[str] = []
    for key in path:
        if "$ref" in node:
            break  # a Kubernetes type: its keys are Kubernetes', not parse_config's
        if key == LIST_ITEM:
            node = node.get("items") or {}
            out.append(key)
        elif key in (node.get("properties") or {}):
            node = node["properties"][key]
            out.append(key)
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
            out.append(MAP_KEY)
        else:
            break  # below a free-form node
    return tuple(out)


def test_every_config_key_in_the_schema_is_one_parse_config_reads():
    raw = yaml.safe_load(FULL_CONFIG)
    seen: set[tuple[str, ...]] = set()
    parse_config(recording(raw, (), seen))
    read = {normalized(p) for p in seen}

    def schema_keys(node: dict[str, Any], path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        for key, child in (node.get("properties") or {}).items():
            yield (*path, key)
            yield from schema_keys(child, (*path, key))
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            yield from schema_keys(extra, (*path, MAP_KEY))
        items = node.get("items")
        if isinstance(items, dict):
            yield from schema_keys(items, (*path, LIST_ITEM))

    unread = sorted(
        ".".join(p) for p in schema_keys(SCHEMA["properties"]["config"], ()) if p not in read
    )
    assert unread == [], "in values.schema.json's config, never read by parse_config"


def test_the_full_config_passes_the_schema_and_reaches_the_operator_unchanged(helm, tmp_path):
    values = {"config": yaml.safe_load(FULL_CONFIG)}
    rendered = with_values(helm, tmp_path, yaml.safe_dump(values))
    got = rendered_config(rendered)
    assert got == values["config"]
    assert parse_config(got) != PlatformConfig()


def test_parse_config_and_the_schema_refuse_the_same_misspelt_keys(helm, tmp_path):
    # The schema is the stricter (it also refuses a misspelt top-level key, which
    # parse_config ignores); where parse_config checks keys, both refuse.
    for misspelt in (
        {"gateway": {"holdSecond": 1}},
        {"operator": {"worker": 1}},
        {"privacy": {"networkPolicy": {"enable": True}}},
        {"modelResolver": {"cacheEntry": 1}},
    ):
        with pytest.raises(config_module.ConfigError):
            parse_config(misspelt)
        values = tmp_path / "bad.yaml"
        values.write_text(yaml.safe_dump({"config": misspelt}))
        helm_refusal_of(helm, "-f", str(values))


# -- the gateway's scheduling, the ServiceAccount, the image ----------------------------


GATEWAY_SCHEDULING = """
gateway:
  nodeSelector: {pool: edge}
  tolerations: [{key: dedicated, operator: Equal, value: edge, effect: NoSchedule}]
  priorityClassName: platform-critical
  podAnnotations: {example.com/scrape: "yes"}
  podLabels: {team: platform}
"""


def test_gateway_scheduling_values_reach_its_pods(helm, tmp_path):
    rendered = with_values(helm, tmp_path, GATEWAY_SCHEDULING)
    wanted = yaml.safe_load(GATEWAY_SCHEDULING)["gateway"]
    template_ = rendered[("Deployment", GATEWAY)]["spec"]["template"]
    spec = template_["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "edge"}
    assert spec["tolerations"] == wanted["tolerations"]
    assert spec["priorityClassName"] == "platform-critical"
    assert template_["metadata"]["annotations"]["example.com/scrape"] == "yes"
    assert "checksum/config" in template_["metadata"]["annotations"]
    assert template_["metadata"]["labels"]["team"] == "platform"
    # The operator's pod is not touched; the default gateway is as before.
    assert "tolerations" not in pod_spec(rendered, "openmodel-operator")
    default = pod_spec(template(helm), GATEWAY)
    assert default["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert "tolerations" not in default and "priorityClassName" not in default


def test_service_account_can_be_brought_and_the_image_pinned_by_digest(helm):
    digest = "sha256:" + "a" * 64
    rendered = template(
        helm, "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=mine",
        "--set", f"image.digest={digest}",
    )  # fmt: skip
    assert not [k for k in rendered if k[0] == "ServiceAccount" and k[1] == "mine"]
    assert ("ServiceAccount", "openmodel-operator") not in rendered
    assert pod_spec(rendered, "openmodel-operator")["serviceAccountName"] == "mine"
    binding = rendered[("ClusterRoleBinding", "openmodel-operator")]
    assert binding["subjects"][0]["name"] == "mine"
    images = {
        c["image"]
        for key in (("Deployment", "openmodel-operator"), ("Deployment", GATEWAY))
        for c in rendered[key]["spec"]["template"]["spec"]["containers"]
    } | {c["image"] for c in rendered[("Pod", "openmodel-test")]["spec"]["containers"]}
    assert images == {f"openmodel/operator:0.1.0@{digest}"}


# -- ServiceMonitor ----------------------------------------------------------------------


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_service_monitor_is_off_by_default_and_scrapes_both_metrics_services(helm):
    assert not [k for k in template(helm) if k[0] == "ServiceMonitor"]
    rendered = template(
        helm, "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.serviceMonitor.interval=15s",
        "--set", "metrics.serviceMonitor.labels.release=prometheus",
    )  # fmt: skip
    monitor = rendered[("ServiceMonitor", "openmodel")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [test_manifests.NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["interval"] == "15s"
    scraped = {
        name: [p["port"] for p in svc["spec"]["ports"] if p["name"] == endpoint["port"]]
        for (kind, name), svc in rendered.items()
        if kind == "Service" and matches(monitor["spec"]["selector"], svc["metadata"]["labels"])
    }
    # The gateway's API Service matches too, but has no port of that name.
    assert {name: ports for name, ports in scraped.items() if ports} == {
        "openmodel-operator-metrics": [9090], "openmodel-gateway-metrics": [9090]
    }  # fmt: skip
    refusal = helm_refusal_of(
        helm, "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.service.enabled=false",
    )  # fmt: skip
    assert "metrics.service.enabled" in refusal


# -- helm test ---------------------------------------------------------------------------


def test_helm_test_calls_the_gateway_with_a_token_of_a_user(helm):
    rendered = template(helm)
    hooks = {k: o for k, o in rendered.items() if is_hook(o)}
    assert set(hooks) == {
        ("ServiceAccount", "openmodel-test"),
        ("RoleBinding", "openmodel-test"),
        ("Pod", "openmodel-test"),
    }
    for obj in hooks.values():
        assert obj["metadata"]["annotations"]["helm.sh/hook"] == "test"
    binding = hooks[("RoleBinding", "openmodel-test")]
    role = rendered[("ClusterRole", binding["roleRef"]["name"])]
    assert ("openmodel.dev", "modeldeployments", "use") in rule_set(role)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "openmodel-test", "namespace": test_manifests.NAMESPACE}
    ]
    pod = hooks[("Pod", "openmodel-test")]["spec"]
    assert pod["serviceAccountName"] == "openmodel-test"
    assert pod["restartPolicy"] == "Never"
    (only,) = pod["containers"]
    env = {e["name"]: e["value"] for e in only["env"]}
    service = rendered[("Service", GATEWAY)]
    assert env["GATEWAY_URL"] == (
        f"http://{GATEWAY}.{test_manifests.NAMESPACE}.svc.cluster.local:"
        f"{service['spec']['ports'][0]['port']}"
    )
    command = only["command"]
    assert command[:2] == ["python", "-c"]
    script = command[2]
    ast.parse(script)
    assert '"/readyz"' in script and '"/v1/models"' in script and "Bearer" in script
    (token,) = [v for v in pod["volumes"] if v["name"] == "token"]
    (source,) = token["projected"]["sources"]
    assert "audience" not in source["serviceAccountToken"]  # the API server's own
    assert only["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_helm_test_follows_tls_the_audience_and_the_gateway_scheduling(helm, tmp_path):
    rendered = with_values(
        helm, tmp_path,
        GATEWAY_SCHEDULING + "  tls: {secretName: gw-cert}\n"
        "config: {gateway: {auth: {audiences: [openmodel-gateway]}}}\n",
    )  # fmt: skip
    pod = rendered[("Pod", "openmodel-test")]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["GATEWAY_URL"].startswith("https://")
    (token,) = [v for v in pod["volumes"] if v["name"] == "token"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == (
        "openmodel-gateway"
    )
    # Helm merges a map value into the default: the os label stays.
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "edge"}
    assert pod["tolerations"] == yaml.safe_load(GATEWAY_SCHEDULING)["gateway"]["tolerations"]
    chosen = template(helm, "--set", "tests.gatewayURL=https://models.example.com")
    pod = chosen[("Pod", "openmodel-test")]["spec"]
    assert pod["containers"][0]["env"] == [
        {"name": "GATEWAY_URL", "value": "https://models.example.com"}
    ]
    for off in ("tests.enabled=false", "gateway.enabled=false"):
        assert not [k for k, o in template(helm, "--set", off).items() if is_hook(o)], off


# -- NOTES.txt, Chart.yaml, README -------------------------------------------------------


def notes(helm: Path, tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it: rendered through a template of a copy of
    the chart (`helm template` leaves NOTES.txt out)."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    text = (copy / "templates" / "NOTES.txt").read_text()
    (copy / "templates" / "NOTES.txt").unlink()
    (copy / "templates" / "_notes.tpl").write_text(
        '{{- define "notes" -}}\n' + text + "{{- end -}}\n"
    )
    (copy / "templates" / "notes.yaml").write_text('notes: {{ include "notes" . | toJson }}\n')
    assert KUBE_VERSION
    out = run(
        helm, "template", "openmodel", copy, "--namespace", OTHER_NAMESPACE,
        "--kube-version", KUBE_VERSION.group(1), "--show-only", "templates/notes.yaml", *args,
    )  # fmt: skip
    (doc,) = documents(out)
    return str(doc["notes"])


def test_notes_print_the_gateway_url_and_a_first_model_to_apply(helm, tmp_path):
    text = notes(helm, tmp_path)
    assert f"http://{GATEWAY}.{OTHER_NAMESPACE}.svc.cluster.local:8080/v1" in text
    assert f"helm test openmodel -n {OTHER_NAMESPACE}" in text
    example = (REPO / "examples" / "qwen7b-l4.yaml").read_text()
    assert (CHART / "files" / "examples" / "qwen7b-l4.yaml").read_text() == example
    heredoc = text.split("kubectl apply -f - <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    assert yaml.safe_load(heredoc) == yaml.safe_load(example)
    assert "https://" in notes(helm, tmp_path / "tls", "--set", "gateway.tls.secretName=x")


def test_chart_yaml_says_where_the_project_lives():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"].startswith("https://")
    assert chart["sources"] and all(s.startswith("https://") for s in chart["sources"])
    assert chart["icon"].startswith("https://")


def test_chart_readme_is_generated_from_the_current_values():
    done = subprocess.run(
        [sys.executable, str(REPO / "hack" / "chart-readme.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    readme = (CHART / "README.md").read_text()
    for key in ("crds.enabled", "gateway.tolerations", "metrics.serviceMonitor.enabled",
                "serviceAccount.create", "image.digest", "tests.enabled"):  # fmt: skip
        assert f"| `{key}` |" in readme, key


def test_the_dashboard_is_optional_and_the_same_as_the_generated_one(helm):
    assert not [k for k in template(helm) if k == ("ConfigMap", "openmodel-dashboard-cost")]
    rendered = template(helm, "--set", "metrics.dashboard.enabled=true")
    config_map = rendered[("ConfigMap", "openmodel-dashboard-cost")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(config_map["data"]["openmodel-cost.json"])
    assert board == dashboard.dashboard()
    assert dashboard_script.main(["--check"]) == 0
