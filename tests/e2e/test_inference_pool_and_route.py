"""Gateway API Inference Extension against the real API server: the upstream CRDs
(hack/fetch-gateway-crds.sh) are installed, an operator with `inferenceExtension`
enabled serves e2e-gwie-* namespaces (the session operator leaves them alone), and a
ModelDeployment gets an InferencePool and an HTTPRoute the API server accepts, that
follow a spec edit, and that kube-controller-manager's garbage collector deletes with
the ModelDeployment. No gateway or endpoint picker runs here: nothing routes traffic.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.config import parse_config
from openmodel.engines import parse_model_deployment
from openmodel.reconcile.drift import object_holds
from openmodel.reconcile.plan import make_plan

from harness import Cluster, NotYet, create_namespace, delete_namespace, wait_for
from openmodel_fixtures import (
    GROUP,
    INFERENCE_EXTENSION_NAMESPACE_PREFIX,
    PLURAL,
    REPO,
    VERSION,
    OperatorProcess,
    create_md,
    get_md,
    load_example,
    platform_config,
    start_operator,
)

pytestmark = pytest.mark.cluster

CRD_FILES = (
    "gateway.networking.k8s.io_httproutes.yaml",
    "inference.networking.k8s.io_inferencepools.yaml",
)
POOL = ("inference.networking.k8s.io", "v1", "inferencepools")
ROUTE = ("gateway.networking.k8s.io", "v1", "httproutes")
INFERENCE_EXTENSION = {
    "enabled": True,
    "gateway": {"name": "inference-gateway", "namespace": "gateway-system"},
    "endpointPickerRef": {"name": "{name}-epp", "port": 9002},
}
NAME = "llama70b-awq"


def crd_dir() -> Path:
    """The cached CRDs (fetched from the Go modules if missing)."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "fetch-gateway-crds.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"hack/fetch-gateway-crds.sh failed:\n{result.stderr}"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def gateway_crds(api_client: client.ApiClient) -> Iterator[None]:
    """HTTPRoute and InferencePool CRDs installed for this test, removed after it."""
    ext = client.ApiextensionsV1Api(api_client)
    bodies = [yaml.safe_load((crd_dir() / f).read_text()) for f in CRD_FILES]
    names = [b["metadata"]["name"] for b in bodies]
    for body in bodies:
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as e:
            if e.status != 409:
                raise

    def established() -> bool | NotYet:
        states = {}
        for name in names:
            crd = ext.read_custom_resource_definition(name)
            states[name] = {c.type: c.status for c in (crd.status.conditions or [])}
        done = all(s.get("Established") == "True" for s in states.values())
        return done or NotYet(states)

    wait_for(established, 30, "the Gateway API and Inference Extension CRDs to be Established")
    yield
    for name in names:
        try:
            ext.delete_custom_resource_definition(name)
        except ApiException as e:
            if e.status != 404:
                raise

    def removed() -> bool | NotYet:
        left = []
        for name in names:
            try:
                ext.read_custom_resource_definition(name)
                left.append(name)
            except ApiException as e:
                if e.status != 404:
                    raise
        return not left or NotYet(left)

    wait_for(removed, 60, "the Gateway API and Inference Extension CRDs to be removed")


@pytest.fixture
def gwie_namespace(api_client: client.ApiClient) -> Iterator[str]:
    name = create_namespace(api_client, INFERENCE_EXTENSION_NAMESPACE_PREFIX)
    yield name
    delete_namespace(api_client, name)


@pytest.fixture
def gwie_operator(
    cluster: Cluster, crd: None, gateway_crds: None, tmp_path: Path
) -> Iterator[OperatorProcess]:
    config = {**platform_config(), "inferenceExtension": INFERENCE_EXTENSION}
    config_path = tmp_path / "gwie-platform.yaml"
    config_path.write_text(yaml.safe_dump(config))
    op = start_operator(
        cluster.kubeconfig,
        tmp_path,
        extra_env={
            "OPENMODEL_NAMESPACES": f"{INFERENCE_EXTENSION_NAMESPACE_PREFIX}-*",
            "OPENMODEL_CONFIG": str(config_path),
        },
        name="operator-gwie",
    )
    yield op
    op.stop()


def read(api: client.ApiClient, kind: tuple[str, str, str], ns: str) -> dict[str, Any] | None:
    try:
        return client.CustomObjectsApi(
            api
        ).get_namespaced_custom_object(  # type: ignore[no-any-return]
            *kind[:2], ns, kind[2], NAME
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def both(api: client.ApiClient, ns: str) -> tuple[dict[str, Any], dict[str, Any]] | NotYet:
    pool, route = read(api, POOL, ns), read(api, ROUTE, ns)
    if pool is None or route is None:
        return NotYet({"InferencePool": pool is not None, "HTTPRoute": route is not None})
    return pool, route


def header_values(route: dict[str, Any]) -> list[str]:
    return [h["value"] for m in route["spec"]["rules"][0]["matches"] for h in m["headers"]]


def test_inference_pool_and_route_are_accepted_follow_the_spec_and_are_collected(
    api_client: client.ApiClient, gwie_operator: OperatorProcess, gwie_namespace: str
) -> None:
    ns = gwie_namespace
    created = create_md(
        api_client, load_example("llama70b-awq.yaml", ns, servedModelName="llama-70b")
    )
    uid = created["metadata"]["uid"]
    pool, route = wait_for(
        lambda: both(api_client, ns),
        60,
        lambda: f"InferencePool and HTTPRoute; operator log:\n{gwie_operator.log_tail()}",
    )

    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "name": NAME,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for obj in (pool, route):
        assert obj["metadata"]["ownerReferences"] == [owner]
        assert obj["metadata"]["labels"]["openmodel.dev/model-deployment"] == NAME
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "openmodel"
        managers = {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}
        assert ("openmodel", "Apply") in managers
    # As stored, with the CRD's defaults filled in (group, kind, appProtocol).
    assert pool["spec"] == {
        # The serving pods, as the Service selects them (never a group's workers).
        "selector": {
            "matchLabels": {
                "openmodel.dev/model-deployment": NAME,
                "app.kubernetes.io/name": "openmodel-engine",
            }
        },
        "targetPorts": [{"number": 8000}],
        "appProtocol": "http",
        "endpointPickerRef": {
            "group": "",
            "kind": "Service",
            "name": f"{NAME}-epp",
            "port": {"number": 9002},
            "failureMode": "FailClose",
        },
    }
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "inference-gateway",
            "namespace": "gateway-system",
        }
    ]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": NAME, "weight": 1}
    ]
    assert rule["matches"] == [
        {
            "path": {"type": "PathPrefix", "value": "/"},
            "headers": [{"type": "Exact", "name": "X-Gateway-Model-Name", "value": "llama-70b"}],
        }
    ]

    # What the server stored holds everything the operator renders, defaults and all:
    # a converged cluster gets no further applies of these two.
    config = parse_config({**platform_config(), "inferenceExtension": INFERENCE_EXTENSION})
    md = get_md(api_client, ns, NAME)
    children = make_plan(parse_model_deployment(md), config, 1).children
    assert object_holds(children.inference_pool, pool)  # type: ignore[arg-type]
    assert object_holds(children.http_route, route)  # type: ignore[arg-type]

    # A spec edit that changes both: another served name, another engine (TGI: port 80).
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, NAME, {"spec": {"servedModelName": "llama-v2", "engine": "tgi"}}
    )

    def edited() -> tuple[dict[str, Any], dict[str, Any]] | NotYet:
        found = both(api_client, ns)
        if isinstance(found, NotYet):
            return found
        pool, route = found
        seen = {"targetPorts": pool["spec"]["targetPorts"], "headers": header_values(route)}
        if seen == {"targetPorts": [{"number": 80}], "headers": ["llama-v2"]}:
            return found
        return NotYet(seen)

    wait_for(edited, 60, lambda: f"the edit to reach both; log:\n{gwie_operator.log_tail()}")

    # Deleting the ModelDeployment: the garbage collector removes both children.
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, NAME
    )

    def collected() -> bool | NotYet:
        left = {
            k: read(api_client, kind, ns) is not None
            for k, kind in (("pool", POOL), ("route", ROUTE))
        }
        return not any(left.values()) or NotYet(left)

    wait_for(collected, 90, "the garbage collector to delete the InferencePool and HTTPRoute")
    assert gwie_operator.alive(), gwie_operator.log_tail()
