"""The gateway's install (manifests/gateway.yaml, the chart's gateway.yaml) against the code."""

from __future__ import annotations

from typing import Any

import test_manifests
import yaml
from test_manifests import M, helm_refusal, rule_set, template

from openmodel.config import (
    GATEWAY_METRICS_PORT,
    GATEWAY_PORT,
    AuthMode,
    GatewayConfig,
    parse_config,
)

NAME = "openmodel-gateway"
helm = test_manifests.helm  # the fixture


def gateway_pod(objs: dict[tuple[str, str], Any]) -> dict[str, Any]:
    return objs[("Deployment", NAME)]["spec"]["template"]  # type: ignore[no-any-return]


def test_the_gateway_may_only_read_its_routes_and_keys_and_ask_reviews() -> None:
    assert rule_set(M[("ClusterRole", NAME)]) == {
        ("openmodel.dev", "modeldeployments", "list"),
        ("openmodel.dev", "modeldeployments", "watch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("openmodel.dev", "apikeys", "list"),
        ("openmodel.dev", "apikeys", "watch"),
        ("openmodel.dev", "externalmodels", "list"),
        ("openmodel.dev", "externalmodels", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
    binding = M[("ClusterRoleBinding", NAME)]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": NAME, "namespace": "openmodel-system"}
    ]


def test_the_gateway_is_granted_no_secret(helm: Any) -> None:
    """ExternalModel keys: each namespace, the gateway's own included, grants the gateway
    `get` on its key Secret by name (docs/api.md); the install grants no Secret at all,
    so the gateway never reads the operator's or anyone's other Secrets."""
    for objs in (M, template(helm)):
        secret_rules = {
            (kind, name): rule_set(obj)
            for (kind, name), obj in objs.items()
            if kind in ("Role", "ClusterRole") and any(r[1] == "secrets" for r in rule_set(obj))
        }
        gateway_roles = {
            obj["roleRef"]["name"]
            for (kind, _), obj in objs.items()
            if kind in ("RoleBinding", "ClusterRoleBinding")
            and any(s.get("name") == NAME for s in obj.get("subjects") or [])
        }
        assert not {name for _, name in secret_rules} & gateway_roles, secret_rules


def test_the_autoscaler_finds_the_gateway_pods_by_the_default_selector() -> None:
    labels = gateway_pod(M)["metadata"]["labels"]
    wanted = dict(part.split("=") for part in GatewayConfig().demand_selector.split(","))
    assert wanted.items() <= labels.items()
    assert GatewayConfig().demand_namespace == M[("Deployment", NAME)]["metadata"]["namespace"]


def test_the_gateway_listens_where_the_service_and_the_autoscaler_expect() -> None:
    (container,) = gateway_pod(M)["spec"]["containers"]
    assert container["command"] == [
        "python",
        "-m",
        "openmodel.gateway",
        "--port",
        str(GATEWAY_PORT),
        "--metrics-port",
        str(GATEWAY_METRICS_PORT),
    ]
    assert container["ports"] == [
        {"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": GATEWAY_METRICS_PORT, "protocol": "TCP"},
    ]
    # The probes on the API port; the API's Service exposes that port only, /metrics has
    # a Service of its own.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    service = M[("Service", NAME)]
    assert [p["port"] for p in service["spec"]["ports"]] == [GATEWAY_PORT]
    assert service["spec"]["selector"].items() <= gateway_pod(M)["metadata"]["labels"].items()
    metrics = M[("Service", f"{NAME}-metrics")]
    assert [(p["port"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [
        (GATEWAY_METRICS_PORT, "metrics")
    ]
    assert metrics["spec"]["selector"] == service["spec"]["selector"]
    # It drains 60 s on SIGTERM (gateway/server.py): the grace period must cover it.
    assert gateway_pod(M)["spec"]["terminationGracePeriodSeconds"] > 60


def test_helm_renders_the_same_gateway_as_manifests(helm: Any) -> None:
    rendered = template(helm)
    want, got = gateway_pod(M), gateway_pod(rendered)
    for field in ("securityContext", "serviceAccountName", "volumes", "nodeSelector",
                  "terminationGracePeriodSeconds"):  # fmt: skip
        assert got["spec"][field] == want["spec"][field], field
    (want_c,), (got_c,) = want["spec"]["containers"], got["spec"]["containers"]
    for field in ("command", "ports", "readinessProbe", "livenessProbe", "resources", "env",
                  "securityContext", "volumeMounts", "image"):  # fmt: skip
        assert got_c[field] == want_c[field], field
    assert ("Service", NAME) in rendered and ("Service", f"{NAME}-metrics") in rendered
    assert (
        rendered[("Service", f"{NAME}-metrics")]["spec"]["ports"]
        == M[("Service", f"{NAME}-metrics")]["spec"]["ports"]
    )
    off = template(helm, "--set", "gateway.enabled=false")
    assert ("Deployment", NAME) not in off and ("ClusterRole", NAME) not in off
    assert ("Service", f"{NAME}-metrics") not in off
    assert ("NetworkPolicy", NAME) not in off and ("NetworkPolicy", "openmodel-operator") in off


AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def aggregated_to(role: dict[str, Any]) -> set[str]:
    labels = role["metadata"]["labels"]
    return {k.removeprefix(AGGREGATE) for k, v in labels.items() if k.startswith(AGGREGATE) and v}


def test_use_goes_to_admin_and_edit_and_minting_keys_to_admin_only() -> None:
    user = M[("ClusterRole", "openmodel-user")]
    assert rule_set(user) == {
        ("openmodel.dev", "modeldeployments", "use"),
        ("openmodel.dev", "externalmodels", "use"),
    }
    assert aggregated_to(user) == {"admin", "edit"}
    # Nobody else is given `use`: the same roles may use both kinds.
    users = [
        name
        for (kind, name), role in M.items()
        if kind == "ClusterRole" and any(verb == "use" for _, _, verb in rule_set(role))
    ]
    assert users == ["openmodel-user"]
    assert aggregated_to(M[("ClusterRole", "openmodel-externalmodels-edit")]) == {"admin", "edit"}
    view = M[("ClusterRole", "openmodel-externalmodels-view")]
    assert aggregated_to(view) == {"view"}
    assert {verb for _, _, verb in rule_set(view)} == {"get", "list", "watch"}
    minting = [
        role
        for (kind, _), role in M.items()
        if kind == "ClusterRole" and ("openmodel.dev", "apikeys", "create") in rule_set(role)
    ]
    assert [aggregated_to(r) for r in minting] == [{"admin"}]
    edit_keys = M[("ClusterRole", "openmodel-apikeys-edit")]
    assert aggregated_to(edit_keys) == {"edit"}
    assert "create" not in {verb for _, _, verb in rule_set(edit_keys)}


def test_the_default_install_enforces_auth() -> None:
    config = yaml.safe_load(M[("ConfigMap", "openmodel-config")]["data"]["config.yaml"])
    assert parse_config(config).gateway.auth.mode is AuthMode.ENFORCE


def test_helm_renders_the_same_roles_and_mounts_a_tls_secret(helm: Any) -> None:
    rendered = template(helm)
    for name in ("openmodel-user", "openmodel-apikeys-admin", "openmodel-apikeys-edit"):
        assert rule_set(rendered[("ClusterRole", name)]) == rule_set(M[("ClusterRole", name)])
        assert aggregated_to(rendered[("ClusterRole", name)]) == aggregated_to(
            M[("ClusterRole", name)]
        )
    assert rule_set(rendered[("ClusterRole", NAME)]) == rule_set(M[("ClusterRole", NAME)])
    config = yaml.safe_load(rendered[("ConfigMap", "openmodel-config")]["data"]["config.yaml"])
    assert parse_config(config).gateway.auth.mode is AuthMode.ENFORCE
    assert not parse_config(config).gateway.tls.enabled

    tls = template(helm, "--set", "gateway.tls.secretName=gateway-cert")
    pod = gateway_pod(tls)["spec"]
    assert {"name": "tls", "secret": {"secretName": "gateway-cert"}} in pod["volumes"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    config = yaml.safe_load(tls[("ConfigMap", "openmodel-config")]["data"]["config.yaml"])
    gateway = parse_config(config).gateway
    mounted = {m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls"}
    assert gateway.tls.cert_file == f"{mounted.pop()}/tls.crt"
    assert gateway.auth.mode is AuthMode.ENFORCE  # the merge kept the rest of the config

    unaggregated = template(helm, "--set", "rbac.aggregateToDefaultRoles=false")
    assert aggregated_to(unaggregated[("ClusterRole", "openmodel-user")]) == set()


# --- several replicas: a disruption budget and spreading -----------------------------------


HOSTNAME = "kubernetes.io/hostname"


def anti_affinity_terms(objs: dict[tuple[str, str], Any]) -> list[dict[str, Any]]:
    affinity = gateway_pod(objs)["spec"].get("affinity") or {}
    preferred = (affinity.get("podAntiAffinity") or {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution", []
    )
    return [p["podAffinityTerm"] for p in preferred]


def test_one_gateway_replica_has_no_disruption_budget_and_no_anti_affinity(helm: Any) -> None:
    assert M[("Deployment", NAME)]["spec"]["replicas"] == 1
    assert not [k for k in M if k[0] == "PodDisruptionBudget"]
    assert "affinity" not in gateway_pod(M)["spec"]
    one = template(helm)
    assert not [k for k in one if k[0] == "PodDisruptionBudget"]
    assert "affinity" not in gateway_pod(one)["spec"]


def test_two_gateway_replicas_get_a_budget_of_one_and_prefer_different_nodes(helm: Any) -> None:
    two = template(helm, "--set", "gateway.replicaCount=2")
    deployment = two[("Deployment", NAME)]
    assert deployment["spec"]["replicas"] == 2
    budget = two[("PodDisruptionBudget", NAME)]["spec"]
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = gateway_pod(two)["metadata"]["labels"]
    assert budget["selector"] == deployment["spec"]["selector"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    # Preferred, never required: a one-node cluster still runs both.
    affinity = gateway_pod(two)["spec"]["affinity"]
    assert set(affinity) == {"podAntiAffinity"}
    assert set(affinity["podAntiAffinity"]) == {"preferredDuringSchedulingIgnoredDuringExecution"}
    (term,) = anti_affinity_terms(two)
    assert term["topologyKey"] == HOSTNAME
    assert term["labelSelector"] == deployment["spec"]["selector"]


GATEWAY_AFFINITY = """
gateway:
  replicaCount: 3
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
          - matchExpressions: [{key: node-role/edge, operator: Exists}]
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: ScheduleAnyway
      labelSelector: {matchLabels: {app.kubernetes.io/component: gateway}}
"""


def test_gateway_affinity_replaces_the_default_and_spread_constraints_pass_through(
    helm: Any, tmp_path: Any
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(GATEWAY_AFFINITY)
    chosen = template(helm, "-f", str(values))
    spec = gateway_pod(chosen)["spec"]
    wanted = yaml.safe_load(GATEWAY_AFFINITY)["gateway"]
    assert spec["affinity"] == wanted["affinity"]
    assert spec["topologySpreadConstraints"] == wanted["topologySpreadConstraints"]
    assert ("PodDisruptionBudget", NAME) in chosen  # the budget does not depend on it
    assert "topologySpreadConstraints" not in gateway_pod(template(helm))["spec"]


def _egress_of(objs: dict[tuple[str, str], Any]) -> tuple[list[str], list[dict[str, Any]]]:
    spec = objs[("NetworkPolicy", NAME)]["spec"]
    return spec["policyTypes"], spec["egress"]


def test_the_gateways_base_policy_states_its_egress_dns_api_server_engines(helm: Any) -> None:
    """The operator's policy for the ExternalModels' upstreams only adds to this one: so
    this one must state egress, or the gateway could reach everything (and the
    operator's policy, once applied, would cut it off from DNS and the API server)."""
    for objs in (M, template(helm)):
        types, egress = _egress_of(objs)
        assert "Egress" in types
        dns, api_server, engines = egress
        assert {p["port"] for p in dns["ports"]} == {53}
        assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
        assert {p["port"] for p in api_server["ports"]} == {443, 6443}
        # Engines: every pod of every namespace (a namespaceSelector matches no address
        # outside the cluster).
        assert engines == {"to": [{"namespaceSelector": {}}]}
        # No rule without ports and without `to` (that would be everything).
        assert all(rule.get("to") or rule.get("ports") for rule in egress)


def test_the_chart_narrows_the_api_server_rule_to_the_stated_addresses(
    helm: Any, tmp_path: Any
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "gateway: {networkPolicy: {egress: {apiServer: [{ipBlock: {cidr: 10.0.0.1/32}}],"
        " apiServerPorts: [6443]}}}"
    )
    _, egress = _egress_of(template(helm, "-f", str(values)))
    assert egress[1] == {
        "ports": [{"port": 6443, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
    }


# --- several worker processes per pod (config.gateway.workers) -----------------------------


def test_the_default_resources_grow_with_the_gateway_workers(helm: Any) -> None:
    def resources(*args: str) -> dict[str, Any]:
        (container,) = gateway_pod(template(helm, *args))["spec"]["containers"]
        return container["resources"]  # type: ignore[no-any-return]

    (shipped,) = gateway_pod(M)["spec"]["containers"]
    assert (
        resources()
        == shipped["resources"]
        == {
            "requests": {"cpu": "250m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        }
    )
    assert resources("--set", "config.gateway.workers=3") == {
        "requests": {"cpu": "750m", "memory": "384Mi"},
        "limits": {"memory": "1536Mi"},
    }
    given = resources(
        "--set", "config.gateway.workers=3", "--set", "gateway.resources.requests.cpu=2"
    )
    assert given == {"requests": {"cpu": 2}}
    rendered = template(helm, "--set", "config.gateway.workers=3")
    config = yaml.safe_load(rendered[("ConfigMap", "openmodel-config")]["data"]["config.yaml"])
    assert parse_config(config).gateway.workers == 3
    assert "minimum" in helm_refusal(helm, "config.gateway.workers=0")
