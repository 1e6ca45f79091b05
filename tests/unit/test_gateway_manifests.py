"""The gateway's install (manifests/gateway.yaml, the chart's gateway.yaml) against the code."""

from __future__ import annotations

from typing import Any

import test_manifests
import yaml
from test_manifests import M, rule_set, template

from openmodel.config import GATEWAY_PORT, AuthMode, GatewayConfig, parse_config

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
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
    binding = M[("ClusterRoleBinding", NAME)]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": NAME, "namespace": "openmodel-system"}
    ]


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
    ]
    assert container["ports"] == [
        {"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}
    ]
    service = M[("Service", NAME)]
    assert service["spec"]["ports"][0]["port"] == GATEWAY_PORT
    assert service["spec"]["selector"].items() <= gateway_pod(M)["metadata"]["labels"].items()
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
    assert ("Service", NAME) in rendered
    off = template(helm, "--set", "gateway.enabled=false")
    assert ("Deployment", NAME) not in off and ("ClusterRole", NAME) not in off


AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def aggregated_to(role: dict[str, Any]) -> set[str]:
    labels = role["metadata"]["labels"]
    return {k.removeprefix(AGGREGATE) for k, v in labels.items() if k.startswith(AGGREGATE) and v}


def test_use_goes_to_admin_and_edit_and_minting_keys_to_admin_only() -> None:
    user = M[("ClusterRole", "openmodel-user")]
    assert rule_set(user) == {("openmodel.dev", "modeldeployments", "use")}
    assert aggregated_to(user) == {"admin", "edit"}
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
