"""Two operator replicas with leader election; the holder's API calls hang past its Lease.

op-a and op-b run as ServiceAccounts of their own on an audited control plane of their
own. op-a talks to the API server through harness/slow_proxy.py (the proxy forwards
under op-a's ServiceAccount, so the audit log still names op-a), op-b directly. op-a
takes the Lease and three ModelDeployments converge. Then the proxy stalls: every
request op-a sends from then on hangs (its Lease renewals, and any write a pass or cycle
makes), while its watches keep delivering events. md-000 is edited at once, md-001 once
op-b holds the Lease; the stall lasts STALL_SECONDS, longer than the Lease, after which
the proxy forwards whatever op-a still waits on; md-002 is edited after that.

From kube-apiserver's audit log: op-a's Lease expired `leaseDurationSeconds` after its
last successful renewal; op-a sent no write (create, update, patch, delete; the Lease
aside) that reached the API server after that; op-b took the Lease over within lease
duration + retry period + TAKEOVER_SLACK_SECONDS of that renewal and wrote md-000's
Deployment (the edit made during the stall) within ACT_MARGIN_SECONDS more.

Before the leadership component (254fa82) op-a's renewals rode on its autoscaler cycle,
which hung on its Lease request with `was_leader` still True: its passes for the edits
sent their writes, which the API server received when the stall ended. To see it, run
the operators from another tree (the test's own code stays this one's):
OPENMODEL_STALL_OPERATOR_PATH=/path/to/old/operator (becomes the operators' PYTHONPATH).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from openmodel.kube.leadership import RETRY_PERIOD_SECONDS

from harness import NotYet, wait_for
from harness.audit import AuditedRequest
from harness.operator import OperatorProcess, start_operator
from harness.rawapi import request
from harness.resilience import (
    OPERATOR_NAMESPACE,
    OwnCluster,
    create_namespace,
    md_body,
    operator_identity,
    own_cluster,
    sa_user,
    wait_converged,
)
from harness.slow_proxy import Recorded, SlowProxy

pytestmark = pytest.mark.cluster

NAMESPACE = "stall"
LEASE = "openmodel-autoscaler"
NAMES = ("op-a", "op-b")
PLAIN = 3
# Longer than the Lease (15 s) plus op-b's retry period, so op-b takes over during the
# stall; shorter than the operator's 30 s request timeout, so whatever op-a sent during
# the stall is still waiting when the proxy lets it through.
STALL_SECONDS = 25.0
# op-b's attempt that finds the Lease expired comes within one retry period; the slack
# covers that attempt's own two requests and the audit log's timestamps.
TAKEOVER_SLACK_SECONDS = 1.0
# From op-b's takeover to its write of the edited Deployment: the elected replica queues
# every ModelDeployment and the pass writes (milliseconds when idle).
ACT_MARGIN_SECONDS = 3.0
MD_PATH = f"/apis/openmodel.dev/v1alpha1/namespaces/{NAMESPACE}/modeldeployments"
# The operators' `openmodel` from another tree (the module docstring says why).
OPERATOR_PATH = os.environ.get("OPENMODEL_STALL_OPERATOR_PATH")


@dataclasses.dataclass
class StallResult:
    lease_seconds: int
    stalled_at: float  # epoch seconds
    resumed_at: float
    last_renewal: float  # op-a's last successful Lease write (audit, epoch seconds)
    acquired: float  # op-b's first successful Lease write after it
    acted: float  # op-b's first write of md-000's Deployment after the stall began
    late_writes: list[AuditedRequest]  # op-a's, after its Lease expired (Lease aside)
    last_write: AuditedRequest | None  # op-a's last write that reached the API server
    held: list[Recorded]  # op-a's requests held by the proxy
    holder: str

    @property
    def expiry(self) -> float:
        return self.last_renewal + self.lease_seconds

    def describe(self) -> str:
        def at(t: float) -> str:
            return f"{t - self.stalled_at:+.2f}s"

        forwarded = [r for r in self.held if r.status != 0]
        writes_held = [r for r in self.held if r.method not in ("GET", "HEAD")]
        last = self.last_write
        lines = [
            f"stall {at(self.stalled_at)} .. {at(self.resumed_at)} (times from its start); "
            f"op-a's last renewal {at(self.last_renewal)}, its Lease expired "
            f"{at(self.expiry)} (leaseDurationSeconds {self.lease_seconds})",
            "  op-a's last write that reached the API server: "
            + (
                "none"
                if last is None
                else f"{last.verb} {last.resource}/{last.name} at {at(last.t)} "
                f"({last.t - self.expiry:+.2f}s from the expiry)"
            ),
            f"  op-a's writes after the expiry: {len(self.late_writes)}"
            + "".join(
                f"\n    {r.verb} {'/'.join(filter(None, (r.resource, r.name, r.subresource)))}"
                f" code {r.code} at {at(r.t)}"
                for r in self.late_writes[:10]
            ),
            f"  op-a's requests held by the proxy: {len(self.held)} ({len(writes_held)} not "
            f"reads), given up by op-a: {len(self.held) - len(forwarded)}, forwarded at the "
            f"resume: {len(forwarded)}",
            f"  {self.holder} took the Lease {at(self.acquired)}: "
            f"{self.acquired - self.expiry:+.2f}s from the expiry; wrote md-000's Deployment "
            f"{at(self.acted)} ({self.acted - self.acquired:+.2f}s from its takeover)",
        ]
        return "\n".join(lines)


def _lease(api: client.ApiClient) -> dict[str, Any]:
    return request(
        api, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/{LEASE}"
    )


def _holder(api: client.ApiClient) -> str:
    try:
        return str((_lease(api).get("spec") or {}).get("holderIdentity") or "")
    except Exception as e:  # a 404 until the first candidate created it
        if getattr(e, "status", None) == 404:
            return ""
        raise


def _edit(api: client.ApiClient, name: str) -> None:
    request(
        api,
        "PATCH",
        f"{MD_PATH}/{name}",
        {"spec": {"maxModelLen": 4096}},
        content_type="application/merge-patch+json",
    )


def _is_lease(r: AuditedRequest) -> bool:
    return r.resource == "leases" and r.namespace == OPERATOR_NAMESPACE and r.name == LEASE


def run_stall(cluster: OwnCluster, workdir: Path) -> StallResult:
    api = cluster.api
    kubeconfigs = {name: operator_identity(api, name, workdir) for name in NAMES}
    create_namespace(api, NAMESPACE)
    proxy = SlowProxy(kubeconfigs["op-a"], delay=0.0, throttle_share=0.0).start()
    through_proxy = proxy.write_kubeconfig(workdir / "op-a-through-proxy.kubeconfig")
    operators: dict[str, OperatorProcess] = {}

    def start(name: str, kubeconfig: Path) -> None:
        env = {
            "OPENMODEL_LEADER_ELECTION": "true",
            "OPENMODEL_POD_NAMESPACE": OPERATOR_NAMESPACE,
            "POD_NAME": name,
            "OPENMODEL_RESYNC_SECONDS": "60",
            **({"PYTHONPATH": OPERATOR_PATH} if OPERATOR_PATH else {}),
        }
        operators[name] = start_operator(kubeconfig, workdir, env, name=name)

    def alive() -> None:
        for name, op in operators.items():
            if not op.alive():
                raise AssertionError(f"{name} exited:\n{op.log_tail()}")

    try:
        start("op-a", through_proxy)
        wait_for(
            lambda: _holder(api).startswith("op-a-") or NotYet(_holder(api)),
            30,
            "op-a to hold the Lease",
        )
        start("op-b", kubeconfigs["op-b"])
        rng = random.Random(5)
        for i in range(PLAIN):
            body = md_body(f"md-{i:03d}", NAMESPACE, rng)
            body["spec"]["replicas"] = 1
            request(api, "POST", MD_PATH, body)
        wait_converged(api, [NAMESPACE], 90, alive=alive)
        # Stall right after a renewal: op-a is a healthy holder when its calls hang.
        seen = str(_lease(api)["spec"]["renewTime"])
        wait_for(
            lambda: str(_lease(api)["spec"]["renewTime"]) != seen or NotYet(seen),
            30,
            "op-a to renew the Lease",
            interval=0.05,
        )
        proxy.stall()
        stalled_at = time.time()
        _edit(api, "md-000")  # op-a still holds the Lease: its pass may start
        lease_seconds = int(_lease(api)["spec"]["leaseDurationSeconds"])
        wait_for(
            lambda: _holder(api).startswith("op-b-") or NotYet(_holder(api)),
            lease_seconds * 2,
            "op-b to take the Lease over",
        )
        holder = _holder(api)
        _edit(api, "md-001")  # op-b holds the Lease; op-a sees the edit too
        wait_converged(api, [NAMESPACE], 60, alive=alive)
        wait_for(
            lambda: time.time() >= stalled_at + STALL_SECONDS or NotYet("stalled"),
            STALL_SECONDS,
            f"{STALL_SECONDS:.0f} s of stall",
            interval=0.05,
        )
        proxy.resume()
        resumed_at = time.time()
        wait_for(
            lambda: proxy.holding == 0 or NotYet(proxy.holding),
            30,
            "the held requests to go through",
        )
        _edit(api, "md-002")  # after the stall: both see it, only op-b may write
        wait_converged(api, [NAMESPACE], 60, alive=alive)
        alive()
        writes = cluster.audit.writes()
        held = [r for r in proxy.records if r.held]
    finally:
        for op in operators.values():
            op.stop()
        proxy.stop()

    op_a, op_b = sa_user("op-a"), sa_user("op-b")
    renewals = [r for r in writes if r.user == op_a and _is_lease(r) and r.code == 200]
    last_renewal = max(r.t for r in renewals)
    expiry = last_renewal + lease_seconds
    taken = [r for r in writes if r.user == op_b and _is_lease(r) and r.code in (200, 201)]
    acted = [
        r
        for r in writes
        if r.user == op_b
        and r.resource == "deployments"
        and r.name == "md-000"
        and r.t >= stalled_at
    ]
    a_writes = sorted((r for r in writes if r.user == op_a and not _is_lease(r)), key=lambda r: r.t)
    return StallResult(
        lease_seconds=lease_seconds,
        stalled_at=stalled_at,
        resumed_at=resumed_at,
        last_renewal=last_renewal,
        acquired=min(r.t for r in taken if r.t > last_renewal),
        acted=min(r.t for r in acted),
        late_writes=[r for r in a_writes if r.t > expiry],
        last_write=a_writes[-1] if a_writes else None,
        held=held,
        holder=holder,
    )


@pytest.fixture(scope="module")
def stall(request: pytest.FixtureRequest) -> Iterator[StallResult]:
    """One stall on a control plane of its own, shared by the tests below."""
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-e2e-stall-"))
    failed_before = request.session.testsfailed
    with own_cluster(workdir) as cluster:
        result = run_stall(cluster, workdir)
    print(f"\n[leader-stall]\n{result.describe()}")
    yield result
    if request.session.testsfailed == failed_before:
        shutil.rmtree(workdir, ignore_errors=True)  # else kept, with every log


def test_the_stalled_replica_writes_nothing_after_its_lease_expired(stall: StallResult) -> None:
    # The stall really held op-a's calls, its Lease renewals among them.
    assert any(r.path.split("?")[0].endswith(f"/leases/{LEASE}") for r in stall.held), (
        stall.describe()
    )
    assert stall.resumed_at - stall.stalled_at > stall.lease_seconds
    assert stall.late_writes == [], stall.describe()


def test_the_other_replica_takes_over_and_acts_within_the_bound(stall: StallResult) -> None:
    assert stall.holder.startswith("op-b-"), stall.describe()
    assert stall.acquired > stall.expiry, stall.describe()
    assert stall.acquired <= stall.expiry + RETRY_PERIOD_SECONDS + TAKEOVER_SLACK_SECONDS, (
        stall.describe()
    )
    assert stall.acted <= stall.acquired + ACT_MARGIN_SECONDS, stall.describe()
