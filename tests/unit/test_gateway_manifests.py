"""The gateway's install (manifests/gateway.yaml, the chart's gateway.yaml) against the code."""

from __future__ import annotations

from typing import Any

import test_manifests
from test_manifests import M, rule_set, template

from openmodel.config import GATEWAY_PORT, GatewayConfig

NAME = "openmodel-gateway"
helm = test_manifests.helm  # the fixture


def gateway_pod(objs: dict[tuple[str, str], Any]) -> dict[str, Any]:
    return objs[("Deployment", NAME)]["spec"]["template"]  # type: ignore[no-any-return]


def test_the_gateway_may_only_list_and_watch_what_it_routes_from() -> None:
    assert rule_set(M[("ClusterRole", NAME)]) == {
        ("openmodel.dev", "modeldeployments", "list"),
        ("openmodel.dev", "modeldeployments", "watch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
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
