"""Sizing from a model's own config.json, end to end: the real operator process and
control plane, with a local stand-in for the Hugging Face Hub's API (fake_hub.py, the
only stand-in) as HF_ENDPOINT. An operator of its own serves e2e-hub-* namespaces.

A ModelDeployment naming a repo no catalogue knows shows SizingPending while the
config.json is read, then its GPU count and status.sizing from it; 401, 404 and a
timeout each give their condition; spec.modelInfo still overrides.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fake_hub
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness import Cluster, NotYet, create_namespace, delete_namespace, wait_for
from openmodel_fixtures import (
    MODEL_CONFIG_NAMESPACE_PREFIX,
    OperatorProcess,
    condition,
    create_md,
    get_md,
    platform_config,
    start_operator,
)

pytestmark = pytest.mark.cluster
RESOLVER = {"timeoutSeconds": 2, "maxBackoffSeconds": 4}


@pytest.fixture(scope="module")
def hub() -> Iterator[fake_hub.FakeHub]:
    server = fake_hub.FakeHub().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hub_operator(
    cluster: Cluster, crd: None, hub: fake_hub.FakeHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("hub-operator")
    config_path = workdir / "hub-platform.yaml"
    config_path.write_text(yaml.safe_dump({**platform_config(), "modelResolver": RESOLVER}))
    op = start_operator(
        cluster.kubeconfig,
        workdir,
        extra_env={
            "OPENMODEL_NAMESPACES": f"{MODEL_CONFIG_NAMESPACE_PREFIX}-*",
            "OPENMODEL_CONFIG": str(config_path),
            "HF_ENDPOINT": hub.url,
        },
        name="operator-hub",
    )
    yield op
    op.stop()


@pytest.fixture
def ns(api_client: client.ApiClient) -> Iterator[str]:
    name = create_namespace(api_client, MODEL_CONFIG_NAMESPACE_PREFIX)
    yield name
    delete_namespace(api_client, name)


def body(ns: str, name: str, model: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"model": model, "gpu": {"type": "nvidia-h100-80gb"}, **spec},
    }


def deployment(api: client.ApiClient, ns: str, name: str) -> Any:
    try:
        return client.AppsV1Api(api).read_namespaced_deployment(name, ns)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def reasons(md: dict[str, Any]) -> dict[str, str]:
    return {
        c["type"]: f"{c['status']}/{c['reason']}"
        for c in md.get("status", {}).get("conditions", [])
    }


def test_an_uncatalogued_repo_is_pending_then_sized_from_its_config_json(
    api_client: client.ApiClient, hub_operator: OperatorProcess, hub: fake_hub.FakeHub, ns: str
) -> None:
    create_md(api_client, body(ns, "house", fake_hub.FINE_TUNE_REPO))
    seen: list[dict[str, str]] = []

    def pending() -> bool | NotYet:
        md = get_md(api_client, ns, "house")
        seen.append(reasons(md))
        ready = condition(md, "Ready")
        return ready.get("reason") == "SizingPending" or NotYet(reasons(md))

    wait_for(
        pending, 20, lambda: f"SizingPending; seen {seen[-3:]}; log:\n{hub_operator.log_tail()}"
    )
    md = get_md(api_client, ns, "house")
    assert condition(md, "Degraded")["status"] == "False"
    assert md["status"]["reason"] == "SizingPending"
    assert deployment(api_client, ns, "house") is None  # nothing applied before the verdict

    def sized() -> dict[str, Any] | NotYet:
        md = get_md(api_client, ns, "house")
        status = md.get("status", {})
        return md if "sizing" in status and status.get("gpu") else NotYet(reasons(md))

    md = wait_for(sized, 30, lambda: f"status.sizing; log:\n{hub_operator.log_tail()}")
    status = md["status"]
    assert status["gpu"] == "1x nvidia-h100-80gb"
    assert status["sizing"]["quantization"] == "awq 4-bit"
    assert "config.json" in status["sizing"]["summary"]
    assert status["reason"] != "SizingPending"
    dep = wait_for(lambda: deployment(api_client, ns, "house") or NotYet("none"), 30, "Deployment")
    args = dep.spec.template.spec.containers[0].args
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    sha = fake_hub.sha_of(fake_hub.FINE_TUNE_REPO)
    assert f"/{fake_hub.FINE_TUNE_REPO}/resolve/{sha}/config.json" in hub.requests


@pytest.mark.parametrize(
    ("repo", "reason", "within"),
    [
        (fake_hub.UNAUTHORIZED_REPO, "ModelConfigUnauthorized", 20),
        (fake_hub.MISSING_REPO, "ModelConfigNotFound", 20),
        (fake_hub.SLOW_REPO, "ModelConfigTimeout", 30),
    ],
)
def test_a_config_json_that_cannot_be_read_gives_its_reason(
    api_client: client.ApiClient,
    hub_operator: OperatorProcess,
    ns: str,
    repo: str,
    reason: str,
    within: float,
) -> None:
    create_md(api_client, body(ns, "broken", repo))

    def degraded() -> dict[str, Any] | NotYet:
        md = get_md(api_client, ns, "broken")
        return md if condition(md, "Degraded").get("reason") == reason else NotYet(reasons(md))

    md = wait_for(degraded, within, lambda: f"Degraded/{reason}; log:\n{hub_operator.log_tail()}")
    message = condition(md, "Degraded")["message"]
    assert repo in message and "spec.modelInfo" in message, message
    assert md["status"]["reason"] == reason
    assert condition(md, "Degraded")["status"] == "True"


def test_model_info_still_overrides(
    api_client: client.ApiClient, hub_operator: OperatorProcess, hub: fake_hub.FakeHub, ns: str
) -> None:
    info = {
        "parametersBillions": 7.0,
        "layers": 32,
        "attentionHeads": 32,
        "kvHeads": 8,
        "headDim": 128,
    }
    before = len(hub.requests)
    create_md(api_client, body(ns, "stated", fake_hub.MISSING_REPO, modelInfo=info))

    def sized() -> dict[str, Any] | NotYet:
        md = get_md(api_client, ns, "stated")
        return md if "sizing" in md.get("status", {}) else NotYet(reasons(md))

    md = wait_for(sized, 30, lambda: f"status.sizing; log:\n{hub_operator.log_tail()}")
    assert md["status"]["gpu"] == "1x nvidia-h100-80gb"
    assert "spec.modelInfo" in md["status"]["sizing"]["model"]
    assert condition(md, "Degraded")["status"] == "False"
    assert not any(fake_hub.MISSING_REPO in p for p in hub.requests[before:])
