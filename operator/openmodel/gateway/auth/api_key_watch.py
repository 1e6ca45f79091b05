"""Keep the API-key index in step with the cluster's APIKey objects: list, then watch, in a
thread (the kubernetes client is synchronous); every change is applied on the event
loop's thread. An expired watch or an error lists again after a short back-off. The
gateway reads APIKey objects only (list/watch on that one resource), never Secrets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from openmodel.api import GROUP
from openmodel.gateway.auth.api_keys import API_KEY_PLURAL, API_KEY_VERSION, ApiKeyIndex

log = logging.getLogger(__name__)

_WATCH_SECONDS = 240
_BACKOFF_MAX_S = 30.0


class ApiKeyWatch:
    def __init__(
        self, api: client.ApiClient, index: ApiKeyIndex, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._api = api
        self._index = index
        self._loop = loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch-APIKey", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _plain(self, obj: Any) -> dict[str, Any]:
        if isinstance(obj, dict):
            return obj
        plain: dict[str, Any] = self._api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return plain

    def _run(self) -> None:
        custom = client.CustomObjectsApi(self._api)
        kwargs: dict[str, Any] = {
            "group": GROUP, "version": API_KEY_VERSION, "plural": API_KEY_PLURAL,
        }  # fmt: skip
        backoff = 0.5
        while not self._stop.is_set():
            try:
                listed = self._plain(custom.list_cluster_custom_object(**kwargs))
                version = (listed.get("metadata") or {}).get("resourceVersion")
                self._loop.call_soon_threadsafe(self._index.replace, listed.get("items") or [])
                backoff = 0.5
                w = watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(  # type: ignore[no-untyped-call]
                    custom.list_cluster_custom_object, resource_version=version,
                    timeout_seconds=_WATCH_SECONDS, allow_watch_bookmarks=True, **kwargs,
                ):  # fmt: skip
                    if self._stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
                        return
                    kind = event.get("type")
                    if kind == "ERROR":
                        break  # e.g. 410 Gone: list again
                    if kind == "BOOKMARK":
                        continue
                    obj = self._plain(event["object"])
                    if kind == "DELETED":
                        meta = obj.get("metadata") or {}
                        self._loop.call_soon_threadsafe(
                            self._index.delete, meta.get("namespace", ""), meta.get("name", "")
                        )
                    else:
                        self._loop.call_soon_threadsafe(self._index.put, obj)
            except ApiException as e:
                log.warning("gateway: APIKey list/watch failed: %s %s", e.status, e.reason)
                self._stop.wait(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)
            except Exception as e:  # an unreachable API server, a dropped connection
                log.warning("gateway: APIKey list/watch failed: %s", type(e).__name__)
                self._stop.wait(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)
