"""A pass that reads from the watch cache against the real API server: a stale cached
Deployment is refused (409), read again, and neither written twice nor allowed to revert
a newer change by someone else; a converged pass costs no request.

The Reconciler runs in the test process (its cache fed by hand, as kopf's index
functions feed it), in an e2e-cache-* namespace the session's operator does not serve,
so the test decides exactly what the cache has seen.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from openmodel.config import PlatformConfig
from openmodel.kube import calls as kube
from openmodel.reconcile.reconciler import Reconciler

from harness import create_namespace, delete_namespace
from openmodel_fixtures import CACHE_TEST_NAMESPACE_PREFIX, create_md, load_example

NAME = "llama"


@pytest.fixture
def cache_namespace(api_client: client.ApiClient, crd: None) -> Iterator[str]:
    name = create_namespace(api_client, CACHE_TEST_NAMESPACE_PREFIX)
    yield name
    delete_namespace(api_client, name)


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(method, path) of every request the operator's kube module makes, answered or not."""
    seen: list[tuple[str, str]] = []
    real = kube.call_once

    def counted(api: client.ApiClient, method: str, path: str, **kw: Any) -> dict[str, Any]:
        seen.append((method, path))
        return real(api, method, path, **kw)

    monkeypatch.setattr(kube, "call_once", counted)
    return seen


def _image(deployment: dict[str, Any]) -> str:
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def test_stale_cache_never_reverts_a_newer_change_and_a_calm_pass_is_free(
    api_client: client.ApiClient, cache_namespace: str, requests: list[tuple[str, str]]
) -> None:
    ns = cache_namespace
    body = load_example(
        "llama70b-awq.yaml",
        ns,
        autoscaling={"minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 8},
    )
    body["metadata"]["name"] = NAME
    create_md(api_client, body)
    r = Reconciler(api_client, PlatformConfig())
    md = kube.get(api_client, "openmodel.dev/v1alpha1", "ModelDeployment", ns, NAME)
    assert md is not None
    r.cache.observe("ModelDeployment", md)

    first = r.reconcile_by_name(ns, NAME)
    assert first is not None and first.problem is None
    # Created: the engine pods' policy first, the engine last.
    assert first.applied == [f"NetworkPolicy/{NAME}", f"Service/{NAME}", f"Deployment/{NAME}"]
    deployment_path = kube.object_path("apps/v1", "Deployment", ns, NAME)
    rendered_image = _image(kube.call(api_client, "GET", deployment_path))

    # A hand edit of the image, which the watch delivers...
    edited = kube.call(
        api_client,
        "PATCH",
        deployment_path,
        body={
            "spec": {
                "template": {"spec": {"containers": [{"name": "engine", "image": "hand/edit:1"}]}}
            }
        },
        content_type="application/strategic-merge-patch+json",
        query=[("fieldManager", "kubectl-edit")],
    )
    r.cache.observe("Deployment", copy.deepcopy(edited))
    # ...then the autoscaler of the replica holding the Lease scales to 3, which this
    # replica's watch has not delivered yet.
    scaled = kube.apply(
        api_client,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": ns},
            "spec": {"replicas": 3},
        },
        field_manager=kube.AUTOSCALER_FIELD_MANAGER,
    )
    generation_before = int(scaled["metadata"]["generation"])
    requests.clear()

    result = r.reconcile_by_name(ns, NAME)
    assert result is not None and result.applied == [f"Deployment/{NAME}"], requests
    methods = [m for m, _ in requests]
    # The first write over the created Deployment (a JSON patch turning its fields into
    # applied ones) answered a newer spec than the cached one: stale, the Deployment read
    # again, applied once.
    assert methods[:3] == ["PATCH", "GET", "PATCH"], requests
    final = kube.call(api_client, "GET", deployment_path)
    assert final["spec"]["replicas"] == 3, "the autoscaler's newer replicas were reverted"
    assert _image(final) == rendered_image, "the hand edit was not put back"
    assert int(final["metadata"]["generation"]) == generation_before + 1  # one write

    # Converged, the cache up to date (as the watch would make it): a pass is free.
    r.cache.observe("Deployment", final)
    service = kube.get(api_client, "v1", "Service", ns, NAME)
    assert service is not None
    r.cache.observe("Service", service)
    policy = kube.get(api_client, "networking.k8s.io/v1", "NetworkPolicy", ns, NAME)
    assert policy is not None
    r.cache.observe("NetworkPolicy", policy)
    md_now = kube.get(api_client, "openmodel.dev/v1alpha1", "ModelDeployment", ns, NAME)
    assert md_now is not None
    r.cache.observe("ModelDeployment", md_now)
    r.reconcile_by_name(ns, NAME)  # may write status from the Deployment read just now
    requests.clear()
    calm = r.reconcile_by_name(ns, NAME)
    assert calm is not None and calm.applied == [] and not calm.status_written
    assert requests == []
