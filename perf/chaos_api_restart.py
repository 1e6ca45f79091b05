"""Restart kube-apiserver, and separately etcd, while the operator runs and
ModelDeployments are being edited; measure the time to converge once the API is back.

    .venv/bin/python -m perf.chaos_api_restart [--seed 26] [--count 100] [--rounds 3]
        [--failed-edits 5] [--edits-after 20] [--deadline 300] [--keep]

Starts its own control plane (the e2e harness, audited kube-apiserver, KWOK node
pool, CRD) and the operator under a ServiceAccount of its own (production resync,
60 s). Creates `--count` ModelDeployments and waits until they converge. Then, per
round, for kube-apiserver and then etcd: an editor thread edits random
ModelDeployments (replicas, maxModelLen, gpu.type) every 0.1 s; the component is
stopped (SIGTERM) and kept down until `--failed-edits` edits have failed, started
again with the same command line, ports and data directory; once kube-apiserver
answers /readyz ("the API is back") and `--edits-after` more edits went through, the
editor stops and the script waits until the world is right (harness.resilience
`world_problems`: children, orphans, every edit in the Deployment, status against
the world). The operator must be the same process all along (no restart of its own).

Prints per outage: how long the component was down, how long kube-apiserver took to
be ready again, and the time to converge after the API was back and after the last
edit. Exit status 1 when an outage did not converge within `--deadline` or the
operator process changed, 2 on an error.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

from perf.runs import commit, interrupt_on_signals, log, remove_or_keep

from harness.operator import start_operator
from harness.resilience import (
    Editor,
    Outage,
    burst,
    create_namespace,
    operator_identity,
    own_cluster,
    run_outage,
    wait_converged,
)

NAMESPACE = "outage"
COMPONENTS = ("kube-apiserver", "etcd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.chaos_api_restart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="outages per component")
    parser.add_argument("--failed-edits", type=int, default=5)
    parser.add_argument("--edits-after", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    print(f"commit {commit()}; seed {args.seed}; {args.count} ModelDeployments")
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-e2e-chaos-api-"))
    outages: list[Outage] = []
    failed: str | None = None
    try:
        with own_cluster(workdir) as cluster:
            log(f"control plane, nodes and CRD up in {cluster.start_seconds:.1f}s ({workdir})")
            api = cluster.api
            kubeconfig = operator_identity(api, "outage-operator", workdir)
            create_namespace(api, NAMESPACE)
            op = start_operator(kubeconfig, workdir, {"OPENMODEL_RESYNC_SECONDS": "60"})
            try:
                for operation in burst(args.count, 0, NAMESPACE, rng):
                    operation.run(api, NAMESPACE)
                took = wait_converged(api, [NAMESPACE], args.deadline)
                log(f"{args.count} ModelDeployments converged in {took:.1f}s")
                names = [f"md-{i:03d}" for i in range(args.count)]
                editor = Editor(api, NAMESPACE, names, rng)
                for r in range(args.rounds):
                    for component in COMPONENTS:
                        try:
                            outage = run_outage(
                                cluster.plane,
                                api,
                                op,
                                editor,
                                component,
                                failed_edits=args.failed_edits,
                                edits_after=args.edits_after,
                                deadline=args.deadline,
                            )
                        except AssertionError as e:
                            failed = f"round {r} {component}: {e}"
                            raise
                        outages.append(outage)
                        log(
                            f"round {r} {component}: down {outage.down_seconds:.1f}s "
                            f"({outage.edits_failed} edits failed), API ready "
                            f"{outage.api_back_seconds:.1f}s after the start; converged "
                            f"{outage.converge_after_api_seconds:.1f}s after the API was back"
                            f" ({outage.converge_after_last_edit_seconds:.1f}s after the "
                            f"last edit); operator pid {outage.operator_pid} throughout"
                        )
            finally:
                op.stop()
    except AssertionError as e:
        failed = failed or str(e)
        log(f"FAILED: {failed}")
    except KeyboardInterrupt:
        log("interrupted; everything this script started was stopped")
        return 130
    finally:
        remove_or_keep(workdir, args.keep or bool(failed))

    return report(outages, args.count, failed)


def report(outages: list[Outage], count: int, failed: str | None) -> int:
    """The outages as a table, the converge times per component; 1 when one failed."""
    print(f"\n== {len(outages)} outage(s), {count} ModelDeployments ==")
    print("  component        down s  api ready s  converge after API s  after last edit s")
    for o in outages:
        print(
            f"  {o.component:<15}{o.down_seconds:7.1f}  {o.api_back_seconds:11.1f}"
            f"  {o.converge_after_api_seconds:20.1f}  {o.converge_after_last_edit_seconds:17.1f}"
        )
    for component in COMPONENTS:
        times = [o.converge_after_api_seconds for o in outages if o.component == component]
        if times:
            print(
                f"  {component}: converge after the API was back: median "
                f"{statistics.median(times):.1f}s, max {max(times):.1f}s"
            )
    if failed:
        print(f"\nresult: FAILED: {failed}")
        return 1
    print("\nresult: every outage converged, the operator never restarted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
