"""The operator installed from Git by a real Argo CD: an Application of charts/openmodel
(Helm) and one of manifests/ (kustomize), each Synced and Healthy with the operator and
gateway pods Running under their own ServiceAccounts (KWOK marks the pods Running; no
container runs here: test_install.py proves the ServiceAccount's rights by running the
operator with its token).

The ModelDeployment CRD is shared with the session, so the Applications are deleted
without cascade and everything else they created is deleted by this test.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from harness import NotYet, create_namespace, describe_namespace, wait_for
from harness import argocd as argo
from harness.argocd import ArgoCD

pytestmark = [pytest.mark.cluster, pytest.mark.argocd]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def install_repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Git repository holding the chart and the manifests as they are in this tree."""
    repo = tmp_path_factory.mktemp("install-repo")
    shutil.copytree(REPO / "charts", repo / "charts")
    shutil.copytree(REPO / "manifests", repo / "manifests")
    return argo.git_repo(repo)


def remove_app_leaving_crds(api: client.ApiClient, name: str) -> None:
    """Delete the Application without cascade, then what it created except the CRDs."""
    try:
        resources = (argo.get_application(api, name).get("status") or {}).get("resources") or []
    except ApiException as error:
        if error.status != 404:
            raise
        resources = []
    argo.delete_application(api, name, cascade=False)
    wait_for(lambda: argo.application_gone(api, name), 30, f"Application {name} deleted")
    dyn = dynamic.DynamicClient(api)
    namespaces = []
    for res in resources:
        if res["kind"] == "CustomResourceDefinition":
            continue
        if res["kind"] == "Namespace":
            namespaces.append(res["name"])
            continue
        api_version = f"{res['group']}/{res['version']}" if res.get("group") else res["version"]
        kind = dyn.resources.get(api_version=api_version, kind=res["kind"])
        try:
            kind.delete(name=res["name"], namespace=res.get("namespace") or None)
        except ApiException as error:
            if error.status != 404:
                raise
    core = client.CoreV1Api(api)
    for ns in namespaces:
        try:
            core.delete_namespace(ns)
        except ApiException as error:
            if error.status != 404:
                raise

    def namespaces_gone() -> bool | NotYet:
        left = []
        for ns in namespaces:
            try:
                core.read_namespace(ns)
                left.append(ns)
            except ApiException as error:
                if error.status != 404:
                    raise
        return not left or NotYet(f"still terminating: {left}")

    # test_install.py installs into openmodel-system next: it must be gone by then.
    wait_for(namespaces_gone, 120, "the install's namespaces to be deleted")


def wait_synced_healthy(api: client.ApiClient, name: str, namespace: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | NotYet:
        app = argo.get_application(api, name)
        status = app.get("status") or {}
        seen = (status.get("sync", {}).get("status"), status.get("health", {}).get("status"))
        return app if seen == ("Synced", "Healthy") else NotYet(seen)

    def describe() -> str:
        return f"{argo.summary(argo.get_application(api, name))}\n" + describe_namespace(
            api, namespace
        )

    return wait_for(reached, 120, describe)


def running_pods_by_component(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    running = {
        p.metadata.labels.get("app.kubernetes.io/component"): p
        for p in pods
        if p.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    }
    return running


def check_install(
    api: client.ApiClient, app: dict[str, Any], namespace: str, operator_sa: str, gateway_sa: str
) -> None:
    kinds = {(r["kind"], r["name"]) for r in app["status"]["resources"]}
    assert ("CustomResourceDefinition", "modeldeployments.openmodel.dev") in kinds, kinds
    assert ("ServiceAccount", operator_sa) in kinds, kinds
    assert any(kind == "ClusterRole" for kind, _ in kinds), kinds
    unhealthy = [
        r
        for r in app["status"]["resources"]
        if (r.get("health") or {}).get("status") not in (None, "Healthy")
    ]
    assert unhealthy == [], unhealthy
    pods = running_pods_by_component(api, namespace)
    assert set(pods) >= {"operator", "gateway"}, describe_namespace(api, namespace)
    assert pods["operator"].spec.service_account_name == operator_sa
    assert pods["gateway"].spec.service_account_name == gateway_sa


@pytest.fixture
def chart_namespace(api_client: client.ApiClient) -> Iterator[str]:
    name = create_namespace(api_client, "openmodel-argocd")
    yield name
    try:
        client.CoreV1Api(api_client).delete_namespace(name)
    except ApiException as error:
        if error.status != 404:
            raise


def test_operator_installed_from_the_helm_chart(
    api_client: client.ApiClient, argocd: ArgoCD, install_repo: str, chart_namespace: str
) -> None:
    name = "om-argocd"  # the Helm release: cluster-scoped names om-argocd-openmodel-*
    body = argo.application(name, install_repo, "charts/openmodel", chart_namespace,
                            finalizer=False)  # fmt: skip
    started = time.monotonic()
    argo.create_application(api_client, body)
    try:
        app = wait_synced_healthy(api_client, name, chart_namespace)
        print(f"chart Application Synced/Healthy in {time.monotonic() - started:.1f} s")
        assert app["status"]["sourceType"] == "Helm"
        check_install(
            api_client,
            app,
            chart_namespace,
            f"{name}-openmodel-operator",
            f"{name}-openmodel-gateway",
        )
        argocd.check_alive()
    finally:
        remove_app_leaving_crds(api_client, name)


def test_operator_installed_from_the_kustomize_manifests(
    api_client: client.ApiClient, argocd: ArgoCD, install_repo: str
) -> None:
    name = "openmodel-kustomize"
    body = argo.application(name, install_repo, "manifests", "openmodel-system", finalizer=False)
    started = time.monotonic()
    argo.create_application(api_client, body)
    try:
        app = wait_synced_healthy(api_client, name, "openmodel-system")
        print(f"manifests/ Application Synced/Healthy in {time.monotonic() - started:.1f} s")
        assert app["status"]["sourceType"] == "Kustomize"
        check_install(
            api_client, app, "openmodel-system", "openmodel-operator", "openmodel-gateway"
        )
        argocd.check_alive()
    finally:
        remove_app_leaving_crds(api_client, name)
