"""kube-apiserver, then etcd, stopped and started again (same ports, same data) while
the operator runs and ModelDeployments are being edited: the operator reconnects by
itself (the same process throughout) and converges: every edit made before, during
and after the outage is in the Deployments and every status says what the world shows.

On a control plane of its own (the session's is shared by every other test). The
longer version, with times, is `python -m perf.chaos_api_restart`.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.resilience import (
    Editor,
    OwnCluster,
    burst,
    create_namespace,
    operator_identity,
    own_cluster,
    run_outage,
    wait_converged,
)
from openmodel_fixtures import start_operator

pytestmark = pytest.mark.cluster

SEED = 2626
COUNT = 20
CONVERGE_DEADLINE = 150.0


@pytest.fixture
def outage_cluster(request: pytest.FixtureRequest) -> Iterator[OwnCluster]:
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-e2e-api-restart-"))
    failed_before = request.session.testsfailed
    with own_cluster(workdir) as cluster:
        yield cluster
    if request.session.testsfailed == failed_before:
        shutil.rmtree(workdir, ignore_errors=True)  # else kept, with every log


def test_operator_rides_out_apiserver_and_etcd_restarts(outage_cluster: OwnCluster) -> None:
    cluster = outage_cluster
    api, workdir = cluster.api, cluster.plane.workdir
    kubeconfig = operator_identity(api, "outage-operator", workdir)
    rng = random.Random(SEED)
    create_namespace(api, "outage")
    op = start_operator(kubeconfig, workdir, {"OPENMODEL_RESYNC_SECONDS": "60"})
    try:
        for operation in burst(COUNT, 0, "outage", rng):
            operation.run(api, "outage")
        wait_converged(api, ["outage"], CONVERGE_DEADLINE)
        editor = Editor(api, "outage", [f"md-{i:03d}" for i in range(COUNT)], rng)
        for component in ("kube-apiserver", "etcd"):
            outage = run_outage(
                cluster.plane,
                api,
                op,
                editor,
                component,
                failed_edits=5,
                edits_after=10,
                deadline=CONVERGE_DEADLINE,
            )
            print(
                f"{component}: down {outage.down_seconds:.1f}s ({outage.edits_failed} edits "
                f"refused), API ready {outage.api_back_seconds:.1f}s after the start, "
                f"converged {outage.converge_after_api_seconds:.1f}s after the API was back "
                f"({outage.converge_after_last_edit_seconds:.1f}s after the last of "
                f"{outage.edits_after} edits since); operator pid {outage.operator_pid}"
            )
            assert outage.edits_failed >= 5 and outage.edits_after >= 10
            assert op.alive() and op.process.pid == outage.operator_pid
    finally:
        op.stop()
