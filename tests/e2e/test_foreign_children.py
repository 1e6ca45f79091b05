"""A child name already taken by an object the ModelDeployment does not own is never
taken over: the ModelDeployment reads Degraded/ChildNotOwned, naming the object and its
owner, and nothing is applied to that object. Once the foreign object is gone, the
ModelDeployment converges and Degraded clears.
"""

from __future__ import annotations

from typing import Any

import md_fleet
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness import NotYet, describe_namespace, wait_for
from openmodel_fixtures import OperatorProcess, condition, create_md, get_md

NAME = "x"
REASON = "ChildNotOwned"
# The refusal lands on the first pass; the deadline only bounds a failing run.
CONDITION_TIMEOUT_SECONDS = 30
# Once the foreign Service is deleted nothing of the operator's own is touched, so the
# periodic resync (10 s in these tests) may be what notices it.
CONVERGE_TIMEOUT_SECONDS = 60


pytestmark = pytest.mark.cluster


def foreign_service(namespace: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": NAME, "namespace": namespace, "labels": {"app": "theirs"}}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"selector": {"app": "theirs"}, "ports": [{"name": "web", "port": 8080}]},
    }


def foreign_deployment(namespace: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": NAME, "namespace": namespace, "labels": {"app": "theirs"}}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "web", "image": "theirs/web:1"}]},
            },
        },
    }


def config_map_owner(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    made = client.CoreV1Api(api).create_namespaced_config_map(
        namespace, {"metadata": {"name": name}, "data": {"owner": "yes"}}
    )
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": made.metadata.uid}


def wait_not_owned(
    api: client.ApiClient, namespace: str, op: OperatorProcess, words: list[str]
) -> dict[str, Any]:
    def refused() -> dict[str, Any] | NotYet:
        md = get_md(api, namespace, NAME)
        degraded = condition(md, "Degraded")
        ok = (
            (md.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"]
            and degraded.get("status") == "True"
            and degraded.get("reason") == REASON
        )
        return degraded if ok else NotYet(md.get("status"))

    degraded = wait_for(
        refused,
        CONDITION_TIMEOUT_SECONDS,
        lambda: f"Degraded/{REASON}; {describe_namespace(api, namespace)}\n{op.log_tail()}",
    )
    for word in words:
        assert word in degraded["message"], degraded["message"]
    assert get_md(api, namespace, NAME)["status"]["reason"] == REASON
    return degraded


def _snapshot(obj: Any) -> tuple[str, Any, Any, Any]:
    """What must not change: resourceVersion, spec, labels, owner references."""
    meta = obj.metadata
    return (meta.resource_version, obj.spec.to_dict(), meta.labels, meta.owner_references)


def _managers(obj: Any) -> list[str]:
    return sorted({m.manager for m in obj.metadata.managed_fields or []})


def test_a_hand_made_service_without_owner_is_not_taken_over(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    core = client.CoreV1Api(api_client)
    made = core.create_namespaced_service(namespace, foreign_service(namespace))
    create_md(api_client, md_fleet.small_md(namespace, NAME, "nvidia-h100-80gb"))

    wait_not_owned(api_client, namespace, operator, [f"Service/{NAME}", "has no owner reference"])
    after = core.read_namespaced_service(NAME, namespace)
    assert _snapshot(after) == _snapshot(made)
    assert "openmodel" not in _managers(after), _managers(after)


def test_a_deployment_owned_by_another_object_is_not_taken_over(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    apps = client.AppsV1Api(api_client)
    owner = config_map_owner(api_client, namespace, "their-app")
    made = apps.create_namespaced_deployment(namespace, foreign_deployment(namespace, owner))
    create_md(api_client, md_fleet.small_md(namespace, NAME, "nvidia-h100-80gb"))

    wait_not_owned(
        api_client, namespace, operator, [f"Deployment/{NAME}", "owned by ConfigMap/their-app"]
    )
    after = apps.read_namespaced_deployment(NAME, namespace)
    # The Deployment controller may write status; the object itself stays theirs.
    assert _snapshot(after)[1:] == _snapshot(made)[1:]
    assert after.metadata.generation == made.metadata.generation
    assert "openmodel" not in _managers(after), _managers(after)


def test_deleting_the_foreign_service_lets_the_model_deployment_converge(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service(namespace, foreign_service(namespace))
    create_md(api_client, md_fleet.small_md(namespace, NAME, "nvidia-h100-80gb"))
    wait_not_owned(api_client, namespace, operator, [f"Service/{NAME}"])

    core.delete_namespaced_service(NAME, namespace)

    def own_service() -> Any:
        try:
            svc = core.read_namespaced_service(NAME, namespace)
        except ApiException as e:
            if e.status == 404:
                return NotYet("no Service")
            raise
        refs = [(r.kind, r.name) for r in svc.metadata.owner_references or []]
        return svc if refs == [("ModelDeployment", NAME)] else NotYet(refs)

    wait_for(
        own_service, CONVERGE_TIMEOUT_SECONDS, lambda: describe_namespace(api_client, namespace)
    )
    md_fleet.wait_fleet_converged(
        api_client, namespace, [NAME], CONVERGE_TIMEOUT_SECONDS, operator.log_tail
    )
    md = get_md(api_client, namespace, NAME)
    assert condition(md, "Degraded")["reason"] != REASON
    md_fleet.assert_one_child_each(api_client, namespace, [NAME])
