"""Lease-based leader election (coordination.k8s.io/v1): one acquire-or-renew attempt.

With several operator replicas, only the holder of the Lease writes: it reconciles,
autoscales and loads adapters; a standby keeps its watches and cache warm and reconciles
everything once when it takes over. Two writers of the same replicas is a failure mode
seen elsewhere. Updates use the Lease's resourceVersion, so two candidates can never
both win the same round. (The Lease keeps its historical name `openmodel-autoscaler`.)
When to attempt, and how long an attempt keeps this replica the leader, is
`kube/leadership.py`'s business.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.kube import calls as kube

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
# leaseDurationSeconds written into the Lease: a standby takes it over this long after
# the holder's last renewTime (client-go's default).
LEASE_SECONDS = 15
# One request of an attempt is given up after this long: a hung connection must not hold
# the renewals (a new attempt, on a new connection, comes a retry period later).
REQUEST_TIMEOUT_SECONDS = 4.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _format(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class LeaseElector:
    api: client.ApiClient
    namespace: str
    name: str
    identity: str
    lease_seconds: int = LEASE_SECONDS
    clock: Callable[[], dt.datetime] = _now
    request_timeout: float = REQUEST_TIMEOUT_SECONDS

    def _body(self, resource_version: str | None, acquire: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": acquire,
                "renewTime": _format(self.clock()),
            },
        }

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return kube.call_once(self.api, method, path, body=body, timeout=self.request_timeout)

    def try_acquire_or_renew(self) -> bool:
        """True when this candidate holds the lease after the call."""
        path = LEASES.format(ns=self.namespace)
        try:
            lease = self._call("GET", f"{path}/{self.name}")
        except ApiException as e:
            if e.status != 404:
                raise
            try:
                self._call("POST", path, self._body(None, _format(self.clock())))
            except ApiException as create_error:
                if create_error.status == 409:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = renewed is None or self.clock() > renewed + dt.timedelta(seconds=duration)
        if holder not in (None, "", self.identity) and not expired:
            return False
        acquire = spec.get("acquireTime") if holder == self.identity else _format(self.clock())
        body = self._body(lease["metadata"]["resourceVersion"], acquire or _format(self.clock()))
        try:
            self._call("PUT", f"{path}/{self.name}", body)
        except ApiException as e:
            if e.status == 409:  # someone else renewed or took it first
                return False
            raise
        return True


def leader_elector(api: client.ApiClient) -> LeaseElector | None:
    """An elector when OPENMODEL_LEADER_ELECTION=true (several replicas), else None.

    `api`: a client of the Lease's own (its own connections: a renewal never waits for
    one behind the workers' writes). The Lease lives in the operator's namespace
    (OPENMODEL_POD_NAMESPACE, from the downward API); the identity is the pod name plus
    the process id.
    """
    if os.environ.get("OPENMODEL_LEADER_ELECTION", "").lower() != "true":
        return None
    namespace = os.environ.get("OPENMODEL_POD_NAMESPACE", "openmodel-system")
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}"
    return LeaseElector(api, namespace, "openmodel-autoscaler", identity)
