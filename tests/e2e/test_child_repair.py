"""Children broken by hand are repaired: a deleted Deployment or Service is made again,
and a hand edit of what the operator renders (image, args, a label it sets, the
Service's ports) is put back, with no second child left beside the repaired one.

test_reconcile.py has the image edit on its own; this covers each child kind's deletion
and an edit of each, and prints how long each repair took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import md_fleet
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness import NotYet, describe_namespace, wait_for
from openmodel_fixtures import OperatorProcess, create_md

pytestmark = pytest.mark.cluster

NAME = "md-00"
# The session's operator resyncs every 10 s (OPENMODEL_RESYNC_SECONDS), and events
# should repair far sooner; this deadline only bounds a failing run.
REPAIR_TIMEOUT_SECONDS = 30
MANAGED_BY = "app.kubernetes.io/managed-by"


@dataclass(frozen=True)
class Child:
    """What the operator rendered, read back once the ModelDeployment was Ready."""

    deployment: client.V1Deployment
    service: client.V1Service


def _read(api: client.ApiClient, namespace: str) -> tuple[Any, Any]:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    try:
        deployment = apps.read_namespaced_deployment(NAME, namespace)
    except ApiException as e:
        if e.status != 404:
            raise
        deployment = None
    try:
        service = core.read_namespaced_service(NAME, namespace)
    except ApiException as e:
        if e.status != 404:
            raise
        service = None
    return deployment, service


def _engine(deployment: Any) -> Any:
    return deployment.spec.template.spec.containers[0]


def _ports(service: Any) -> list[tuple[str, int, str]]:
    return [(p.name, p.port, str(p.target_port)) for p in service.spec.ports]


def delete_deployment(api: client.ApiClient, ns: str, _: Child) -> None:
    client.AppsV1Api(api).delete_namespaced_deployment(NAME, ns)


def delete_service(api: client.ApiClient, ns: str, _: Child) -> None:
    client.CoreV1Api(api).delete_namespaced_service(NAME, ns)


def edit_image(api: client.ApiClient, ns: str, _: Child) -> None:
    containers = [{"name": "engine", "image": "evil:latest"}]
    client.AppsV1Api(api).patch_namespaced_deployment(
        NAME, ns, {"spec": {"template": {"spec": {"containers": containers}}}}
    )


def edit_args(api: client.ApiClient, ns: str, _: Child) -> None:
    containers = [{"name": "engine", "args": ["--model", "someone/else"]}]
    client.AppsV1Api(api).patch_namespaced_deployment(
        NAME, ns, {"spec": {"template": {"spec": {"containers": containers}}}}
    )


def edit_deployment_label(api: client.ApiClient, ns: str, _: Child) -> None:
    client.AppsV1Api(api).patch_namespaced_deployment(
        NAME, ns, {"metadata": {"labels": {MANAGED_BY: "someone-else"}}}
    )


def remove_owner_label(api: client.ApiClient, ns: str, _: Child) -> None:
    # The child watches select by this label, so no event shows this edit: the resync
    # (every 10 s here) is what must see it.
    escaped = md_fleet.OWNER_LABEL.replace("/", "~1")
    client.AppsV1Api(api).patch_namespaced_deployment(
        NAME, ns, [{"op": "remove", "path": f"/metadata/labels/{escaped}"}]
    )


def edit_service_ports(api: client.ApiClient, ns: str, _: Child) -> None:
    # A JSON patch (a list body): the one port entry changed in place, as `kubectl edit` does.
    client.CoreV1Api(api).patch_namespaced_service(
        NAME,
        ns,
        [
            {"op": "replace", "path": "/spec/ports/0/port", "value": 9000},
            {"op": "replace", "path": "/spec/ports/0/targetPort", "value": 9000},
        ],
    )


def edit_service_label(api: client.ApiClient, ns: str, _: Child) -> None:
    client.CoreV1Api(api).patch_namespaced_service(
        NAME, ns, {"metadata": {"labels": {MANAGED_BY: "someone-else"}}}
    )


def deployment_is_back(before: Child, deployment: Any, _: Any) -> str | None:
    """None when repaired, else what is still wrong."""
    if deployment is None:
        return "no Deployment"
    if deployment.metadata.uid == before.deployment.metadata.uid:
        return "still the deleted one"
    return _deployment_matches(before, deployment)


def service_is_back(before: Child, _: Any, service: Any) -> str | None:
    if service is None:
        return "no Service"
    if service.metadata.uid == before.service.metadata.uid:
        return "still the deleted one"
    return _service_matches(before, service)


def _deployment_matches(before: Child, deployment: Any) -> str | None:
    want, have = _engine(before.deployment), _engine(deployment)
    if have.image != want.image:
        return f"image {have.image}"
    if have.args != want.args:
        return f"args {have.args}"
    if deployment.metadata.labels != before.deployment.metadata.labels:
        return f"labels {deployment.metadata.labels}"
    if deployment.spec.template.metadata.labels != before.deployment.spec.template.metadata.labels:
        return f"pod labels {deployment.spec.template.metadata.labels}"
    return None


def _service_matches(before: Child, service: Any) -> str | None:
    if _ports(service) != _ports(before.service):
        return f"ports {_ports(service)}"
    if service.metadata.labels != before.service.metadata.labels:
        return f"labels {service.metadata.labels}"
    if service.spec.selector != before.service.spec.selector:
        return f"selector {service.spec.selector}"
    return None


def deployment_put_back(before: Child, deployment: Any, _: Any) -> str | None:
    return "no Deployment" if deployment is None else _deployment_matches(before, deployment)


def service_put_back(before: Child, _: Any, service: Any) -> str | None:
    return "no Service" if service is None else _service_matches(before, service)


Damage = Callable[[client.ApiClient, str, Child], None]
Repaired = Callable[[Child, Any, Any], str | None]
# Server-side apply merges Service ports by (port, protocol): a hand edit of the one
# entry's port leaves that entry to the hand's field manager, and a plain forced apply
# would add the operator's 8000 entry beside it, refused as two ports named "http"; the
# reconciler replaces the spec's lists then (a merge patch) and applies again.
# A removed owner label takes the Deployment out of the label-selected watch: the API
# server sends DELETED, the cache forgets it, and the pass puts the label back.
CASES = [
    pytest.param(delete_deployment, deployment_is_back, id="deployment-deleted"),
    pytest.param(delete_service, service_is_back, id="service-deleted"),
    pytest.param(edit_image, deployment_put_back, id="deployment-image"),
    pytest.param(edit_args, deployment_put_back, id="deployment-args"),
    pytest.param(edit_deployment_label, deployment_put_back, id="deployment-label"),
    pytest.param(remove_owner_label, deployment_put_back, id="deployment-owner-label-removed"),
    pytest.param(edit_service_ports, service_put_back, id="service-ports"),
    pytest.param(edit_service_label, service_put_back, id="service-label"),
]


@pytest.mark.parametrize(("damage", "repaired"), CASES)
def test_child_broken_by_hand_is_repaired(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    damage: Damage,
    repaired: Repaired,
    request: pytest.FixtureRequest,
) -> None:
    create_md(api_client, md_fleet.small_md(namespace, NAME, "nvidia-h100-80gb"))
    md_fleet.wait_fleet_converged(api_client, namespace, [NAME], 60, operator.log_tail)
    deployment, service = _read(api_client, namespace)
    before = Child(deployment, service)

    started = time.monotonic()
    damage(api_client, namespace, before)

    def is_repaired() -> bool | NotYet:
        deployment, service = _read(api_client, namespace)
        wrong = repaired(before, deployment, service)
        return wrong is None or NotYet(wrong)

    wait_for(
        is_repaired,
        REPAIR_TIMEOUT_SECONDS,
        lambda: f"{describe_namespace(api_client, namespace)}\nlog:\n{operator.log_tail()}",
        interval=0.05,
    )
    seconds = time.monotonic() - started
    print(f"\n[child-repair] {request.node.callspec.id}: repaired in {seconds:.2f} s")
    # Repaired in place: still one of each, and the ModelDeployment serves again.
    md_fleet.wait_fleet_converged(api_client, namespace, [NAME], 60, operator.log_tail)
    # A hand edit of the pod template rolls out (a second ReplicaSet), so only the
    # Deployment and Service themselves are counted here.
    md_fleet.assert_one_child_each(api_client, namespace, [NAME], first_rollout_only=False)
