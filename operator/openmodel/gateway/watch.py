"""Keep the route table in step with the cluster: a list, then a watch, per kind.

One thread per kind (the kubernetes client is synchronous): ModelDeployments, the Pods
the operator labels, ExternalModels, and the namespaces labelled `openmodel.dev/data:
private` (whose callers and ModelDeployments never send data out). Each lists, hands
the whole list to the event loop, then watches from that resourceVersion; on an expired
version (410) or any error it lists again (after a short back-off, so an unreachable API
server is not hammered). Every change is applied on the event loop's thread, so the
table is never shared between threads, and it wakes the held requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from openmodel.api import GROUP, PLURAL, SERVING_POD_SELECTOR, VERSION
from openmodel.external_model import PLURAL as EXTERNAL_PLURAL
from openmodel.gateway.external.privacy import PRIVATE_SELECTOR, PrivateNamespaces
from openmodel.gateway.routes import RouteTable
from openmodel.namespaces import matches

log = logging.getLogger(__name__)

_WATCH_SECONDS = 240
_BACKOFF_MAX_S = 30.0
# The kinds the routes need before the gateway is ready; the others only open the
# external paths once listed (until then nothing goes out).
_ROUTING_KINDS = frozenset({"ModelDeployment", "Pod"})
_KINDS = ("ModelDeployment", "Pod", "ExternalModel", "Namespace")


@dataclass
class ClusterRoutes:
    api: client.ApiClient
    table: RouteTable
    loop: asyncio.AbstractEventLoop
    on_change: Callable[[], None]
    namespaces: Sequence[str] = ()
    synced: set[str] = field(default_factory=set)
    on_synced: Callable[[], None] = lambda: None
    privacy: PrivateNamespaces = field(default_factory=PrivateNamespaces)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _conflicts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def start(self) -> None:
        for kind in _KINDS:
            t = threading.Thread(target=self._run, args=(kind,), name=f"watch-{kind}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    # --- threads ---

    def _list_fn(self, kind: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        if kind in ("ModelDeployment", "ExternalModel"):
            custom = client.CustomObjectsApi(self.api)
            return custom.list_cluster_custom_object, {
                "group": GROUP, "version": VERSION,
                "plural": PLURAL if kind == "ModelDeployment" else EXTERNAL_PLURAL,
            }  # fmt: skip
        core = client.CoreV1Api(self.api)
        if kind == "Namespace":
            return core.list_namespace, {"label_selector": PRIVATE_SELECTOR}
        # Serving pods only: a group's workers never receive requests.
        return core.list_pod_for_all_namespaces, {"label_selector": SERVING_POD_SELECTOR}

    def _plain(self, obj: Any) -> dict[str, Any]:
        if isinstance(obj, dict):
            return obj
        plain: dict[str, Any] = self.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return plain

    def _run(self, kind: str) -> None:
        backoff = 0.5
        fn, kwargs = self._list_fn(kind)
        while not self._stop.is_set():
            try:
                listed = self._plain(fn(**kwargs))
                items = [i for i in listed.get("items") or [] if self._served(kind, i)]
                version = (listed.get("metadata") or {}).get("resourceVersion")
                self._deliver(self._replace, kind, items)
                backoff = 0.5
                w = watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(  # type: ignore[no-untyped-call]
                    fn, resource_version=version, timeout_seconds=_WATCH_SECONDS,
                    allow_watch_bookmarks=True, **kwargs,
                ):  # fmt: skip
                    if self._stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
                        return
                    kind_of_event = event.get("type")
                    if kind_of_event in ("BOOKMARK", "ERROR"):
                        if kind_of_event == "ERROR":
                            break  # e.g. 410 Gone: list again
                        continue
                    obj = self._plain(event["object"])
                    if self._served(kind, obj):
                        self._deliver(self._apply, kind, kind_of_event, obj)
                # The watch ended (server timeout): list again, which also repairs any
                # event missed in between.
            except ApiException as e:
                log.warning("gateway: %s list/watch failed: %s %s", kind, e.status, e.reason)
                self._stop.wait(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)
            except Exception as e:  # an unreachable API server, a dropped connection
                log.warning("gateway: %s list/watch failed: %s", kind, e)
                self._stop.wait(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)

    def _served(self, kind: str, obj: Mapping[str, Any]) -> bool:
        if kind == "Namespace":
            return True  # a caller of any namespace may be private
        ns = (obj.get("metadata") or {}).get("namespace", "")
        return matches(ns, list(self.namespaces))

    def _deliver(self, fn: Callable[..., None], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    # --- on the event loop ---

    def _replace(self, kind: str, items: list[dict[str, Any]]) -> None:
        if kind == "ModelDeployment":
            self.table.replace_model_deployments(items)
        elif kind == "ExternalModel":
            self.table.replace_external_models(items)
        elif kind == "Namespace":
            self.privacy.replace(items)
        else:
            self.table.replace_pods(items)
        self.synced.add(kind)
        if kind in _ROUTING_KINDS and self.synced >= _ROUTING_KINDS:
            self.on_synced()
        self._changed()

    def _changed(self) -> None:
        if self.table.conflicts != self._conflicts:
            self._conflicts = dict(self.table.conflicts)
            for name, owners in self._conflicts.items():
                log.warning(
                    "gateway: model name %r is claimed by %s; routed to the oldest the "
                    "caller may use (%s when it may use all)",
                    name, ", ".join("/".join(o) for o in owners), "/".join(owners[0]),
                )  # fmt: skip
        self.on_change()

    def _apply(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if kind == "ModelDeployment":
            if event == "DELETED":
                self.table.delete_model_deployment(meta.get("namespace", ""), meta.get("name", ""))
            else:
                self.table.put_model_deployment(obj)
        elif kind == "ExternalModel":
            if event == "DELETED":
                self.table.delete_external_model(meta.get("namespace", ""), meta.get("name", ""))
            else:
                self.table.put_external_model(obj)
        elif kind == "Namespace":
            if event == "DELETED":
                self.privacy.delete(obj)
            else:
                self.privacy.put(obj)
        elif event == "DELETED":
            self.table.delete_pod(obj)
        else:
            self.table.put_pod(obj)
        self._changed()
