"""Bad input put in front of a running operator: a status edited to garbage through the
status subresource, and an annotation with a value the operator does not take. Each gets
a correct status or a clear condition and event; what already runs is not touched."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from harness import NotYet, wait_for
from openmodel_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    condition,
    create_md,
    get_md,
    load_example,
)

pytestmark = pytest.mark.cluster

NAME = "llama70b-awq"
SKIP = "openmodel.dev/skip-fit-check"
# What the schema lets another writer put in the status: well-typed, all wrong.
GARBAGE_STATUS: dict[str, Any] = {
    "observedGeneration": 12345,
    "replicas": 7,  # the scale subresource's path: the server refuses a negative one
    "readyReplicas": 99,
    "labelSelector": "app=nothing",
    "reason": "Garbage",
    "endpoint": "http://nowhere.invalid/v1",
    "gpu": "9000x nvidia-h9000",
    "conditions": [
        {
            "type": "Ready",
            "status": "Unknown",
            "reason": "Garbage",
            "message": "hand-written",
            "lastTransitionTime": "2000-01-01T00:00:00Z",
            "observedGeneration": 12345,
        },
        {
            "type": "Degraded",
            "status": "True",
            "reason": "Garbage",
            "message": "hand-written",
            "lastTransitionTime": "2000-01-01T00:00:00Z",
        },
    ],
}


def serving(api: client.ApiClient, ns: str) -> Any:
    def check() -> dict[str, Any] | NotYet:
        md = get_md(api, ns, NAME)
        st = md.get("status") or {}
        ok = (
            st.get("observedGeneration") == md["metadata"]["generation"]
            and condition(md, "Ready").get("status") == "True"
            and condition(md, "Degraded").get("status") == "False"
            and st.get("readyReplicas") == 1
            and st.get("replicas") == 1
        )
        return md if ok else NotYet(st)

    return check


def deployment_state(api: client.ApiClient, ns: str) -> tuple[int, Any]:
    d = client.AppsV1Api(api).read_namespaced_deployment(NAME, ns)
    return d.metadata.generation, d.spec.template


def test_a_status_edited_to_garbage_is_rebuilt_and_nothing_rolls(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_md(api_client, load_example(f"{NAME}.yaml", namespace))
    good = wait_for(serving(api_client, namespace), 90, "Ready")
    before = deployment_state(api_client, namespace)

    written = client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, NAME, {"status": GARBAGE_STATUS}
    )
    assert written["status"]["reason"] == "Garbage"

    def rebuilt() -> dict[str, Any] | NotYet:
        md = get_md(api_client, namespace, NAME)
        st = md.get("status") or {}
        fields = ("reason", "endpoint", "gpu", "labelSelector", "replicas", "readyReplicas")
        ok = all(st.get(k) == good["status"].get(k) for k in fields) and (
            st.get("observedGeneration") == md["metadata"]["generation"]
            and condition(md, "Ready").get("status") == "True"
            and condition(md, "Degraded").get("reason") == "AsExpected"
        )
        return md if ok else NotYet(st)

    md = wait_for(rebuilt, 60, "the status rebuilt from the world")
    # A changed status is a transition: its time is the operator's, not the garbage's.
    assert condition(md, "Ready")["lastTransitionTime"] != "2000-01-01T00:00:00Z"
    assert deployment_state(api_client, namespace) == before
    assert operator.alive(), operator.log_tail()


def test_a_wrong_annotation_value_is_a_condition_and_an_event_and_changes_nothing(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_md(api_client, load_example(f"{NAME}.yaml", namespace))
    wait_for(serving(api_client, namespace), 90, "Ready")
    before = deployment_state(api_client, namespace)
    custom = client.CustomObjectsApi(api_client)

    def annotate(value: str) -> None:
        patch = {"metadata": {"annotations": {SKIP: value}}}
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, patch)

    annotate("yes")

    def refused() -> dict[str, Any] | NotYet:
        md = get_md(api_client, namespace, NAME)
        degraded = condition(md, "Degraded")
        ok = degraded.get("status") == "True" and degraded.get("reason") == "InvalidAnnotation"
        return md if ok else NotYet(md.get("status"))

    md = wait_for(refused, 60, "Degraded/InvalidAnnotation")
    message = condition(md, "Degraded")["message"]
    assert f"metadata.annotations[{SKIP}]" in message and "'yes'" in message, message
    assert condition(md, "Ready")["status"] == "True"  # what runs still serves
    assert md["status"]["reason"] == "InvalidAnnotation"

    def warned() -> list[Any] | NotYet:
        events = client.CoreV1Api(api_client).list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={NAME}"
        )
        found = [e for e in events.items if e.reason == "InvalidAnnotation"]
        return found or NotYet([(e.reason, e.message) for e in events.items])

    event = wait_for(warned, 30, "a Warning event InvalidAnnotation")[0]
    assert event.type == "Warning" and SKIP in event.message
    assert deployment_state(api_client, namespace) == before

    annotate("false")
    wait_for(serving(api_client, namespace), 60, "Degraded cleared by a valid value")
    assert deployment_state(api_client, namespace) == before
