"""Two operator replicas with leader election, the holder SIGKILLed while it scales.

Shared by tests/e2e/test_leader_failover.py and perf/chaos_leader_failover.py.

Operators "op-a" and "op-b" run as ServiceAccounts openmodel-system/op-a and /op-b
(their requests carry that user in the audit log) with OPENMODEL_LEADER_ELECTION=true;
the Lease is openmodel-system/openmodel-autoscaler, identity `<POD_NAME>-<pid>`. One
autoscaled ModelDeployment (min 1, max 3) gets simulated engines on its pods'
addresses and a load that needs more than one; three plain ones are there for the
reconcile passes. Midway every ModelDeployment is edited (maxModelLen), so both
replicas' handlers see a spec change; only the Lease holder may write it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import time
from collections import defaultdict
from typing import Any

from kubernetes import client

from .audit import AuditedRequest
from .engine_fleet import EngineFleet, LoadGenerator
from .operator import OperatorProcess, autoscaled_small_md, start_operator
from .rawapi import request
from .resilience import (
    OPERATOR_NAMESPACE,
    OwnCluster,
    create_namespace,
    md_body,
    operator_identity,
    sa_user,
    sigkill,
    wait_converged,
)
from .wait import NotYet, wait_for

NAMESPACE = "failover"
SCALED = "scaled"
LEASE = "openmodel-autoscaler"
AUTOSCALER_MANAGER = "openmodel-autoscaler"
RECONCILER_MANAGER = "openmodel"
NAMES = ("op-a", "op-b")


def scaled_md() -> dict[str, Any]:
    return autoscaled_small_md(
        NAMESPACE,
        SCALED,
        minReplicas=1,
        maxReplicas=3,
        targetQueueDepth=1,
        scaleDownStabilizationSeconds=2,
    )


@dataclasses.dataclass
class FailoverResult:
    lease_seconds: int
    first_holder: str
    new_holder: str
    last_renew_at: float  # epoch seconds: the first holder's last renewTime
    killed_at: float
    acquired_at: float  # the new holder's acquireTime
    # Per operator: epoch seconds of each Deployment write whose body sets spec.replicas.
    autoscaler_writes: dict[str, list[float]]
    reconciler_writes: dict[str, list[float]]
    reconciler_writes_while_standby: list[AuditedRequest]

    @property
    def takeover_seconds(self) -> float:
        return self.acquired_at - self.killed_at

    def describe(self) -> str:
        def span(times: list[float]) -> str:
            if not times:
                return "none"
            return f"{len(times)}, {min(times) - self.killed_at:+.1f}s .. " + (
                f"{max(times) - self.killed_at:+.1f}s from the kill"
            )

        lines = [
            f"holder {self.first_holder} SIGKILLed {self.killed_at - self.last_renew_at:.2f}s "
            f"after its last renewal; {self.new_holder} acquired the Lease "
            f"{self.takeover_seconds:.2f}s after the kill "
            f"({self.acquired_at - self.last_renew_at:.2f}s after that renewal; "
            f"leaseDurationSeconds {self.lease_seconds})",
        ]
        for name in NAMES:
            lines.append(
                f"  {name}: spec.replicas writes as {AUTOSCALER_MANAGER}: "
                f"{span(self.autoscaler_writes[name])}; as {RECONCILER_MANAGER} (reconcile "
                f"handlers): {span(self.reconciler_writes[name])}"
            )
        standby = self.reconciler_writes_while_standby
        lines.append(
            f"  Deployment writes setting spec.replicas by the replica NOT holding the "
            f"Lease: {len(standby)}"
            + "".join(
                f"\n    {r.user.rsplit(':', 1)[-1]} {r.verb} {r.name} fieldManager="
                f"{r.field_manager} replicas={_replicas_sent(r.body)}"
                f" at {r.t - self.killed_at:+.2f}s"
                for r in standby[:10]
            )
        )
        return "\n".join(lines)


def _lease(api: client.ApiClient) -> dict[str, Any] | None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/{LEASE}"
    try:
        return request(api, "GET", path)
    except Exception as e:  # a 404 until the first candidate created it
        if getattr(e, "status", None) == 404:
            return None
        raise


def _micro(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _holder(api: client.ApiClient) -> str:
    lease = _lease(api) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _deployment_replicas(api: client.ApiClient) -> int:
    dep = request(api, "GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{SCALED}")
    return int(dep["spec"].get("replicas", 1))


def run_failover(
    cluster: OwnCluster,
    rng: random.Random,
    renew_seconds: float,
    plain: int = 3,
    clients: int = 6,
) -> FailoverResult:
    """`renew_seconds`: how often the holder renews the Lease (the retry period)."""
    api, workdir = cluster.api, cluster.plane.workdir
    kubeconfigs = {name: operator_identity(api, name, workdir) for name in NAMES}
    create_namespace(api, NAMESPACE)
    operators: dict[str, OperatorProcess] = {}

    def start(name: str) -> OperatorProcess:
        env = {
            "OPENMODEL_LEADER_ELECTION": "true",
            "OPENMODEL_POD_NAMESPACE": OPERATOR_NAMESPACE,
            "POD_NAME": name,
            "OPENMODEL_RESYNC_SECONDS": "60",
        }
        op = start_operator(kubeconfigs[name], workdir, env, name=name)
        operators[name] = op
        return op

    killed: set[str] = set()

    def alive() -> None:
        for name, op in operators.items():
            if name not in killed and not op.alive():
                raise AssertionError(f"{name} exited:\n{op.log_tail()}")

    fleet: EngineFleet | None = None
    load: LoadGenerator | None = None
    try:
        start("op-a")
        wait_for(
            lambda: _holder(api).startswith("op-a-") or NotYet(_holder(api)),
            30,
            "op-a to hold the Lease",
        )
        start("op-b")
        request(
            api,
            "POST",
            f"/apis/openmodel.dev/v1alpha1/namespaces/{NAMESPACE}/modeldeployments",
            scaled_md(),
        )
        for i in range(plain):
            body = md_body(f"md-{i:03d}", NAMESPACE, rng)
            body["spec"]["replicas"] = 1
            request(
                api,
                "POST",
                f"/apis/openmodel.dev/v1alpha1/namespaces/{NAMESPACE}/modeldeployments",
                body,
            )
        fleet = EngineFleet(api, NAMESPACE, SCALED, slots=2, service_time=0.3, max_seconds=300)
        fleet.start()
        wait_for(lambda: len(fleet.urls()) >= 1 or NotYet(fleet.urls()), 90, "the first engine")
        load = LoadGenerator(fleet, clients=clients, max_seconds=300).start()
        wait_for(
            lambda: _deployment_replicas(api) >= 2 or NotYet(_deployment_replicas(api)),
            60,
            "op-a's autoscaler to scale up under load",
        )
        # A spec edit of every ModelDeployment: both replicas' handlers see it.
        for md in ["scaled", *(f"md-{i:03d}" for i in range(plain))]:
            request(
                api,
                "PATCH",
                f"/apis/openmodel.dev/v1alpha1/namespaces/{NAMESPACE}/modeldeployments/{md}",
                {"spec": {"maxModelLen": 4096}},
                content_type="application/merge-patch+json",
            )
        wait_converged(api, [NAMESPACE], 90, alive=alive)
        # Kill half a period after a renewal: the kill then always follows the holder's last
        # renewal by a margin, whatever the machine's timing.
        seen = str((_lease(api) or {})["spec"]["renewTime"])
        wait_for(
            lambda: str((_lease(api) or {})["spec"]["renewTime"]) != seen or NotYet(seen),
            30,
            "op-a to renew the Lease",
            interval=0.05,
        )
        before = _lease(api) or {}
        first_holder = str(before["spec"]["holderIdentity"])
        renewed = _micro(str(before["spec"]["renewTime"]))
        wait_for(
            lambda: time.time() >= renewed + renew_seconds / 2 or NotYet("not yet"),
            30,
            "half a period after the renewal",
            interval=0.01,
        )
        killed_at = time.time()
        sigkill(operators["op-a"])
        killed.add("op-a")
        after_kill = _lease(api) or {}
        last_renew = _micro(str(after_kill["spec"]["renewTime"]))
        lease_seconds = int(after_kill["spec"]["leaseDurationSeconds"])
        wait_for(
            lambda: _holder(api).startswith("op-b-") or NotYet(_holder(api)),
            lease_seconds * 3,
            "op-b to take the Lease",
        )
        taken = _lease(api) or {}
        acquired_at = _micro(str(taken["spec"]["acquireTime"]))
        # The load stops: only op-b can scale back down now.
        load.stop()
        load = None
        wait_for(
            lambda: _deployment_replicas(api) == 1 or NotYet(_deployment_replicas(api)),
            60,
            "op-b's autoscaler to scale down once the load stopped",
        )
        alive()
        writes = cluster.audit.writes()
    finally:
        if load is not None:
            load.stop()
        if fleet is not None:
            fleet.stop()
        for op in operators.values():
            op.stop()

    by_user = {sa_user(name): name for name in NAMES}
    autoscaler: dict[str, list[float]] = defaultdict(list)
    reconciler: dict[str, list[float]] = defaultdict(list)
    standby: list[AuditedRequest] = []
    for r in writes:
        who = by_user.get(r.user)
        if who is None or not r.writes_replicas or r.namespace != NAMESPACE:
            continue
        (autoscaler if r.field_manager == AUTOSCALER_MANAGER else reconciler)[who].append(r.t)
        leader_now = "op-a" if r.t < acquired_at else "op-b"
        if who != leader_now:
            standby.append(r)
    return FailoverResult(
        lease_seconds=lease_seconds,
        first_holder=first_holder,
        new_holder=str(taken["spec"]["holderIdentity"]),
        last_renew_at=last_renew,
        killed_at=killed_at,
        acquired_at=acquired_at,
        autoscaler_writes={n: autoscaler[n] for n in NAMES},
        reconciler_writes={n: reconciler[n] for n in NAMES},
        reconciler_writes_while_standby=standby,
    )


def _replicas_sent(body: Any) -> Any:
    """spec.replicas as a write set it (a whole object or apply; a JSON patch's ops)."""
    if isinstance(body, list):
        return [
            op.get("value") for op in body if str(op.get("path", "")).startswith("/spec/replicas")
        ]
    return ((body or {}).get("spec") or {}).get("replicas")
