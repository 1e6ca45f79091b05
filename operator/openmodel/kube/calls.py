"""Thin, typed access to the Kubernetes API: server-side apply, get, list.

The generated client has no server-side apply for arbitrary objects, so `apply`
issues the PATCH itself. Everything here is I/O; the decisions live elsewhere.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException

from openmodel.api import API_VERSION, KIND, PLURAL
from openmodel.external_model import KIND as EXTERNAL_MODEL_KIND
from openmodel.external_model import PLURAL as EXTERNAL_MODEL_PLURAL

log = logging.getLogger(__name__)

FIELD_MANAGER = "openmodel"
AUTOSCALER_FIELD_MANAGER = "openmodel-autoscaler"
# The adapter loop writes status.adapters, status.adaptersReady and AdaptersReady only.
ADAPTERS_FIELD_MANAGER = "openmodel-adapters"

_COLLECTIONS: Mapping[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{ns}/deployments",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("v1", "PersistentVolumeClaim"): "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{ns}/jobs",
    ("v1", "Event"): "/api/v1/namespaces/{ns}/events",
    ("networking.k8s.io/v1", "NetworkPolicy"): (
        "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"
    ),
    # A replica that spans nodes (reconcile/render.py), when the LWS CRD is served.
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): (
        "/apis/leaderworkerset.x-k8s.io/v1/namespaces/{ns}/leaderworkersets"
    ),
    # Gateway API Inference Extension children (inference_extension/).
    ("inference.networking.k8s.io/v1", "InferencePool"): (
        "/apis/inference.networking.k8s.io/v1/namespaces/{ns}/inferencepools"
    ),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): (
        "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes"
    ),
    (API_VERSION, KIND): f"/apis/{API_VERSION}/namespaces/{{ns}}/{PLURAL}",
    (API_VERSION, EXTERNAL_MODEL_KIND): (
        f"/apis/{API_VERSION}/namespaces/{{ns}}/{EXTERNAL_MODEL_PLURAL}"
    ),
}
# Cluster-scoped objects the operator reads by name.
_CLUSTER_COLLECTIONS: Mapping[str, str] = {"Namespace": "/api/v1/namespaces"}


# Raises when this process may not write now (with leader election: it does not hold
# the Lease); else returns how many seconds a write sent now may take at most.
WriteGuard = Callable[[], float]
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class GuardedApiClient(client.ApiClient):
    """An ApiClient that asks its `write_guard` just before each request that is not a
    read leaves, after any wait for the rate limit: so no writer can forget to.

    A write is also given up when the guard's time runs out (the Lease expires), so none
    is still on its way once another replica may write; a write that failed that way is
    reported as the guard's refusal, not as an API failure."""

    def __init__(self, configuration: client.Configuration, write_guard: WriteGuard) -> None:
        super().__init__(configuration)
        self.write_guard = write_guard

    def call_api(
        self,
        method: str,
        url: str,
        header_params: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> rest.RESTResponse:
        if method.upper() in READ_METHODS:
            return super().call_api(method, url, header_params, body, post_params, _request_timeout)
        allowed = self.write_guard()
        try:
            return super().call_api(
                method, url, header_params, body, post_params, _cap(_request_timeout, allowed)
            )
        except urllib3.exceptions.HTTPError:
            self.write_guard()  # time ran out meanwhile: its refusal says why
            raise


def _cap(timeout: Any, seconds: float) -> Any:
    """The request timeout (None, seconds, or a (connect, read) pair) cut to `seconds`."""
    if seconds == float("inf"):
        return timeout
    if isinstance(timeout, tuple):
        return tuple(min(t, seconds) for t in timeout)
    return seconds if timeout is None else min(float(timeout), seconds)


def make_api_client(
    kubeconfig: str | None = None,
    pool_size: int = 0,
    write_guard: WriteGuard | None = None,
    retries: bool = True,
) -> client.ApiClient:
    """An ApiClient from a kubeconfig file, in-cluster credentials, or the default.

    `pool_size`: connections kept open to the API server, at least one per thread that
    makes requests at once. The client's default (5 per CPU: 10 here) is below the
    operator's 16 workers, and each connection over it is closed after its request and
    a new TLS handshake made for the next one, by the operator and the API server.
    `write_guard`: asked before every write (`GuardedApiClient`). `retries` False: a
    request that times out is not sent again by the HTTP layer (which would otherwise
    repeat a GET or PUT up to three times, each with the whole timeout)."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    if pool_size > configuration.connection_pool_maxsize:
        configuration.connection_pool_maxsize = pool_size
    if not retries:
        configuration.retries = False
    if write_guard is not None:
        return GuardedApiClient(configuration, write_guard)
    return client.ApiClient(configuration)


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    return _COLLECTIONS[(api_version, kind)].format(ns=namespace)


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(api_version, kind, namespace)}/{name}"


@dataclass
class RateLimit:
    """A token bucket shared by every thread of the process: `qps` sustained, `burst` at
    once (client-go's flowcontrol, for the requests this module makes; kopf's watches and
    its own few patches go through its own client)."""

    qps: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tokens: float | None = None  # None: full (first use)
    _stamp: float = 0.0

    def acquire(self) -> float:
        """Take one token, waiting for it; returns the seconds waited."""
        with self._lock:
            now = self.clock()
            tokens = float(self.burst) if self._tokens is None else self._tokens
            tokens = min(float(self.burst), tokens + (now - self._stamp) * self.qps) - 1.0
            self._tokens, self._stamp = tokens, now
            wait = 0.0 if tokens >= 0 else -tokens / self.qps
        if wait > 0:
            self.sleep(wait)
        return wait


# None: unlimited (tests, the CLI); the operator sets it at startup (`limit_rate`).
_rate_limit: RateLimit | None = None
# 429 Too Many Requests: retried after the server's Retry-After, this many times at most.
MAX_THROTTLED_RETRIES = 5
MAX_RETRY_AFTER_SECONDS = 30.0


def limit_rate(qps: float, burst: int) -> None:
    global _rate_limit
    _rate_limit = RateLimit(qps, burst)


def retry_after_seconds(headers: Mapping[str, str] | None, attempt: int) -> float:
    """The wait a 429 asks for (Retry-After in seconds), else 1 s doubling per attempt;
    never more than MAX_RETRY_AFTER_SECONDS."""
    raw = (headers or {}).get("Retry-After") or (headers or {}).get("retry-after")
    try:
        wait = float(raw) if raw is not None else 2.0**attempt
    except ValueError:
        wait = 2.0**attempt
    return min(max(wait, 0.0), MAX_RETRY_AFTER_SECONDS)


def call(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: Mapping[str, Any] | Sequence[Any] | None = None,
    content_type: str = "application/json",
    query: list[tuple[str, str]] | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """One request, rate-limited; a 429 is retried after its Retry-After. Raises
    ApiException (with status and body) on any other non-2xx answer."""
    for attempt in range(MAX_THROTTLED_RETRIES + 1):
        if _rate_limit is not None:
            _rate_limit.acquire()
        try:
            return call_once(
                api, method, path, body=body, content_type=content_type, query=query,
                timeout=timeout,
            )  # fmt: skip
        except ApiException as e:
            if e.status != 429 or attempt == MAX_THROTTLED_RETRIES:
                raise
            wait = retry_after_seconds(e.headers, attempt)
            log.info("API server throttled %s %s: retrying in %.1f s", method, path, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def call_once(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: Mapping[str, Any] | Sequence[Any] | None = None,
    content_type: str = "application/json",
    query: list[tuple[str, str]] | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """One request, not rate-limited and never retried (the Lease's own requests: a
    renewal must not queue behind a burst of writes); raises ApiException (with status
    and body) on a non-2xx answer."""
    method, url, headers, serialized, _ = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(
        method, url, header_params=headers, body=serialized, _request_timeout=timeout
    )
    data = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(
            http_resp=response, body=data.decode("utf-8", "replace") if data else None, data=None
        )
    return json.loads(data) if data else {}


def apply(
    api: client.ApiClient,
    obj: Mapping[str, Any],
    field_manager: str = FIELD_MANAGER,
    subresource: str | None = None,
) -> dict[str, Any]:
    """Server-side apply `obj` as `field_manager`, taking over conflicting fields.

    Forcing is right for an operator: it is the declared owner of what it renders,
    and a hand edit of those fields is exactly what must be put back.
    """
    meta = obj["metadata"]
    path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
    if subresource:
        path = f"{path}/{subresource}"
    return call(
        api,
        "PATCH",
        path,
        body=obj,
        # JSON is YAML: the client serializes the mapping as JSON for +yaml types.
        content_type="application/apply-patch+yaml",
        query=[("fieldManager", field_manager), ("force", "true")],
    )


def create(
    api: client.ApiClient, obj: Mapping[str, Any], field_manager: str | None = None
) -> dict[str, Any]:
    """POST `obj`: 409 AlreadyExists when an object of that name exists (nothing is
    written then). A create by `field_manager` records its fields as an Update of that
    manager, which a later apply by the same name would never remove: see
    `upgrade_to_apply`."""
    meta = obj["metadata"]
    query = [("fieldManager", field_manager)] if field_manager else []
    return call(
        api,
        "POST",
        collection_path(obj["apiVersion"], obj["kind"], meta["namespace"]),
        body=obj,
        query=query,
    )


def namespace_terminating(e: ApiException) -> bool:
    """A create refused because its namespace is being deleted (403, cause
    NamespaceTerminating): no permission is missing, and nothing is to be done there."""
    if e.status != 403:
        return False
    causes = _status_details(e).get("causes") or []
    return any(c.get("reason") == "NamespaceTerminating" for c in causes)


def namespace_not_found(e: ApiException) -> bool:
    """A write refused because its namespace does not exist (any more): 404 whose
    details name a namespace (`namespaces "x" not found`), not the object written."""
    if e.status != 404:
        return False
    details = _status_details(e)
    return details.get("kind") == "namespaces" and details.get("group", "") == ""


def _status_details(e: ApiException) -> Mapping[str, Any]:
    """The `details` of the Status an API error carries; {} when its body is no Status."""
    try:
        details = json.loads(e.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return {}
    return details if isinstance(details, Mapping) else {}


def upgrade_to_apply(
    api: client.ApiClient, obj: Mapping[str, Any], index: int, field_manager: str = FIELD_MANAGER
) -> dict[str, Any]:
    """Turn managedFields entry `index` (an Update by `field_manager`, as `create` left it)
    into an Apply entry of the same fields, so that the manager's next apply removes what
    it no longer sets. A JSON patch that changes nothing else of the object and tests
    first that the entry is there (422 when it is not: the object changed)."""
    meta = obj["metadata"]
    entry = f"/metadata/managedFields/{index}"
    return call(
        api,
        "PATCH",
        object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]),
        body=[
            {"op": "test", "path": f"{entry}/manager", "value": field_manager},
            {"op": "test", "path": f"{entry}/operation", "value": "Update"},
            {"op": "replace", "path": f"{entry}/operation", "value": "Apply"},
        ],
        content_type="application/json-patch+json",
    )


def get(
    api: client.ApiClient, api_version: str, kind: str, namespace: str, name: str
) -> dict[str, Any] | None:
    try:
        return call(api, "GET", object_path(api_version, kind, namespace, name))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def namespace_labels(api: client.ApiClient, name: str) -> dict[str, str]:
    """A namespace's labels ({} when it is gone)."""
    try:
        found = call(api, "GET", f"{_CLUSTER_COLLECTIONS['Namespace']}/{name}")
    except ApiException as e:
        if e.status == 404:
            return {}
        raise
    return dict((found.get("metadata") or {}).get("labels") or {})


ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def service_account_may(
    api: client.ApiClient,
    account: tuple[str, str],
    verb: str,
    resource: str,
    namespace: str,
    name: str,
) -> bool:
    """Whether ServiceAccount `account` (namespace, name) may `verb` the `resource` object
    `namespace/name`: one SubjectAccessReview, as the API server would decide for that
    account's requests (its user and its groups)."""
    sa_namespace, sa_name = account
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{sa_namespace}:{sa_name}",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{sa_namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "resource": resource,
                "name": name,
            },
        },
    }
    answer = call(api, "POST", ACCESS_REVIEWS, body=review)
    return bool((answer.get("status") or {}).get("allowed"))


def delete(api: client.ApiClient, api_version: str, kind: str, namespace: str, name: str) -> None:
    """DELETE one object; gone already is fine."""
    try:
        call(api, "DELETE", object_path(api_version, kind, namespace, name))
    except ApiException as e:
        if e.status != 404:
            raise


def list_objects(
    api: client.ApiClient,
    api_version: str,
    kind: str,
    namespace: str,
    label_selector: str | None = None,
) -> list[dict[str, Any]]:
    query = [("labelSelector", label_selector)] if label_selector else []
    result = call(api, "GET", collection_path(api_version, kind, namespace), query=query)
    items: list[dict[str, Any]] = result.get("items", [])
    return items


def log_tail(
    api: client.ApiClient, namespace: str, pod: str, container: str, lines: int
) -> str | None:
    """The last `lines` lines of a container's log (None: the pod or its log is gone)."""
    if _rate_limit is not None:
        _rate_limit.acquire()
    path = f"{collection_path('v1', 'Pod', namespace)}/{pod}/log"
    method, url, headers, _, _ = api.param_serialize(
        "GET",
        path,
        query_params=[("container", container), ("tailLines", str(lines))],
        # The log is plain text, but the API server negotiates the subresource as an API
        # object: `Accept: text/plain` alone is refused (406). kubectl's header.
        header_params={"Accept": "application/json, */*"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, _request_timeout=10.0)
    data = response.read()
    if response.status in (400, 404):  # not started yet, or gone
        return None
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(
            http_resp=response, body=data.decode("utf-8", "replace") if data else None, data=None
        )
    return data.decode("utf-8", "replace") if data else ""


def list_all_model_deployments(api: client.ApiClient) -> list[dict[str, Any]]:
    result = call(api, "GET", f"/apis/{API_VERSION}/{PLURAL}")
    items: list[dict[str, Any]] = result.get("items", [])
    for item in items:
        # List responses omit each item's apiVersion/kind.
        item.setdefault("apiVersion", API_VERSION)
        item.setdefault("kind", KIND)
    return items


_CLUSTER_WIDE = {
    "deployments": "/apis/apps/v1/deployments",
    "pods": "/api/v1/pods",
    # 404 when the LeaderWorkerSet CRD is not served.
    "leaderworkersets": "/apis/leaderworkerset.x-k8s.io/v1/leaderworkersets",
}


def scale(
    api: client.ApiClient,
    api_version: str,
    kind: str,
    namespace: str,
    name: str,
    replicas: int,
    field_manager: str,
) -> dict[str, Any]:
    """Set `replicas` through the object's scale subresource (what `kubectl scale` and
    the HPA write; a LeaderWorkerSet's counts groups). Returns the Scale object; its
    resourceVersion is the scaled object's."""
    return call(
        api,
        "PATCH",
        f"{object_path(api_version, kind, namespace, name)}/scale",
        body={"spec": {"replicas": replicas}},
        content_type="application/merge-patch+json",
        query=[("fieldManager", field_manager)],
    )


def list_cluster_wide(api: client.ApiClient, resource: str, label_key: str) -> list[dict[str, Any]]:
    """Every `resource` in the cluster carrying the label `label_key` (one request)."""
    result = call(api, "GET", _CLUSTER_WIDE[resource], query=[("labelSelector", label_key)])
    items: list[dict[str, Any]] = result.get("items", [])
    return items
