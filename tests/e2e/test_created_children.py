"""Children are created with a POST (no read first) and updated by server-side apply; on
the real API server a created object's fields sit under an Update entry of our field
manager, which an apply by that manager would never remove. The operator turns that
entry into an Apply entry before its first apply, so a field the spec no longer asks
for really goes: here an env var taken out of the ModelDeployment leaves the Deployment.
"""

from __future__ import annotations

from typing import Any

import md_fleet
import pytest
from kubernetes import client

from harness import NotYet, describe_namespace, wait_for
from openmodel_fixtures import OperatorProcess, create_md

NAME = "created"
# Each step is one pass after one watch event; the deadline only bounds a failing run.
TIMEOUT_SECONDS = 30

pytestmark = pytest.mark.cluster


def _env(deployment: Any) -> dict[str, str]:
    container = deployment.spec.template.spec.containers[0]
    return {e.name: e.value for e in container.env or []}


def _our_entries(deployment: Any) -> list[str]:
    return sorted(
        m.operation
        for m in deployment.metadata.managed_fields or []
        if m.manager == "openmodel" and not m.subresource
    )


def _set_env(api: client.ApiClient, namespace: str, env: list[dict[str, str]]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "openmodel.dev", "v1alpha1", namespace, "modeldeployments", NAME, {"spec": {"env": env}}
    )


def test_an_env_var_taken_out_of_the_spec_leaves_a_created_deployment(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    apps = client.AppsV1Api(api_client)
    body = md_fleet.small_md(namespace, NAME, "nvidia-h100-80gb")
    body["spec"]["env"] = [{"name": "KEEP", "value": "1"}, {"name": "DROP", "value": "2"}]
    create_md(api_client, body)

    def deployment_where(check: Any) -> Any:
        def probe() -> Any:
            found = apps.list_namespaced_deployment(namespace).items
            if not found:
                return NotYet("no Deployment")
            return found[0] if check(found[0]) else NotYet(found[0].metadata.managed_fields)

        return wait_for(
            probe,
            TIMEOUT_SECONDS,
            lambda: f"{describe_namespace(api_client, namespace)}\n{operator.log_tail()}",
        )

    created = deployment_where(lambda d: "DROP" in _env(d))
    # As the POST left it: our fields under an Update entry.
    assert _our_entries(created) == ["Update"], created.metadata.managed_fields

    _set_env(api_client, namespace, [{"name": "KEEP", "value": "1"}])
    updated = deployment_where(lambda d: "DROP" not in _env(d))
    assert _env(updated)["KEEP"] == "1"
    assert _our_entries(updated) == ["Apply"], updated.metadata.managed_fields

    # And again, now as a plain apply: a second var comes and goes.
    _set_env(api_client, namespace, [{"name": "KEEP", "value": "1"}, {"name": "NEW", "value": "3"}])
    deployment_where(lambda d: "NEW" in _env(d))
    _set_env(api_client, namespace, [{"name": "KEEP", "value": "1"}])
    final = deployment_where(lambda d: "NEW" not in _env(d))
    assert _our_entries(final) == ["Apply"]
