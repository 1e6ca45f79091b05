"""Kubernetes Events about a ModelDeployment, written directly (no kopf context needed).

The same Event (object, type, reason, message) posted again within
`REPEAT_WINDOW_SECONDS` is one Event whose `count` and `lastTimestamp` grow (a PATCH),
as client-go's event correlator does, not a new object each time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.clock import utc_now
from openmodel.kube import calls as kube

log = logging.getLogger(__name__)
COMPONENT = "openmodel"
REPEAT_WINDOW_SECONDS = 600.0
REMEMBERED_EVENTS = 4096

EventKey = tuple[str, str, str, str, str]  # namespace, object uid, type, reason, message


@dataclass
class _Posted:
    name: str
    count: int
    first_seen: float


@dataclass
class EventMemory:
    """The Events posted lately, to count a repeat instead of posting it again."""

    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _posted: OrderedDict[EventKey, _Posted] = field(default_factory=OrderedDict)

    def repeat_of(self, key: EventKey) -> _Posted | None:
        with self._lock:
            seen = self._posted.get(key)
            if seen is None or self.clock() - seen.first_seen > REPEAT_WINDOW_SECONDS:
                return None
            seen.count += 1
            self._posted.move_to_end(key)
            return seen

    def remember(self, key: EventKey, name: str) -> None:
        with self._lock:
            self._posted[key] = _Posted(name=name, count=1, first_seen=self.clock())
            self._posted.move_to_end(key)
            while len(self._posted) > REMEMBERED_EVENTS:
                self._posted.popitem(last=False)

    def __len__(self) -> int:
        return len(self._posted)


_memory = EventMemory()


def post_event(
    api: client.ApiClient,
    md_body: Mapping[str, Any],
    reason: str,
    message: str,
    event_type: str = "Normal",
    memory: EventMemory | None = None,
) -> None:
    """Record an Event on the ModelDeployment (or count a repeat of a recent one); a
    failure to post is logged, not raised."""
    memory = _memory if memory is None else memory
    meta = md_body["metadata"]
    now = utc_now()
    message = message[:1024]
    key: EventKey = (meta["namespace"], str(meta.get("uid")), event_type, reason, message)
    repeat = memory.repeat_of(key)
    if repeat is not None:
        path = kube.object_path("v1", "Event", meta["namespace"], repeat.name)
        try:
            kube.call(
                api,
                "PATCH",
                path,
                body={"count": repeat.count, "lastTimestamp": now},
                content_type="application/merge-patch+json",
            )
            return
        except ApiException as e:
            if e.status != 404:  # expired (the API server keeps Events an hour): post anew
                log.warning("could not count event %s again: %s", reason, e.reason)
                return
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": md_body.get("apiVersion"),
            "kind": md_body.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message,
        "type": event_type,
        "source": {"component": COMPONENT},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        created = kube.create(api, event)
        name = (created.get("metadata") or {}).get("name")
        if name:
            memory.remember(key, str(name))
    except ApiException as e:
        if kube.namespace_terminating(e) or kube.namespace_not_found(e):
            return  # nobody is left to read it
        # Events are best effort by design in Kubernetes; losing one must not block
        # reconciliation, but it must be visible.
        log.warning(
            "could not post event %s on %s/%s: %s",
            reason,
            meta["namespace"],
            meta["name"],
            e.reason,
        )


__all__ = ["post_event"]
