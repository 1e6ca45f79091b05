"""Benchmark the operator against two plain-client floors on its own fresh local control plane.

    .venv/bin/python -m perf.bench_reconcile [--count 200 | --counts 200,1000,5000]
        [--concurrency 8] [--rev REV] [--py-spy PATH [--py-spy-from N]] [--keep]
    .venv/bin/python -m perf.bench_reconcile --kubeconfig PATH [--audit-log PATH] ...

For each count, a fresh control plane (audited kube-apiserver; controller-manager and
scheduler with client rate limits raised, Endpoints controllers off: see
CONTROLLER_MANAGER_FLAGS) with KWOK h100 and a100 nodes sized for the count
(node_pool_for), so every pod is scheduled and marked Ready:

1.  plain:       a plain kubernetes client POSTs the Deployments and Services the
                 operator's own renderer (`make_plan(...).children`) gives for N
                 ModelDeployments, into bench-plain; wall time until every create has
                 returned. The namespace is deleted (and waited for) afterwards.
1b. same writes: the same client does the operator's necessary writes for N
                 ModelDeployments in bench-same: the create, server-side apply of the
                 Deployment and Service as rendered (owner reference included), one status
                 apply shaped like the operator's (build_status); no operator runs, and
                 the operator only ever serves bench-operator (OPENMODEL_NAMESPACES).
2a. edit baseline: the operator runs (as the e2e tests run it, production settings);
                 one ModelDeployment md-edit, 20 spec edits (spec.env; --edits), each timed from the
                 PATCH's response until a watch on its Deployment shows the change.
2.  operator:    N ModelDeployments (examples/llama70b-awq.yaml, md-000.., h100 and a100
                 cycled) are POSTed into bench-operator with the same client concurrency;
                 wall time from the first create until every one has its Deployment and
                 Service and status.observedGeneration == metadata.generation (followed
                 by watches, not polls), then until every status is Ready, and apart when every
                 Deployment's pod is Ready (the controllers' own lag).
3.  idle:        once the operator has made no write for a while, apiserver_request_total
                 is sampled at t0 and t0+60 s, and the audit log (Metadata level, watches
                 excluded) attributes every request to its client by user agent (operator
                 = kopf/* and OpenAPI-Generator/*; this script says openmodel-bench):
                 reads and writes per minute by client.
3b. edits:       the 20 edits again, with N ModelDeployments in the cluster.
4.  the operator process's RSS (and peak), CPU time.

Targets (PASS/MISS per count, then a summary table over every count): operator <= 1.3x
the same-writes floor and <= 2x the plain floor; 0 reads and 0 writes per idle minute
by the operator (its Lease aside); peak RSS <= 250 MiB at 1,000 and <= 1 GiB at 5,000;
single-edit median <= 1 s and not slower than the baseline by more than its noise. Also
kept from before: 0 writes/min by the operator on its resources. Everything is printed
first; the exit status is 1 when a target is missed, 2 on an error. Every wait has a
deadline (scaled with the count); the control plane and the operator are stopped on any
exit (Ctrl-C and SIGTERM included).

--rev REV runs the operator package as committed at REV (git archive of operator/openmodel,
first on the operator's PYTHONPATH) with `python -m openmodel`, beside the work tree's
renderer for the floors: the same benchmark, old and new operator side by side.
--kubeconfig runs every step on a cluster already up instead of a fresh one per count (its
nodes must fit the count; the requests are attributed only with --audit-log, the cluster's
kube-apiserver JSON audit log; the namespaces are <--namespace-prefix>-plain, -same and
-operator): the e2e suite's smoke test runs it so on the session's cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from perf.reconcile.report import report, summary
from perf.reconcile.results import Results
from perf.reconcile.steps import run
from perf.runs import REPO, interrupt_on_signals, note, remove_or_keep


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.bench_reconcile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=200, help="one count (see --counts)")
    parser.add_argument(
        "--counts", help="comma-separated counts, a fresh control plane each, e.g. 200,1000,5000"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="client threads, both steps")
    parser.add_argument(
        "--window", type=float, default=60.0, help="seconds between /metrics samples"
    )
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds without operator write")
    parser.add_argument("--quiet-deadline", type=float, default=180.0)
    parser.add_argument("--resync", type=float, default=60.0, help="OPENMODEL_RESYNC_SECONDS")
    parser.add_argument("--edits", type=int, default=20, help="single edits, steps 2a and 3b")
    parser.add_argument(
        "--rev", help="run the operator package as committed at this git revision (git archive)"
    )
    parser.add_argument(
        "--operator-path", help="directory holding an openmodel package to run instead (PYTHONPATH)"
    )
    parser.add_argument(
        "--calm",
        type=float,
        default=0.3,
        help="start a timed step once others use < this many cores",
    )
    parser.add_argument(
        "--calm-deadline", type=float, default=300.0, help="...waiting at most this"
    )
    parser.add_argument(
        "--calm-sample", type=float, default=5.0, help="...measured over samples this long"
    )
    parser.add_argument(
        "--probe-rounds", type=int, default=3, help="rounds of the machine-speed probe"
    )
    parser.add_argument(
        "--no-floors",
        dest="floors",
        action="store_false",
        help="skip both floors (their ratios are then not measured)",
    )
    parser.add_argument(
        "--platform-config",
        help="the operator's platform config (YAML text), e.g. 'operator: {apiQPS: 200}'; "
        "default: every default",
    )
    parser.add_argument("--py-spy", help="path to py-spy: profile the operator during step 2")
    parser.add_argument(
        "--py-spy-from", type=int, default=0, help="profile only at counts of at least this"
    )
    parser.add_argument(
        "--kubeconfig", help="run on this cluster, already up, instead of a fresh one per count"
    )
    parser.add_argument(
        "--audit-log", type=Path, help="with --kubeconfig: its kube-apiserver's JSON audit log"
    )
    parser.add_argument(
        "--namespace-prefix", default="bench", help="the namespaces' prefix (bench-plain, ...)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the workdir (all logs)")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> int:
    """Every count, each on a fresh control plane (or on --kubeconfig's), then the
    summary: 0 when every target is met, 1 when one is missed, 2 on an error."""
    counts = [int(c) for c in args.counts.split(",")] if args.counts else [args.count]
    if args.rev:
        # One commit for every count, even if the branch moves during the run.
        args.rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--verify", f"{args.rev}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-bench-reconcile-"))
    results: list[Results] = []
    code = 0
    ok = True
    try:
        for count in counts:
            res = Results()
            results.append(res)
            try:
                with contextlib.ExitStack() as stack:
                    run(args, count, workdir / f"n{count}", res, stack)
                    note("stopping the operator and the control plane")
            except KeyboardInterrupt:
                note("interrupted; everything this script started was stopped")
                return 130
            except Exception as e:
                note(f"error: {type(e).__name__}: {e}")
                code = 2
            ok &= _verdict(functools.partial(report, res), "report", code)
            if code:
                break
        ok &= _verdict(functools.partial(summary, results), "summary", code)
        print(f"\nresult over every count: {'every target met' if ok else 'a target was MISSED'}")
        return code or (0 if ok else 1)
    finally:
        remove_or_keep(workdir, args.keep or code != 0, say=note)


def _verdict(judge: Callable[[], bool], what: str, code: int) -> bool:
    """`judge()`: print a report and say whether its targets were met. After an error
    (`code` != 0) the results are partial and may not add up: a report that then fails
    is noted and counts as a miss; without an error its failure is a bug and raised."""
    try:
        return judge()
    except Exception as e:
        if code == 0:
            raise
        note(f"(partial {what} failed: {type(e).__name__}: {e})")
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
