"""SIGKILL the operator at seeded random moments during bursts of ModelDeployment
creations and edits; after each restart, measure the time until the world is right.

    .venv/bin/python hack/chaos_operator_kill.py [--seed 13] [--rounds 10] [--count 100]
        [--edits N] [--kills 1] [--deadline 300] [--keep]

Starts its own control plane (tests/e2e harness, kube-apiserver with an audit log, the
KWOK node pool, the CRD), then runs the operator as a process under a ServiceAccount of
its own. Each round, in a fresh namespace: a burst of `--count` creations and `--edits`
(default: as many) edits of replicas, maxModelLen or gpu.type, one request at a time,
shuffled by the seed; after the operation numbers the schedule names (printed before
anything runs), the operator is SIGKILLed and a new one started while the burst goes
on. Converged (tests/e2e/resilience.py `world_problems`): every ModelDeployment has
exactly one Deployment and one Service it owns, no child without its owner, every edit
is in the Deployment, observedGeneration == generation, and Ready / Progressing /
Degraded agree with the Deployment's rollout and the pods' scheduling. The round's
namespace is deleted before the next round.

Prints the schedule, then per round: burst time, restart time, converge time (from the
burst's last operation). Exit status 1 when a round did not converge within
`--deadline`, 2 on an error. Production resync (60 s).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from resilience import (  # noqa: E402
    KillRound,
    burst,
    create_namespace,
    delete_namespace,
    kill_schedule,
    operator_identity,
    own_cluster,
    run_kill_round,
)

from openmodel_fixtures import ChildProcess, start_operator  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "operator/openmodel"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.stdout.strip() + (" (operator/openmodel with uncommitted changes)" if dirty else "")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--count", type=int, default=100, help="creations per round")
    parser.add_argument("--edits", type=int, help="edits per round (default: --count)")
    parser.add_argument("--kills", type=int, default=1, help="SIGKILLs per round")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds to converge")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (all logs)")
    args = parser.parse_args()
    edits = args.count if args.edits is None else args.edits
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)

    rng = random.Random(args.seed)
    bursts = [burst(args.count, edits, f"chaos-{r:02d}", rng) for r in range(args.rounds)]
    schedule = kill_schedule(rng, args.rounds, args.kills, args.count + edits)
    print(f"commit {commit()}; seed {args.seed}; {args.rounds} rounds of {args.count} creations")
    print(f"and {edits} edits ({args.count + edits} operations), one at a time")
    for r, kills in enumerate(schedule):
        print(f"  round {r:2d}: SIGKILL after operation(s) {', '.join(map(str, kills))}")

    workdir = Path(tempfile.mkdtemp(prefix="openmodel-e2e-chaos-kill-"))
    results: list[KillRound] = []
    failed: str | None = None
    try:
        with own_cluster(workdir) as cluster:
            log(f"control plane, nodes and CRD up in {cluster.start_seconds:.1f}s ({workdir})")
            api = cluster.api
            kubeconfig = operator_identity(api, "chaos-operator", workdir)
            env = {"OPENMODEL_RESYNC_SECONDS": "60"}
            started = [0]
            operators: list[ChildProcess] = []

            def restart() -> ChildProcess:
                started[0] += 1
                op = start_operator(kubeconfig, workdir, env, name=f"operator-{started[0]}")
                operators.append(op)
                return op

            restart()
            try:
                for r, (ops, kills) in enumerate(zip(bursts, schedule, strict=True)):
                    ns = f"chaos-{r:02d}"
                    create_namespace(api, ns)
                    round_ = KillRound(ns, len(ops), kills)
                    try:
                        run_kill_round(
                            api, ops, round_, lambda: operators[-1], restart, args.deadline
                        )
                    except AssertionError as e:
                        failed = f"round {r}: {e}"
                        log(failed)
                        break
                    results.append(round_)
                    log(
                        f"round {r:2d}: burst {round_.burst_seconds:5.1f}s, operator up again "
                        f"in {', '.join(f'{s:.1f}s' for s in round_.restart_seconds)}, "
                        f"converged {round_.converge_seconds:5.1f}s after the burst"
                    )
                    delete_namespace(api, ns)
            finally:
                for op in operators:
                    op.stop()
    except KeyboardInterrupt:
        log("interrupted; everything this script started was stopped")
        return 130
    finally:
        if args.keep or failed:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if results:
        converge = [r.converge_seconds for r in results]
        restarts = [s for r in results for s in r.restart_seconds]
        print(f"\n== {len(results)} round(s) converged of {args.rounds} ==")
        print("  round  burst s  converge s (after the burst's last operation)")
        for r, res in enumerate(results):
            print(f"  {r:5d}  {res.burst_seconds:7.1f}  {res.converge_seconds:10.1f}")
        print(
            f"  converge: median {statistics.median(converge):.1f}s, max {max(converge):.1f}s;"
            f" operator restart to live: median {statistics.median(restarts):.1f}s"
        )
    if failed:
        print(f"\nresult: NOT converged: {failed}")
        return 1
    print("\nresult: every round converged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
