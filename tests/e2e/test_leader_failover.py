"""Two operator processes with leader election: SIGKILL the Lease holder while it scales
a loaded model; the other takes over within the Lease duration plus one retry period
(kube/leadership.py) and scales from then on, and the audit log shows who wrote Deployment
`spec.replicas` (each operator runs under a ServiceAccount of its own).

The e2e test for the elector alone (an injected clock) is test_leader_election.py.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmodel.kube.leadership import RETRY_PERIOD_SECONDS

from harness.failover import FailoverResult, run_failover
from harness.resilience import own_cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def failover(request: pytest.FixtureRequest) -> Iterator[FailoverResult]:
    """One failover on a control plane of its own, shared by the tests below."""
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-e2e-failover-"))
    failed_before = request.session.testsfailed
    with own_cluster(workdir) as cluster:
        result = run_failover(cluster, random.Random(77), RETRY_PERIOD_SECONDS)
    print(result.describe())
    yield result
    if request.session.testsfailed == failed_before:
        shutil.rmtree(workdir, ignore_errors=True)  # else kept, with every log


def test_standby_takes_over_scaling_within_the_lease_bound(failover: FailoverResult) -> None:
    result = failover
    # The bound: the kill comes after the holder's last renewal; the Lease is free
    # lease_seconds after that renewal, and the standby tries every retry period.
    bound = result.lease_seconds + RETRY_PERIOD_SECONDS
    assert result.takeover_seconds <= bound, result.describe()
    assert result.new_holder.startswith("op-b-")
    # The autoscaler's writes of spec.replicas: the first leader's only before the kill,
    # the second's only after it acquired the Lease, and both scaled.
    a_scaling, b_scaling = result.autoscaler_writes["op-a"], result.autoscaler_writes["op-b"]
    assert a_scaling and b_scaling, result.describe()
    assert max(a_scaling) < result.killed_at, result.describe()
    assert min(b_scaling) >= result.acquired_at, result.describe()
    assert result.reconciler_writes_while_standby == [], result.describe()
