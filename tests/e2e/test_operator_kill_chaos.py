"""SIGKILL the operator three times during a burst of 30 ModelDeployment creations and
30 edits (a seeded schedule, printed): after the last restart every ModelDeployment has
exactly one Deployment and one Service, no child is left without its owner, every spec
edit reached its Deployment and every status says what the world shows.

On a control plane of its own (the session's operator would do the work otherwise).
The long version (10 rounds of 100) is `python -m perf.chaos_operator_kill`.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.resilience import (
    KillRound,
    OwnCluster,
    burst,
    create_namespace,
    kill_schedule,
    operator_identity,
    own_cluster,
    run_kill_round,
)
from openmodel_fixtures import ChildProcess, start_operator

pytestmark = pytest.mark.cluster

SEED = 1313
COUNT = 30
KILLS = 3
CONVERGE_DEADLINE = 180.0


@pytest.fixture
def chaos_cluster(request: pytest.FixtureRequest) -> Iterator[OwnCluster]:
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-e2e-chaos-"))
    failed_before = request.session.testsfailed
    with own_cluster(workdir) as cluster:
        yield cluster
    if request.session.testsfailed == failed_before:
        shutil.rmtree(workdir, ignore_errors=True)  # else kept, with every log


def test_operator_sigkilled_during_a_burst_converges(chaos_cluster: OwnCluster) -> None:
    api, workdir = chaos_cluster.api, chaos_cluster.plane.workdir
    kubeconfig = operator_identity(api, "chaos-operator", workdir)
    rng = random.Random(SEED)
    ops = burst(COUNT, COUNT, "chaos", rng)
    [kill_after] = kill_schedule(rng, 1, KILLS, len(ops))
    print(f"seed {SEED}: {len(ops)} operations, SIGKILL after operations {kill_after}")
    create_namespace(api, "chaos")
    # Production resync (60 s): convergence within the deadline comes from events and
    # the restarted operator's initial listing, not from a fast periodic pass.
    env = {"OPENMODEL_RESYNC_SECONDS": "60"}
    generation = iter(range(1, KILLS + 2))
    operators: list[ChildProcess] = [
        start_operator(kubeconfig, workdir, env, name=f"operator-{next(generation)}")
    ]

    def restart() -> ChildProcess:
        op = start_operator(kubeconfig, workdir, env, name=f"operator-{next(generation)}")
        operators.append(op)
        return op

    try:
        result = run_kill_round(
            api,
            ops,
            KillRound("chaos", len(ops), kill_after),
            lambda: operators[-1],
            restart,
            CONVERGE_DEADLINE,
        )
    finally:
        for op in operators:
            op.stop()
    print(
        f"burst {result.burst_seconds:.1f}s, restarts "
        f"{', '.join(f'{s:.1f}s' for s in result.restart_seconds)}, converged "
        f"{result.converge_seconds:.1f}s after the burst"
    )
    assert len(operators) == KILLS + 1
    assert len(result.restart_seconds) == KILLS
