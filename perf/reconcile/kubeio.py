"""bench_reconcile's API access: raw requests as its own client (user agent
openmodel-bench), collections followed by watches, apiserver_request_total, and waits
with a deadline."""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from harness.rawapi import call, watch_events

WAIT_DEADLINE = 600.0  # every wait stops by itself after this (scaled with the count)
POLL_INTERVAL = 0.5
COLLECTIONS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ModelDeployment": "/apis/openmodel.dev/v1alpha1/namespaces/{ns}/modeldeployments",
}
PARTIAL_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
MetricKey = tuple[str, str, str, str]  # group, resource, subresource, verb


class Timeout(RuntimeError):
    pass


def create(api: client.ApiClient, obj: Mapping[str, Any]) -> None:
    path = COLLECTIONS[obj["kind"]].format(ns=obj["metadata"]["namespace"])
    call(api, "POST", path, obj)


def get_json(api: client.ApiClient, path: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(call(api, "GET", path))
    return answer


def list_items(
    api: client.ApiClient, kind: str, ns: str, metadata_only: bool = False
) -> list[dict[str, Any]]:
    data = call(
        api,
        "GET",
        COLLECTIONS[kind].format(ns=ns),
        accept=PARTIAL_LIST if metadata_only else "application/json",
        # From the API server's watch cache, not etcd: the polls of 5,000 objects stay
        # cheap for the API server the operator shares.
        query=[("resourceVersion", "0")],
    )
    items: list[dict[str, Any]] = json.loads(data).get("items") or []
    return items


def apply_body(
    api: client.ApiClient, obj: Mapping[str, Any], subresource: str | None = None
) -> dict[str, Any]:
    """Server-side apply as the operator does it (kube/calls.py apply): field manager
    openmodel, forced."""
    meta = obj["metadata"]
    path = f"{COLLECTIONS[obj['kind']].format(ns=meta['namespace'])}/{meta['name']}"
    if subresource:
        path = f"{path}/{subresource}"
    data = call(
        api,
        "PATCH",
        path,
        obj,
        content_type="application/apply-patch+yaml",
        query=[("fieldManager", "openmodel"), ("force", "true")],
    )
    result: dict[str, Any] = json.loads(data)
    return result


class CollectionWatch:
    """One kind in one namespace as a watch delivers it: name -> summary(object), kept
    by a thread from a list (the watch cache) and a watch from its resourceVersion (a
    410 relists). Measuring by watch costs the API server one event per change, where a
    poll re-serializes every object each time (at 1,000 objects, three lists every 0.5 s
    took as much kube-apiserver CPU as a tenth of the run)."""

    def __init__(
        self,
        api: client.ApiClient,
        kind: str,
        ns: str,
        summary: Callable[[dict[str, Any]], Any],
    ) -> None:
        self.api, self.path, self.summary = api, COLLECTIONS[kind].format(ns=ns), summary
        self.kind = kind
        self.items: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"watch-{kind}", daemon=True)

    def __enter__(self) -> CollectionWatch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()

    def snapshot(self) -> dict[str, Any]:
        if self.error is not None:
            raise RuntimeError(f"the {self.kind} watch failed: {self.error}")
        with self.lock:
            return dict(self.items)

    def _list(self) -> str:
        data = json.loads(call(self.api, "GET", self.path, query=[("resourceVersion", "0")]))
        with self.lock:
            self.items = {i["metadata"]["name"]: self.summary(i) for i in data.get("items") or []}
        return str(data["metadata"]["resourceVersion"])

    def _run(self) -> None:
        try:
            rv = self._list()
            while not self.stopping.is_set():
                rv = self._watch(rv) or self._list()
        except BaseException as e:  # reported by snapshot()
            self.error = e

    def _watch(self, rv: str) -> str | None:
        """Follow the watch from `rv` until the server ends it; None: relist (410)."""
        query = [("resourceVersion", rv), ("allowWatchBookmarks", "true")]
        for event in watch_events(self.api, self.path, query, self.stopping):
            obj = event["object"]
            if event["type"] == "ERROR":
                if obj.get("code") == 410:
                    return None
                raise RuntimeError(f"watch error: {obj}")
            rv = obj["metadata"]["resourceVersion"]
            if event["type"] == "BOOKMARK":
                continue
            name = obj["metadata"]["name"]
            with self.lock:
                if event["type"] == "DELETED":
                    self.items.pop(name, None)
                else:
                    self.items[name] = self.summary(obj)
        return rv


def md_summary(md: dict[str, Any]) -> tuple[Any, Any, Any]:
    status = md.get("status") or {}
    return (
        md["metadata"].get("generation"),
        status.get("observedGeneration"),
        status.get("reason"),
    )


def ready_replicas(deployment: dict[str, Any]) -> int:
    return int((deployment.get("status") or {}).get("readyReplicas") or 0)


def md_path(ns: str, name: str) -> str:
    return f"{COLLECTIONS['ModelDeployment'].format(ns=ns)}/{name}"


def md_ready(api: client.ApiClient, ns: str, name: str) -> bool:
    md = get_json(api, md_path(ns, name))
    st = md.get("status") or {}
    return bool(
        st.get("reason") == "Ready" and st.get("observedGeneration") == md["metadata"]["generation"]
    )


def md_caught_up(api: client.ApiClient, ns: str, name: str) -> bool:
    md = get_json(api, md_path(ns, name))
    observed = (md.get("status") or {}).get("observedGeneration")
    return bool(observed == md["metadata"]["generation"])


def create_namespace(api: client.ApiClient, name: str) -> None:
    call(
        api,
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )


def namespace_exists(api: client.ApiClient, name: str) -> bool:
    try:
        call(api, "GET", f"/api/v1/namespaces/{name}")
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


def delete_namespace(api: client.ApiClient, name: str, deadline: float) -> float:
    """Delete a namespace and wait until it is gone; the seconds waited."""
    call(api, "DELETE", f"/api/v1/namespaces/{name}")
    return wait_until(
        f"namespace {name} to be deleted",
        lambda: not namespace_exists(api, name),
        deadline=deadline,
        interval=1.0,
    )


def metrics_text(api: client.ApiClient) -> str:
    return call(api, "GET", "/metrics", accept="text/plain").decode()


def request_totals(text: str) -> dict[MetricKey, float]:
    """apiserver_request_total summed over code/version/scope/component/dry_run."""
    wanted = "\n".join(ln for ln in text.splitlines() if ln.startswith("apiserver_request_total{"))
    totals: dict[MetricKey, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(wanted + "\n"):
        for s in family.samples:
            lab = s.labels
            key = (
                lab.get("group", ""),
                lab.get("resource", ""),
                lab.get("subresource", ""),
                lab.get("verb", ""),
            )
            totals[key] += s.value
    return totals


def wait_until(
    what: str,
    check: Callable[[], bool],
    deadline: float = WAIT_DEADLINE,
    interval: float = POLL_INTERVAL,
) -> float:
    """Poll `check` until true; returns seconds waited; raises Timeout past the deadline."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > deadline:
            raise Timeout(f"gave up after {deadline:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started
