"""Two operator replicas with leader election: SIGKILL the Lease holder while it scales a
loaded model; measure the takeover against its bound and attribute every write of
Deployment spec.replicas from kube-apiserver's audit log.

    .venv/bin/python -m perf.chaos_leader_failover [--rounds 3] [--seed 77] [--keep]

Each round on a fresh control plane (harness.failover `run_failover`): operators
op-a and op-b under ServiceAccounts of their own, OPENMODEL_LEADER_ELECTION=true, the
autoscaler poll of the e2e tests (1 s), the Lease renewed every retry period (2 s,
kube/leadership.py); an autoscaled ModelDeployment with simulated
engines under load and three plain ones; every one edited once while both run; op-a
SIGKILLed; the load stops so that op-b must scale down.

Bound: leaseDurationSeconds (read from the Lease) + one retry period, from the kill to
op-b's acquireTime. Prints per round the takeover time, and per replica the writes
that set spec.replicas under each field manager, and those made by the replica that
did not hold the Lease. Exit status 1 when a bound or the autoscaler's single-writer
rule is broken, 2 on an error.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from openmodel.kube.leadership import RETRY_PERIOD_SECONDS
from perf.runs import commit, remove_or_keep

from harness.failover import FailoverResult, run_failover
from harness.operator import AUTOSCALER_POLL_SECONDS
from harness.resilience import own_cluster


def broken_rules(res: FailoverResult) -> list[str]:
    """The bounds one failover broke: the takeover's, and the autoscaler's single writer
    (op-a wrote replicas after its SIGKILL, or op-b before it held the Lease)."""
    broken = []
    bound = res.lease_seconds + RETRY_PERIOD_SECONDS
    if res.takeover_seconds > bound:
        broken.append(f"takeover {res.takeover_seconds:.2f}s > {bound:.0f}s")
    a, b = res.autoscaler_writes["op-a"], res.autoscaler_writes["op-b"]
    if (a and max(a) >= res.killed_at) or (b and min(b) < res.acquired_at):
        broken.append("the autoscaler wrote replicas without the Lease")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.chaos_leader_failover",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    print(
        f"commit {commit()}; seed {args.seed}; autoscaler poll {AUTOSCALER_POLL_SECONDS}s; "
        f"Lease retry period {RETRY_PERIOD_SECONDS}s"
    )
    rng = random.Random(args.seed)
    results: list[FailoverResult] = []
    broken: list[str] = []
    for r in range(args.rounds):
        workdir = Path(tempfile.mkdtemp(prefix="openmodel-e2e-chaos-leader-"))
        try:
            with own_cluster(workdir) as cluster:
                res = run_failover(cluster, rng, RETRY_PERIOD_SECONDS)
        finally:
            remove_or_keep(workdir, args.keep)
        results.append(res)
        bound = res.lease_seconds + RETRY_PERIOD_SECONDS
        print(
            f"[{time.strftime('%H:%M:%S')}] round {r}: takeover {res.takeover_seconds:.2f}s"
            f" (bound {bound:.0f}s)\n{res.describe()}",
            flush=True,
        )
        broken += [f"round {r}: {problem}" for problem in broken_rules(res)]
    takeovers = [x.takeover_seconds for x in results]
    standby = [len(x.reconciler_writes_while_standby) for x in results]
    print(f"\n== {len(results)} failover(s) ==")
    print(f"  takeover after SIGKILL: {', '.join(f'{t:.2f}s' for t in takeovers)}")
    print(f"  spec.replicas writes by the replica without the Lease, per round: {standby}")
    if broken:
        print("result: BROKEN: " + "; ".join(broken))
        return 1
    print("result: every takeover within its bound; the autoscaler only wrote with the Lease")
    return 0


if __name__ == "__main__":
    sys.exit(main())
