"""SIGKILL the operator at seeded random moments during bursts of ModelDeployment
creations and edits; after each restart, measure the time until the world is right.

    .venv/bin/python -m perf.chaos_operator_kill [--seed 13] [--rounds 10] [--count 100]
        [--edits N] [--kills 1] [--deadline 300] [--keep]
        [--kubeconfig PATH --namespace-prefix PREFIX]

Starts its own control plane (the e2e harness, kube-apiserver with an audit log, the
KWOK node pool, the CRD; or uses --kubeconfig's cluster, its operator then serving only
the PREFIX-* namespaces), then runs the operator as a process under a ServiceAccount of
its own. Each round, in a fresh namespace: a burst of `--count` creations and `--edits`
(default: as many) edits of replicas, maxModelLen or gpu.type, one request at a time,
shuffled by the seed; after the operation numbers the schedule names (printed before
anything runs), the operator is SIGKILLed and a new one started while the burst goes
on. Converged (harness.resilience `world_problems`): every ModelDeployment has
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
import statistics
import sys
import tempfile
from pathlib import Path

from perf.clusters import ScriptCluster, script_cluster
from perf.runs import commit, interrupt_on_signals, log, remove_or_keep

from harness.operator import ChildProcess, start_operator
from harness.resilience import (
    KillRound,
    Operation,
    burst,
    create_namespace,
    delete_namespace,
    kill_schedule,
    operator_identity,
    run_kill_round,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.chaos_operator_kill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--count", type=int, default=100, help="creations per round")
    parser.add_argument("--edits", type=int, help="edits per round (default: --count)")
    parser.add_argument("--kills", type=int, default=1, help="SIGKILLs per round")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds to converge")
    parser.add_argument("--kubeconfig", type=Path, help="a cluster already up, not a fresh one")
    parser.add_argument("--namespace-prefix", default="chaos", help="rounds in PREFIX-00, ...")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (all logs)")
    return parser.parse_args(argv)


def kill_rounds(
    cluster: ScriptCluster,
    workdir: Path,
    bursts: list[list[Operation]],
    schedule: list[list[int]],
    args: argparse.Namespace,
) -> tuple[list[KillRound], str | None]:
    """Every round; the rounds that converged, and what failed (None: nothing)."""
    api = cluster.api
    kubeconfig = operator_identity(api, f"{args.namespace_prefix}-operator", workdir)
    env = {"OPENMODEL_RESYNC_SECONDS": "60", "OPENMODEL_NAMESPACES": f"{args.namespace_prefix}-*"}
    operators: list[ChildProcess] = []

    def restart() -> ChildProcess:
        name = f"operator-{len(operators) + 1}"
        op = start_operator(kubeconfig, workdir, env, name=name)
        operators.append(op)
        return op

    results: list[KillRound] = []
    restart()
    try:
        for r, (ops, kills) in enumerate(zip(bursts, schedule, strict=True)):
            ns = f"{args.namespace_prefix}-{r:02d}"
            create_namespace(api, ns)
            round_ = KillRound(ns, len(ops), kills)
            try:
                run_kill_round(api, ops, round_, lambda: operators[-1], restart, args.deadline)
            except AssertionError as e:
                failed = f"round {r}: {e}"
                log(failed)
                return results, failed
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
    return results, None


def report(results: list[KillRound], rounds: int, failed: str | None) -> int:
    if results:
        converge = [r.converge_seconds for r in results]
        restarts = [s for r in results for s in r.restart_seconds]
        print(f"\n== {len(results)} round(s) converged of {rounds} ==")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    edits = args.count if args.edits is None else args.edits
    interrupt_on_signals()
    rng = random.Random(args.seed)
    bursts = [
        burst(args.count, edits, f"{args.namespace_prefix}-{r:02d}", rng)
        for r in range(args.rounds)
    ]
    schedule = kill_schedule(rng, args.rounds, args.kills, args.count + edits)
    print(f"commit {commit()}; seed {args.seed}; {args.rounds} rounds of {args.count} creations")
    print(f"and {edits} edits ({args.count + edits} operations), one at a time")
    for r, kills in enumerate(schedule):
        print(f"  round {r:2d}: SIGKILL after operation(s) {', '.join(map(str, kills))}")

    workdir = Path(tempfile.mkdtemp(prefix="openmodel-e2e-chaos-kill-"))
    results: list[KillRound] = []
    failed: str | None = None
    try:
        with script_cluster(workdir, args.kubeconfig) as cluster:
            log(f"{cluster.describe()} ({workdir})")
            results, failed = kill_rounds(cluster, workdir, bursts, schedule, args)
    except KeyboardInterrupt:
        log("interrupted; everything this script started was stopped")
        return 130
    finally:
        remove_or_keep(workdir, args.keep or bool(failed))
    return report(results, args.rounds, failed)


if __name__ == "__main__":
    sys.exit(main())
