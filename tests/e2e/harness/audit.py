"""kube-apiserver's JSON audit log: a control plane that writes one, and its reader.

`AuditedControlPlane` is the harness's control plane with kube-apiserver auditing every
request but watches and non-resource URLs (`WRITES_POLICY` also leaves reads out and
keeps Deployment writes' bodies, so that a write of `spec.replicas` can be attributed).
`AuditLog` reads the file incrementally; every `AuditedRequest` names its client, by
user agent (`client_of`), and its user (a ServiceAccount per operator in the chaos runs).
Shared by the resilience tests and the `perf` benchmarks and chaos scripts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from .controlplane import ControlPlane
from .launcher import Launch

AUDIT_WRITES = ("create", "update", "patch", "delete", "deletecollection")
# The user agent of the `perf` benchmarks' own requests.
BENCH_USER_AGENT = "openmodel-bench"

# Every request but watches and non-resource URLs, at Metadata level.
REQUESTS_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: None
    verbs: [watch]
  - level: None
    nonResourceURLs: ["*"]
  - level: Metadata
"""
# Writes only (the log stays small over a soak); Deployment writes keep their request
# body (who set spec.replicas); the rest: metadata.
WRITES_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: None
    verbs: [watch, get, list]
  - level: None
    nonResourceURLs: ["*"]
  - level: Request
    resources: [{group: apps, resources: [deployments]}]
  - level: Metadata
"""


class AuditedControlPlane(ControlPlane):
    """The harness's control plane with kube-apiserver writing `audit.log` (JSON) under
    `audit_policy`, and `apiserver_flags` after the harness's own (pflag keeps the last
    value of a repeated flag)."""

    audit_policy: ClassVar[str] = WRITES_POLICY
    apiserver_flags: ClassVar[Sequence[str]] = ()

    @property
    def audit_log_path(self) -> Path:
        return self.workdir / "audit.log"

    def _apiserver(self) -> Launch:
        base = super()._apiserver()
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(self.audit_policy)
        extra = [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log_path}",
            "--audit-log-format=json",
            "--audit-log-maxbackup=0",
            # No rotation (default: at 100 MB, which a 1,000-object benchmark run can
            # pass): AuditLog reads one file by offset.
            "--audit-log-maxsize=0",
            *self.apiserver_flags,
        ]

        def argv(ports: list[int]) -> list[str]:
            return [*base.argv(ports), *extra]

        return dataclasses.replace(base, argv=argv)


def client_of(user_agent: str, username: str) -> str:
    """Who sent a request, by its user agent: "bench" (the benchmarks' own client),
    "operator" (kopf and the kubernetes client), the control plane's components
    ("kcm:<controller>" for the controller-manager's), else "other:<agent>"."""
    if user_agent.startswith(BENCH_USER_AGENT):
        return "bench"
    if user_agent.startswith(("kopf/", "OpenAPI-Generator/")):
        return "operator"
    for prefix in ("kwok", "kube-scheduler", "kube-apiserver"):
        if user_agent.startswith(prefix):
            return prefix
    if user_agent.startswith("kube-controller-manager"):
        return "kcm:" + username.rsplit(":", 1)[-1]
    return "other:" + (user_agent.split("/", 1)[0] or username)


@dataclasses.dataclass(frozen=True)
class AuditedRequest:
    """One audited request, reduced to what the reports need."""

    t: float  # epoch seconds the response completed
    client: str  # client_of(user_agent, user)
    user: str
    user_agent: str
    verb: str  # audit verb: get list create update patch delete ...
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    field_manager: str
    # Deployment writes under WRITES_POLICY only; a list for a JSON patch.
    body: Mapping[str, Any] | list[Any] | None

    @property
    def writes_replicas(self) -> bool:
        """A Deployment write whose body sets spec.replicas (an apply or patch of it, or
        a whole object: create/update)."""
        if self.resource != "deployments" or self.subresource or self.verb not in AUDIT_WRITES:
            return False
        if isinstance(self.body, list):  # a JSON patch: its operations' paths
            return any(str(op.get("path", "")).startswith("/spec/replicas") for op in self.body)
        spec = (self.body or {}).get("spec") or {}
        return "replicas" in spec


def parse_event(event: Mapping[str, Any]) -> AuditedRequest:
    """One line of the audit log (an audit.k8s.io/v1 Event)."""
    ref = event.get("objectRef") or {}
    user = (event.get("user") or {}).get("username", "")
    user_agent = event.get("userAgent", "")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(event.get("requestURI", "")).query)
    return AuditedRequest(
        t=dt.datetime.fromisoformat(event["stageTimestamp"]).timestamp(),
        client=client_of(user_agent, user),
        user=user,
        user_agent=user_agent,
        verb=event.get("verb", ""),
        group=ref.get("apiGroup", ""),
        resource=ref.get("resource", ""),
        subresource=ref.get("subresource", ""),
        namespace=ref.get("namespace", ""),
        name=ref.get("name", ""),
        code=int((event.get("responseStatus") or {}).get("code") or 0),
        field_manager=(query.get("fieldManager") or [""])[0],
        body=event.get("requestObject"),
    )


class AuditLog:
    """Incremental reader of kube-apiserver's JSON audit log (a missing file reads as
    empty: a cluster without one, such as the e2e session's, audits nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.requests: list[AuditedRequest] = []

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def poll(self) -> list[AuditedRequest]:
        """Every request logged so far, oldest first."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.requests
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if line.strip():
                self.requests.append(parse_event(json.loads(line)))
        return self.requests

    def between(self, start: float, end: float) -> list[AuditedRequest]:
        return [r for r in self.poll() if start <= r.t < end]

    def writes(self, user_prefix: str = "", since: float = 0.0) -> list[AuditedRequest]:
        return [
            r
            for r in self.poll()
            if r.verb in AUDIT_WRITES and r.user.startswith(user_prefix) and r.t >= since
        ]
