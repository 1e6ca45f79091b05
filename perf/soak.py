"""Soak: the operator for `--minutes` with 100 ModelDeployments under random edits, deletes
and re-creates and an autoscaled load on simulated engines; then calm.

    .venv/bin/python -m perf.soak [--minutes 30] [--count 100] [--autoscaled 4]
        [--seed 5] [--calm-window 120] [--operator-path DIR] [--keep]
        [--kubeconfig PATH --namespace NAME]

Starts its own control plane (the e2e harness, audited kube-apiserver, KWOK node
pool, CRD; or uses --kubeconfig's cluster, without an audit log: no write is then seen
once calm) and the operator, serving the namespace alone, under a ServiceAccount of its
own (the e2e tests' platform config: autoscaler poll 1 s; production resync, 60 s).
`--count` ModelDeployments: `--autoscaled` of them autoscaled (1 H100 each, min 1, max
4) with a simulated vLLM on every Ready pod (harness.engine_fleet), the rest plain (2
A100 each, 0-2 replicas: some run, some wait Unschedulable). During the soak, once a second: an edit
(replicas or maxModelLen) of a random one (70 %), a delete (15 %) or the re-creation of
a deleted one under a NEW name (15 %: maps keyed by name must let the old one go); the
load on each autoscaled model changes every 30 s (0-6 clients on engines of 2 slots).

Every 10 s: the operator's RSS and its openmodel_internal_entries gauges (the sizes of
its maps; exposed when main.py calls `map_sizes.track_operator_maps`, else reported
missing). Then the load and the churn stop; once the world is right
(harness.resilience `world_problems`) and every autoscaled Deployment is back at
1 replica, the operator's writes are counted from the audit log for `--calm-window`
seconds.

Prints the RSS slope (least squares, MiB/hour) over the whole soak and over its second
half, each map's size at the start and the end of the churn against the number of
ModelDeployments, and the writes once calm. Exit status 1 when a target is missed (a
map grows while the ModelDeployments do not, or a write once calm), 2 on an error.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from perf.clusters import script_cluster
from perf.runs import commit, interrupt_on_signals, log, remove_or_keep

from harness import NotYet, delete_namespace, wait_for
from harness.audit import AuditedRequest
from harness.engine_fleet import EngineFleet, LoadGenerator
from harness.operator import OperatorProcess, autoscaled_small_md, start_operator
from harness.process import rss_bytes
from harness.rawapi import request
from harness.resilience import (
    MAX_MODEL_LENS,
    MD_PATH,
    REPLICAS,
    create_namespace,
    list_items,
    md_body,
    operator_identity,
    sa_user,
    wait_converged,
)

SAMPLE_SECONDS = 10.0
LOAD_PERIOD = 30.0
QUIET_SECONDS = 15.0


def scaled_body(namespace: str, name: str) -> dict[str, Any]:
    return autoscaled_small_md(
        namespace,
        name,
        minReplicas=1,
        maxReplicas=4,
        targetQueueDepth=1,
        scaleDownStabilizationSeconds=10,
    )


def plain_body(namespace: str, name: str, rng: random.Random) -> dict[str, Any]:
    body = md_body(name, namespace, rng)
    body["spec"]["gpu"]["type"] = "nvidia-a100-80gb"  # the H100s are the autoscaled ones'
    return body


@dataclasses.dataclass
class Sample:
    t: float  # seconds since the churn started
    rss: int
    live: int  # ModelDeployments that exist
    entries: dict[str, float]


def scrape_entries(op: OperatorProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"{op.metrics_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "openmodel_internal_entries":
            for s in family.samples:
                out[s.labels["map"]] = s.value
    return out


def slope_mib_per_hour(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time."""
    if len(samples) < 2:
        return float("nan")
    xs = [s.t / 3600 for s in samples]
    ys = [s.rss / 2**20 for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


@dataclasses.dataclass
class Churn:
    namespace: str
    rng: random.Random
    live: dict[str, dict[str, Any]]  # name -> body
    deleted: list[str] = dataclasses.field(default_factory=list)
    generation: int = 0
    counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def step(self, api: client.ApiClient) -> None:
        path = MD_PATH.format(ns=self.namespace)
        roll = self.rng.random()
        try:
            if roll < 0.15 and self.deleted:
                old = self.deleted.pop(self.rng.randrange(len(self.deleted)))
                self.generation += 1
                name = f"{old.split('-r')[0]}-r{self.generation}"
                body = self._body_like(old, name)
                request(api, "POST", path, body)
                self.live[name] = body
                self.counts["re-create"] += 1
            elif roll < 0.30 and len(self.live) > 1:
                name = self.rng.choice(sorted(self.live))
                request(api, "DELETE", f"{path}/{name}")
                self.deleted.append(name)
                self.live.pop(name)
                self.counts["delete"] += 1
            else:
                name = self.rng.choice(sorted(self.live))
                spec = self.live[name]["spec"]
                if spec.get("autoscaling") is not None or self.rng.random() < 0.5:
                    patch = {"spec": {"maxModelLen": self.rng.choice(MAX_MODEL_LENS)}}
                else:
                    patch = {"spec": {"replicas": self.rng.choice(REPLICAS)}}
                request(
                    api,
                    "PATCH",
                    f"{path}/{name}",
                    patch,
                    content_type="application/merge-patch+json",
                )
                self.counts["edit"] += 1
        except ApiException as e:
            self.counts[f"refused {e.status}"] += 1

    def _body_like(self, old: str, name: str) -> dict[str, Any]:
        if old.startswith("scaled"):
            return scaled_body(self.namespace, name)
        return plain_body(self.namespace, name, self.rng)


def run(args: argparse.Namespace, workdir: Path) -> bool:
    rng = random.Random(args.seed)
    ok = True
    namespace = args.namespace
    identity = f"{namespace}-operator"
    with script_cluster(workdir, args.kubeconfig) as cluster, contextlib.ExitStack() as stack:
        api = cluster.api
        log(f"{cluster.describe()} ({workdir})")
        kubeconfig = operator_identity(api, identity, workdir)
        create_namespace(api, namespace)
        if not cluster.own:
            # Not this script's cluster: its namespace goes once the operator has stopped.
            stack.callback(delete_namespace, api, namespace)
        env = {"OPENMODEL_RESYNC_SECONDS": "60", "OPENMODEL_NAMESPACES": namespace}
        if args.operator_path:
            env["PYTHONPATH"] = str(Path(args.operator_path).resolve())
        op = start_operator(kubeconfig, workdir, env, name="operator")
        fleets: dict[str, EngineFleet] = {}
        loads: dict[str, LoadGenerator] = {}
        budget = args.minutes * 60 + 1200
        try:
            live: dict[str, dict[str, Any]] = {}
            for i in range(args.autoscaled):
                live[f"scaled-{i}"] = scaled_body(namespace, f"scaled-{i}")
            for i in range(args.count - args.autoscaled):
                live[f"md-{i:03d}"] = plain_body(namespace, f"md-{i:03d}", rng)
            for body in live.values():
                request(api, "POST", MD_PATH.format(ns=namespace), body)
            took = wait_converged(api, [namespace], 300)
            log(f"{len(live)} ModelDeployments converged in {took:.1f}s")
            for i in range(args.autoscaled):
                # One fleet per base name: it serves the re-created ones too (same pods'
                # label only for the same name; a re-created one gets a fleet below).
                fleets[f"scaled-{i}"] = EngineFleet(
                    api, namespace, f"scaled-{i}", slots=2, service_time=0.3, max_seconds=budget
                ).start()
            churn = Churn(namespace, rng, live)
            samples: list[Sample] = []
            started = time.monotonic()
            end = started + args.minutes * 60
            next_sample = started
            next_load = started
            while time.monotonic() < end:
                if not op.alive():
                    raise RuntimeError(f"the operator exited:\n{op.log_tail()}")
                now = time.monotonic()
                if now >= next_sample:
                    samples.append(
                        Sample(
                            now - started,
                            rss_bytes(op.process.pid),
                            len(churn.live),
                            scrape_entries(op),
                        )
                    )
                    next_sample += SAMPLE_SECONDS
                if now >= next_load:
                    for name in [n for n in churn.live if n.startswith("scaled")]:
                        if name not in fleets:
                            fleets[name] = EngineFleet(
                                api,
                                namespace,
                                name,
                                slots=2,
                                service_time=0.3,
                                max_seconds=budget,
                            ).start()
                        if name in loads:
                            loads.pop(name).stop()
                        clients = rng.randint(0, 6)
                        if clients:
                            loads[name] = LoadGenerator(
                                fleets[name], clients=clients, max_seconds=budget
                            ).start()
                    next_load += LOAD_PERIOD
                churn.step(api)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            samples.append(
                Sample(
                    time.monotonic() - started,
                    rss_bytes(op.process.pid),
                    len(churn.live),
                    scrape_entries(op),
                )
            )
            log(f"churn over: {dict(churn.counts)}; stopping the load")
            for load in loads.values():
                load.stop()
            loads.clear()
            took = wait_converged(api, [namespace], 300)
            scaled = [n for n in churn.live if n.startswith("scaled")]

            def at_min() -> bool | NotYet:
                deps = {
                    d["metadata"]["name"]: d["spec"].get("replicas")
                    for d in list_items(api, "Deployment", namespace)
                }
                high = {n: deps.get(n) for n in scaled if deps.get(n) != 1}
                return not high or NotYet(high)

            wait_for(at_min, 300, "every autoscaled Deployment back at 1 replica", interval=1)
            took = wait_converged(api, [namespace], 300)
            log(f"converged, autoscaled at 1 replica ({took:.1f}s); waiting for quiet")
            # The autoscaler writes its status once more a poll after the last scale-down:
            # calm starts once the operator has written nothing for QUIET_SECONDS.
            quiet_started = time.monotonic()

            def quiet() -> bool | NotYet:
                writes = cluster.audit.writes(sa_user(identity))
                last = writes[-1].t if writes else 0.0
                return time.time() - last >= QUIET_SECONDS or NotYet(f"last write {last}")

            wait_for(quiet, 300, f"{QUIET_SECONDS:.0f}s without an operator write", interval=1)
            quiet_after = time.monotonic() - quiet_started
            log(f"calm: quiet after {quiet_after:.1f}s; counting writes for {args.calm_window}s")
            calm_from = time.time()
            wait_for(
                lambda: time.time() - calm_from >= args.calm_window or NotYet("window open"),
                args.calm_window + 30,
                "the calm window",
                interval=1,
            )
            time.sleep(1.0)  # the audit line of a request in flight at the window's end
            calm = [
                r
                for r in cluster.audit.writes(sa_user(identity), since=calm_from)
                if r.t < calm_from + args.calm_window
            ]
            final = Sample(
                time.monotonic() - started,
                rss_bytes(op.process.pid),
                len(churn.live),
                scrape_entries(op),
            )
        finally:
            for load in loads.values():
                load.stop()
            for fleet in fleets.values():
                fleet.stop()
            op.stop()

    ok &= report(args, samples, final, calm, churn, quiet_after)
    return ok


def report(
    args: argparse.Namespace,
    samples: list[Sample],
    final: Sample,
    calm: list[AuditedRequest],
    churn: Churn,
    quiet_after: float,
) -> bool:
    ok = True
    print(
        f"\n== soak: {args.minutes:g} min, {args.count} ModelDeployments "
        f"({args.autoscaled} autoscaled), seed {args.seed}; commit {commit()} =="
    )
    print(f"  churn: {dict(churn.counts)}")
    half = [s for s in samples if s.t >= samples[-1].t / 2]
    rss = [s.rss / 2**20 for s in samples]
    print(
        f"  operator RSS: start {rss[0]:.1f} MiB, end {rss[-1]:.1f} MiB, max {max(rss):.1f}"
        f" MiB, after calm {final.rss / 2**20:.1f} MiB ({len(samples)} samples, every"
        f" {SAMPLE_SECONDS:.0f}s)"
    )
    print(
        f"  RSS slope (least squares): whole soak {slope_mib_per_hour(samples):+.1f} MiB/hour,"
        f" second half {slope_mib_per_hour(half):+.1f} MiB/hour"
    )
    first, last = samples[0], samples[-1]
    if not first.entries:
        print(
            "  internal map sizes: NOT exposed (main.py does not call "
            "map_sizes.track_operator_maps)"
        )
    else:
        print(f"  internal map sizes (ModelDeployments: start {first.live}, end {last.live}):")
        print("    a map GROWS when its size at the end is above the largest it reached in")
        print("    the first half by more than 10 % + 5 while the ModelDeployments did not grow")
        print(f"    {'map':<34}{'start':>8}{'max 1st half':>14}{'max':>8}{'end':>8}{'calm':>8}")
        first_half = [s for s in samples if s.t < samples[-1].t / 2] or samples[:1]
        for name in sorted(set(first.entries) | set(last.entries)):
            values = [s.entries.get(name, 0.0) for s in samples]
            early = max(s.entries.get(name, 0.0) for s in first_half)
            start, end = first.entries.get(name, 0.0), last.entries.get(name, 0.0)
            grows = end > early * 1.1 + 5 and last.live <= max(s.live for s in first_half)
            ok &= not grows
            print(
                f"    {name:<34}{start:8.0f}{early:14.0f}{max(values):8.0f}{end:8.0f}"
                f"{final.entries.get(name, 0.0):8.0f}  {'GROWS' if grows else ''}"
            )
    by = collections.Counter(
        f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}" for r in calm
    )
    print(
        f"  operator writes in the {args.calm_window:.0f}s calm window (audit log): {len(calm)}"
        + (": " + ", ".join(f"{k} {n}" for k, n in by.most_common()) if calm else "")
    )
    ok &= not calm
    print(f"\nresult: {'every target met' if ok else 'a target was MISSED'}")
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--autoscaled", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--calm-window", type=float, default=120.0)
    parser.add_argument("--operator-path", help="an openmodel package to run (PYTHONPATH)")
    parser.add_argument("--kubeconfig", type=Path, help="a cluster already up, not a fresh one")
    parser.add_argument("--namespace", default="soak", help="the ModelDeployments' namespace")
    parser.add_argument("--keep", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-e2e-soak-"))
    code = 2
    try:
        code = 0 if run(args, workdir) else 1
    except KeyboardInterrupt:
        log("interrupted; everything this script started was stopped")
        code = 130
    except Exception as e:
        log(f"error: {type(e).__name__}: {e}")
        code = 2
    finally:
        remove_or_keep(workdir, args.keep or code != 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
