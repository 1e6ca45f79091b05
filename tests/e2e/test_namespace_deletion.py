"""A namespace deleted with twenty ModelDeployments in it: the namespace controller (the
harness's kube-controller-manager runs every controller) empties and removes it, nothing
of it is left (ModelDeployments, Deployments, ReplicaSets, Services, Pods, Events, ...),
and the operator does not keep working on it: its log mentions the namespace only a few
times once it is gone, and it still serves other namespaces.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any

import md_fleet
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness import NotYet, create_namespace, delete_namespace, wait_for
from openmodel_fixtures import GROUP, PLURAL, VERSION, OperatorProcess

pytestmark = pytest.mark.cluster

FLEET = 20
DELETE_TIMEOUT_SECONDS = 120
# Once the namespace is gone, a pass already under way may still fail on it ("not
# found", "being terminated"): a few such lines are fine, a loop is not.
MAX_LOG_LINES_AFTER_DELETION = 5
# The session's operator resyncs every 10 s (OPENMODEL_RESYNC_SECONDS in start_operator).
QUIET_SECONDS = 20.0
QUIET_TIMEOUT_SECONDS = 90.0


def _leftovers(api: client.ApiClient, namespace: str) -> dict[str, list[str]]:
    """Every object of the namespace still stored, by kind (lists across the cluster
    with a field selector, so a gone namespace answers like any other)."""
    selector = f"metadata.namespace={namespace}"
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    custom = client.CustomObjectsApi(api)
    listed: dict[str, list[Any]] = {
        "ModelDeployment": custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, field_selector=selector
        )["items"],
        "Deployment": apps.list_deployment_for_all_namespaces(field_selector=selector).items,
        "ReplicaSet": apps.list_replica_set_for_all_namespaces(field_selector=selector).items,
        "Service": core.list_service_for_all_namespaces(field_selector=selector).items,
        "EndpointSlice": discovery.list_endpoint_slice_for_all_namespaces(
            field_selector=selector
        ).items,
        "Pod": core.list_pod_for_all_namespaces(field_selector=selector).items,
        "Event": core.list_event_for_all_namespaces(field_selector=selector).items,
        "PersistentVolumeClaim": core.list_persistent_volume_claim_for_all_namespaces(
            field_selector=selector
        ).items,
        "ConfigMap": core.list_config_map_for_all_namespaces(field_selector=selector).items,
        "ServiceAccount": core.list_service_account_for_all_namespaces(
            field_selector=selector
        ).items,
    }
    names: dict[str, list[str]] = {}
    for kind, items in listed.items():
        found = [i["metadata"]["name"] if isinstance(i, dict) else i.metadata.name for i in items]
        if found:
            names[kind] = found
    return names


def _log_lines(op: OperatorProcess) -> list[str]:
    return op.log_path.read_text(errors="replace").splitlines()


def _quiet_about(
    op: OperatorProcess, namespace: str, seconds: float
) -> Callable[[], bool | NotYet]:
    """A predicate: true once no new log line has named `namespace` for `seconds`."""
    seen = {"count": -1, "since": time.monotonic()}

    def quiet() -> bool | NotYet:
        count = sum(namespace in line for line in _log_lines(op))
        now = time.monotonic()
        if count != seen["count"]:
            seen["count"], seen["since"] = count, now
        silent = now - seen["since"]
        return silent >= seconds or NotYet(f"{count} lines so far, the last {silent:.1f}s ago")

    return quiet


def _namespace_gone(api: client.ApiClient, namespace: str) -> bool | NotYet:
    try:
        ns = client.CoreV1Api(api).read_namespace(namespace)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    conditions = {c.type: f"{c.status} {c.message}" for c in ns.status.conditions or []}
    return NotYet(f"phase {ns.status.phase}, conditions {conditions}")


def test_deleting_a_namespace_of_twenty_leaves_nothing_behind(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    names = md_fleet.create_fleet(api_client, namespace, FLEET)
    md_fleet.wait_fleet_converged(api_client, namespace, names, 120, operator.log_tail)
    # A canary in a namespace of its own: the operator must go on serving it.
    canary_ns = create_namespace(api_client, "e2e-nsdel-canary")
    try:
        _delete_and_watch(api_client, namespace, canary_ns, operator)
    finally:
        delete_namespace(api_client, canary_ns)


def _delete_and_watch(
    api: client.ApiClient, namespace: str, canary_ns: str, operator: OperatorProcess
) -> None:
    lines_before = len(_log_lines(operator))
    started = time.monotonic()
    delete_namespace(api, namespace)
    wait_for(
        lambda: _namespace_gone(api, namespace),
        DELETE_TIMEOUT_SECONDS,
        lambda: f"namespace {namespace} to be gone; left: {_leftovers(api, namespace)}",
        interval=0.5,
    )
    deletion_seconds = time.monotonic() - started
    lines_at_gone = len(_log_lines(operator))
    assert _leftovers(api, namespace) == {}

    print(f"\n[namespace-deletion] {FLEET} ModelDeployments: gone in {deletion_seconds:.1f} s")

    # "No error loop" is a claim about time: the operator's log must stay quiet about the
    # namespace for two resync intervals (a loop would log each pass), measured from the
    # last line naming it.
    quiet = _quiet_about(operator, namespace, QUIET_SECONDS)
    wait_for(quiet, QUIET_TIMEOUT_SECONDS, lambda: f"the log to go quiet about {namespace}")
    # And it still serves: a new ModelDeployment elsewhere converges.
    md_fleet.create_fleet(api, canary_ns, 1)
    md_fleet.wait_fleet_converged(api, canary_ns, ["md-00"], 60, operator.log_tail)

    lines = _log_lines(operator)
    during = [line for line in lines[lines_before:lines_at_gone] if namespace in line]
    after = [line for line in lines[lines_at_gone:] if namespace in line]
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        metrics = response.read().decode()
    print(
        f"[namespace-deletion] operator log lines naming it: {len(during)} while deleting, "
        f"{len(after)} after"
    )
    for line in during + after:
        print(f"[namespace-deletion]   {line[:200]}")
    assert len(after) <= MAX_LOG_LINES_AFTER_DELETION, "\n".join(after)
    assert namespace not in metrics, [m for m in metrics.splitlines() if namespace in m]
    assert operator.alive(), operator.log_tail()
