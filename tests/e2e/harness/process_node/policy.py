"""NetworkPolicy enforcement for the process nodes' pods, as a network plugin does it.

One `PolicyEnforcer` per process-node process watches NetworkPolicies, Namespaces and
Pods cluster-wide and keeps each local pod's nftables ruleset (``harness/netpol.py``)
current in its network namespace: at sandbox creation, before any container starts, and
again whenever a policy, a namespace's labels or another pod's address or labels change.

Each sandbox also gets an audit table of its own, never replaced: a counter of the new
connections the pod opened to anything but itself and the set of (address, port) they
went to. It answers "did this pod connect anywhere?" the way a capture on its interface
would (``outbound_connections``).
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from ..netpol import PodInfo, apply, host_addresses, pod_info, ruleset

log = logging.getLogger("process-node")

AUDIT_TABLE = "openmodel_audit"
_AUDIT = f"""table inet {AUDIT_TABLE} {{
  set outbound {{ type ipv4_addr . inet_service; flags dynamic; size 4096; }}
  chain output {{
    type filter hook output priority -10; policy accept;
    ct state new oifname != "lo" counter
    ct state new oifname != "lo" meta l4proto {{ tcp, udp }} add @outbound {{ ip daddr . th dport }}
  }}
}}
"""

Lister = Callable[..., Any]


@dataclass(frozen=True)
class _Store:
    """Where the enforcer keeps one watched kind: the map, its key and its value."""

    items: dict[Any, Any]
    key: Callable[[dict[str, Any]], Any]
    value: Callable[[dict[str, Any]], Any]


def _namespaced_name(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def _name(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _uid(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["uid"])


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


class PolicyEnforcer:
    def __init__(self, api: client.ApiClient, stop: threading.Event) -> None:
        self.api = api
        self.stop = stop
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.pods: dict[str, PodInfo] = {}
        # uid -> (the pod as this node runs it, its network namespace)
        self.local: dict[str, tuple[PodInfo, str]] = {}
        self.applied: dict[str, str] = {}
        self.node_addresses = host_addresses()
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.synced = {kind: threading.Event() for kind in ("policies", "namespaces", "pods")}

    # -- the pods of this process -----------------------------------------------------
    def confine(self, pod: Mapping[str, Any], address: str, netns: str) -> None:
        """Before the pod's containers start: its audit table and its rules as the
        cluster stands now (waiting for the first list of each watched kind)."""
        for kind, done in self.synced.items():
            if not done.wait(30):
                raise RuntimeError(f"network policy enforcement: no list of {kind} yet")
        info = pod_info(pod)
        info = PodInfo(info.namespace, info.name, info.labels, address, info.ports)
        apply(netns, _AUDIT)
        with self.lock:
            self.local[pod["metadata"]["uid"]] = (info, netns)
        self._enforce(pod["metadata"]["uid"])

    def release(self, uid: str) -> None:
        with self.lock:
            self.local.pop(uid, None)
            self.applied.pop(uid, None)

    def _enforce(self, uid: str) -> None:
        with self.lock:
            entry = self.local.get(uid)
            if entry is None:
                return
            mine, netns = entry
            others = [p for key, p in self.pods.items() if key != uid and p.ip]
            script = ruleset(
                mine,
                list(self.policies.values()),
                [mine, *others],
                dict(self.namespaces),
                self.node_addresses,
            )
            if self.applied.get(uid) == script:
                return
        try:
            apply(netns, script)
        except RuntimeError as e:  # the sandbox went meanwhile
            log.info("network policy: %s", e)
            return
        with self.lock:
            if uid in self.local:
                self.applied[uid] = script

    # -- the cluster's state ----------------------------------------------------------
    def run(self) -> None:
        core = client.CoreV1Api(client.ApiClient(self.api.configuration))
        networking = client.NetworkingV1Api(client.ApiClient(self.api.configuration))
        # Each kind: where it is kept, under which key, and what of it.
        kinds: list[tuple[str, Lister, _Store]] = [
            (
                "policies",
                networking.list_network_policy_for_all_namespaces,
                _Store(self.policies, _namespaced_name, lambda obj: obj),
            ),
            ("namespaces", core.list_namespace, _Store(self.namespaces, _name, _labels)),
            ("pods", core.list_pod_for_all_namespaces, _Store(self.pods, _uid, pod_info)),
        ]
        for kind, lister, store in kinds:
            threading.Thread(
                target=self._follow,
                args=(kind, lister, store),
                name=f"netpol-{kind}",
                daemon=True,
            ).start()
        while not self.stop.is_set():
            if not self.changed.wait(1.0):
                continue
            self.changed.clear()
            with self.lock:
                uids = list(self.local)
            for uid in uids:
                self._enforce(uid)

    def _follow(self, kind: str, lister: Lister, store: _Store) -> None:
        api = client.ApiClient(self.api.configuration)
        while not self.stop.is_set():
            try:
                listed = api.sanitize_for_serialization(lister(_request_timeout=(5, 30)))
                for item in listed["items"]:
                    self._record(store, "ADDED", item)
                self.synced[kind].set()
                self.changed.set()
                stream = watch.Watch()
                try:
                    for event in stream.stream(
                        lister,
                        resource_version=listed["metadata"]["resourceVersion"],
                        timeout_seconds=60,
                        _request_timeout=70,
                    ):
                        if self.stop.is_set() or event["type"] == "ERROR":
                            break
                        self._record(store, event["type"], event["raw_object"])
                        self.changed.set()
                finally:
                    stream.stop()
            except ApiException as e:
                if e.status != 410:
                    log.warning("network policy: watching %s failed: %s", kind, e.reason)
                    self.stop.wait(1.0)
            except Exception:
                log.exception("network policy: watching %s failed; again", kind)
                self.stop.wait(1.0)

    def _record(self, store: _Store, event: str, obj: dict[str, Any]) -> None:
        key = store.key(obj)
        with self.lock:
            if event == "DELETED":
                store.items.pop(key, None)
            else:
                store.items[key] = store.value(obj)


def outbound_connections(netns: str) -> tuple[int, list[str]]:
    """How many new connections the pod opened beyond itself, and to where (address
    . port), from its audit table."""
    counter = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "chain", "inet", AUDIT_TABLE, "output"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    packets = 0
    for line in counter.splitlines():
        if "counter packets" in line:
            packets = int(line.split("counter packets", 1)[1].split()[0])
            break
    listed = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "set", "inet", AUDIT_TABLE, "outbound"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    elements = listed.split("elements = {", 1)[1].split("}", 1)[0] if "elements" in listed else ""
    return packets, [e.strip() for e in elements.split(",") if e.strip()]
