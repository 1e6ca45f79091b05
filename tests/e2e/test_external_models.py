"""ExternalModels and overflow on the operator's side, with the real API server and an
operator process of its own (e2e-xm-* namespaces; its platform config names a gateway
namespace and ServiceAccount of this test's):

- an ExternalModel's verdict: KeyNotGranted while the gateway's ServiceAccount may not
  get the key Secret (a real SubjectAccessReview), Ready once a Role and RoleBinding
  grant it; NameTaken when an older ExternalModel or ModelDeployment serves the name;
  the key's value in no status and no Event;
- a ModelDeployment's Overflow condition: refused and Degraded in a namespace labelled
  openmodel.dev/data=private, ExternalModelNotFound turning to Allowed when the
  ExternalModel appears (watched: well before the operator's resync could see it);
- the gateway's egress NetworkPolicy following the ExternalModels' declared ranges, and
  gone when none declares any.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness import Cluster, NotYet, create_namespace, delete_namespace, wait_for
from openmodel_fixtures import (
    EXTERNAL_MODEL_NAMESPACE_PREFIX,
    GROUP,
    SMALL_MODEL_SPEC,
    VERSION,
    OperatorProcess,
    condition,
    create_md,
    get_md,
    platform_config,
    start_operator,
)

pytestmark = pytest.mark.cluster

PLURAL = "externalmodels"
GATEWAY_ACCOUNT = "xm-gateway"
POLICY = "openmodel-gateway-external-egress"
KEY_VALUE = "sk-e2e-never-shown-0123456789"
# Long enough that a verdict seen within WATCHED_SECONDS came from a watch event.
RESYNC_SECONDS = 300
WATCHED_SECONDS = 30.0


@pytest.fixture(scope="module")
def gateway_namespace(api_client: client.ApiClient) -> Iterator[str]:
    name = create_namespace(api_client, f"{EXTERNAL_MODEL_NAMESPACE_PREFIX}-gw")
    yield name
    delete_namespace(api_client, name)


@pytest.fixture(scope="module")
def xm_operator(
    cluster: Cluster,
    crd: None,
    external_model_crd: None,
    gateway_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("xm-operator")
    config = platform_config()
    config["gateway"] = {
        **config["gateway"],
        "demandNamespace": gateway_namespace,
        "serviceAccountName": GATEWAY_ACCOUNT,
    }
    config_path = workdir / "xm-platform.yaml"
    config_path.write_text(yaml.safe_dump(config))
    op = start_operator(
        cluster.kubeconfig,
        workdir,
        extra_env={
            "OPENMODEL_NAMESPACES": f"{EXTERNAL_MODEL_NAMESPACE_PREFIX}-*",
            "OPENMODEL_CONFIG": str(config_path),
            "OPENMODEL_RESYNC_SECONDS": str(RESYNC_SECONDS),
        },
        name="operator-xm",
    )
    yield op
    op.stop()


def make_namespace(api: client.ApiClient, private: bool = False) -> str:
    name = create_namespace(api, EXTERNAL_MODEL_NAMESPACE_PREFIX)
    if private:
        client.CoreV1Api(api).patch_namespace(
            name, {"metadata": {"labels": {"openmodel.dev/data": "private"}}}
        )
    return name


@pytest.fixture
def namespaces(api_client: client.ApiClient) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        delete_namespace(api_client, name)


def new_namespace(api: client.ApiClient, made: list[str], private: bool = False) -> str:
    name = make_namespace(api, private)
    made.append(name)
    return name


def external_model(api: client.ApiClient, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExternalModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"baseURL": "https://api.example.test/v1", "upstreamModel": "big-1", **spec},
    }
    custom = client.CustomObjectsApi(api)
    created: dict[str, Any] = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return created


def get_xm(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return found


def delete_xm(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )


def ready_of(obj: dict[str, Any]) -> dict[str, Any]:
    return condition(obj, "Ready")


def wait_verdict(
    api: client.ApiClient, namespace: str, name: str, status: str, reason: str, timeout: float
) -> dict[str, Any]:
    def verdict() -> dict[str, Any] | NotYet:
        obj = get_xm(api, namespace, name)
        ready = ready_of(obj)
        current = (obj.get("status") or {}).get("observedGeneration")
        if (
            ready.get("status") == status
            and ready.get("reason") == reason
            and current == obj["metadata"]["generation"]
            and ready.get("observedGeneration") == current
            and (obj.get("status") or {}).get("reason") == reason
        ):
            return obj
        return NotYet(obj.get("status"))

    return wait_for(verdict, timeout, f"ExternalModel {namespace}/{name} Ready {status} {reason}")


def grant_key(api: client.ApiClient, namespace: str, secret: str, gateway_ns: str) -> None:
    """The Role and RoleBinding docs/api.md tells a team to apply."""
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "openmodel-gateway-reads-key"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "resourceNames": [secret],
                    "verbs": ["get"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "openmodel-gateway-reads-key"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "openmodel-gateway-reads-key",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": GATEWAY_ACCOUNT, "namespace": gateway_ns}
            ],
        },
    )


def events_of(api: client.ApiClient, namespace: str, name: str) -> list[client.CoreV1Event]:
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=ExternalModel"
    )
    return list(events.items)


def test_key_not_granted_until_a_role_binding_lets_the_gateway_read_it(
    api_client: client.ApiClient,
    xm_operator: OperatorProcess,
    gateway_namespace: str,
    namespaces: list[str],
) -> None:
    ns = new_namespace(api_client, namespaces)
    client.CoreV1Api(api_client).create_namespaced_secret(
        ns, {"metadata": {"name": "frontier-key"}, "stringData": {"token": KEY_VALUE}}
    )
    external_model(
        api_client, ns, "frontier", apiKeySecretRef={"name": "frontier-key", "key": "token"}
    )
    refused = wait_verdict(api_client, ns, "frontier", "False", "KeyNotGranted", WATCHED_SECONDS)
    message = ready_of(refused)["message"]
    assert f"{gateway_namespace}/{GATEWAY_ACCOUNT}" in message and "'frontier-key'" in message

    grant_key(api_client, ns, "frontier-key", gateway_namespace)
    # A RoleBinding is no event the operator watches: the next edit (or the recheck)
    # asks again. An annotation is the quickest edit that changes nothing else.
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "frontier", {"metadata": {"annotations": {"try": "2"}}}
    )
    ready = wait_verdict(api_client, ns, "frontier", "True", "Ready", WATCHED_SECONDS)
    # The key itself: in no status, no Event.
    assert KEY_VALUE not in str(ready.get("status"))
    events = events_of(api_client, ns, "frontier")
    reasons = {e.reason for e in events}
    assert {"KeyNotGranted", "Ready"} <= reasons, reasons
    assert not any(KEY_VALUE in (e.message or "") for e in events)


def test_the_older_claim_keeps_a_served_name(
    api_client: client.ApiClient, xm_operator: OperatorProcess, namespaces: list[str]
) -> None:
    first_ns, second_ns = (
        new_namespace(api_client, namespaces),
        new_namespace(api_client, namespaces),
    )
    external_model(api_client, first_ns, "shared", servedModelName="e2e-shared-name")
    wait_verdict(api_client, first_ns, "shared", "True", "Ready", WATCHED_SECONDS)
    time.sleep(1.1)  # creationTimestamp has whole seconds: the next one is younger
    external_model(api_client, second_ns, "late", servedModelName="e2e-shared-name")
    taken = wait_verdict(api_client, second_ns, "late", "False", "NameTaken", WATCHED_SECONDS)
    assert f"ExternalModel {first_ns}/shared" in ready_of(taken)["message"]

    # A ModelDeployment serving the name first wins over a younger ExternalModel.
    create_md(
        api_client,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": "selfhosted", "namespace": second_ns},
            "spec": {**SMALL_MODEL_SPEC, "servedModelName": "e2e-md-name"},
        },
    )
    time.sleep(1.1)  # creationTimestamp has whole seconds: the next one is younger
    external_model(api_client, first_ns, "shadow", servedModelName="e2e-md-name")
    shadowed = wait_verdict(api_client, first_ns, "shadow", "False", "NameTaken", WATCHED_SECONDS)
    assert f"ModelDeployment {second_ns}/selfhosted" in ready_of(shadowed)["message"]

    # The holder goes: the name passes to the next oldest, with no edit of its own.
    delete_xm(api_client, first_ns, "shared")
    wait_verdict(api_client, second_ns, "late", "True", "Ready", WATCHED_SECONDS)


def overflow_md(api: client.ApiClient, namespace: str, name: str, target: str) -> None:
    create_md(
        api,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {**SMALL_MODEL_SPEC, "gateway": {"overflow": {"model": target}}},
        },
    )


def wait_overflow(
    api: client.ApiClient, namespace: str, name: str, status: str, reason: str, timeout: float
) -> dict[str, Any]:
    def seen() -> dict[str, Any] | NotYet:
        md = get_md(api, namespace, name)
        overflow = condition(md, "Overflow")
        if (
            overflow.get("status") == status
            and overflow.get("reason") == reason
            and overflow.get("observedGeneration") == md["metadata"]["generation"]
        ):
            return md
        return NotYet(overflow or md.get("status"))

    return wait_for(seen, timeout, f"ModelDeployment {namespace}/{name} Overflow {reason}")


def test_overflow_is_refused_and_degraded_in_a_private_namespace(
    api_client: client.ApiClient, xm_operator: OperatorProcess, namespaces: list[str]
) -> None:
    ns = new_namespace(api_client, namespaces, private=True)
    external_model(api_client, ns, "frontier-p", servedModelName="e2e-private-target")
    overflow_md(api_client, ns, "kept-in", "e2e-private-target")
    md = wait_overflow(
        api_client, ns, "kept-in", "False", "NotAllowedInPrivateNamespace", WATCHED_SECONDS
    )
    degraded = condition(md, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "OverflowNotAllowed")
    assert "spec.gateway.overflow" in degraded["message"]
    assert "openmodel.dev/data=private" in degraded["message"]
    # kstatus (Flux) reads Stalled; `kubectl get md` the reason.
    assert condition(md, "Stalled")["status"] == "True"
    assert md["status"]["reason"] == "OverflowNotAllowed"


def test_overflow_target_not_found_turns_allowed_when_the_external_model_appears(
    api_client: client.ApiClient, xm_operator: OperatorProcess, namespaces: list[str]
) -> None:
    ns = new_namespace(api_client, namespaces)
    overflow_md(api_client, ns, "spills", "e2e-later-target")
    md = wait_overflow(api_client, ns, "spills", "False", "ExternalModelNotFound", WATCHED_SECONDS)
    assert condition(md, "Degraded").get("reason") != "OverflowNotAllowed"
    other_ns = new_namespace(api_client, namespaces)
    started = time.monotonic()
    external_model(api_client, other_ns, "later", servedModelName="e2e-later-target")
    wait_overflow(api_client, ns, "spills", "True", "Allowed", WATCHED_SECONDS)
    assert time.monotonic() - started < RESYNC_SECONDS  # a watch event, not the resync
    # Removing overflow removes the condition.
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, ns, "modeldeployments", "spills", {"spec": {"gateway": None}}
    )

    def no_condition() -> bool | NotYet:
        md = get_md(api_client, ns, "spills")
        fresh = md["status"].get("observedGeneration") == md["metadata"]["generation"]
        return (fresh and not condition(md, "Overflow")) or NotYet(md["status"])

    wait_for(no_condition, WATCHED_SECONDS, "the Overflow condition gone")


def policy_egress(api: client.ApiClient, namespace: str) -> list[dict[str, Any]] | None:
    try:
        policy = client.NetworkingV1Api(api).read_namespaced_network_policy(POLICY, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    raw = client.ApiClient().sanitize_for_serialization(policy)
    assert raw["metadata"]["labels"]["openmodel.dev/gateway-egress"] == "external-models"
    assert raw["spec"]["policyTypes"] == ["Egress"]
    egress: list[dict[str, Any]] = raw["spec"].get("egress") or []
    return egress


def test_the_gateways_egress_policy_follows_the_declared_ranges(
    api_client: client.ApiClient,
    xm_operator: OperatorProcess,
    gateway_namespace: str,
    namespaces: list[str],
) -> None:
    ns = new_namespace(api_client, namespaces)

    def egress_is(want: list[dict[str, Any]] | None) -> bool | NotYet:
        got = policy_egress(api_client, gateway_namespace)
        return got == want or NotYet(got)

    external_model(
        api_client, ns, "ranged", servedModelName="e2e-ranged",
        egress={"cidrs": ["1.1.1.0/24"]},
    )  # fmt: skip
    https = {
        "ports": [{"port": 443, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "1.1.1.0/24"}}],
    }
    wait_for(lambda: egress_is([https]), WATCHED_SECONDS, "the policy for one ExternalModel")
    external_model(
        api_client, ns, "local", servedModelName="e2e-local", baseURL="http://9.9.9.9:8080/v1",
        egress={"cidrs": ["9.9.9.9/32"]},
    )  # fmt: skip
    local = {
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "9.9.9.9/32"}}],
    }
    wait_for(lambda: egress_is([https, local]), WATCHED_SECONDS, "the policy for both")
    # A team may not open the inside: a private range is refused and opens nothing.
    external_model(
        api_client, ns, "inside", servedModelName="e2e-inside", baseURL="http://10.9.0.5:8000/v1",
        egress={"cidrs": ["10.9.0.0/16"]},
    )  # fmt: skip
    refused = wait_verdict(api_client, ns, "inside", "False", "EgressNotAllowed", WATCHED_SECONDS)
    assert "10.9.0.0/16" in ready_of(refused)["message"]
    assert policy_egress(api_client, gateway_namespace) == [https, local]
    delete_xm(api_client, ns, "inside")
    delete_xm(api_client, ns, "ranged")
    wait_for(lambda: egress_is([local]), WATCHED_SECONDS, "the policy without the deleted one")
    delete_xm(api_client, ns, "local")
    wait_for(lambda: egress_is(None), WATCHED_SECONDS, "the policy gone with the last range")
