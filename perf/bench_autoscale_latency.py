"""Autoscaler reaction time: from a load spike to a new Deployment `spec.replicas`.

Starts its own local cluster (the e2e harness: real control plane + KWOK GPU nodes; or
uses --kubeconfig's), installs the CRD, then for each poll interval P (``--poll``,
default 1 and 5 s) starts the operator with ``autoscaler.pollSeconds: P`` (its own
process per P, serving its own namespace alone, named after --namespace-prefix),
creates an autoscaled ModelDeployment (min 1, max 4, targetQueueDepth 1,
scaleDownStabilizationSeconds 2) and runs a simulated vLLM engine on every Ready pod
(harness.engine_fleet). Then, ``--runs`` times:

  1. wait until idle at 1 replica (one engine, nothing waiting, one pod, scraped since),
     then until a chosen phase of the poll cycle has passed since the operator's last
     scrape: stratified random phases, one in each 1/runs of the cycle (``--seed``);
  2. spike: ``--clients`` clients at once on one engine of 2 slots (8 -> 6 waiting,
     far above the target of 1);
  3. t0 = the instant the simulator's waiting count first goes above 0, stamped inside
     the simulator (its ``EngineStats.waiting`` setter, this process only);
     t1 = the instant a watch on the Deployment delivers the changed ``spec.replicas``;
     latency = t1 - t0, both ``time.monotonic()`` of this process;
  4. stop the load; the autoscaler goes back to 1 replica after the 2 s window.

Each run also shows where the time went, from the simulator's /metrics requests (the
operator's scrapes, stamped as they are served): "poll wait" is t0 -> the first scrape
that saw the queue, "act" is that scrape -> t1 (decide, write, watch delivery).

Target: median latency <= P + 1 s. References: the HPA syncs every 15 s
(--horizontal-pod-autoscaler-sync-period) and KEDA polls every 30 s by default
(pollingInterval), so their worst case is >= 15 s / 30 s before metric pipeline delays.
Exit status: 0 when every P meets the target, 1 when one misses it (after printing
everything), 2 on an error. Everything is bounded: ``--max-seconds`` for the whole script
(SIGALRM), a deadline on every wait; the fleet, the operator and the cluster are stopped
on every exit path (error, timeout, Ctrl-C, SIGTERM).

    .venv/bin/python -m perf.bench_autoscale_latency [--poll 1 --poll 5] [--runs 5]
        [--clients 8] [--seed N] [--max-seconds 900] [--keep-workdir]
        [--kubeconfig PATH --namespace-prefix PREFIX]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from perf.openmodel_engines import EngineStats, render_vllm, simulator_server
from perf.runs import note, remove_or_keep

from harness import (
    NotYet,
    create_namespace,
    delete_namespace,
    describe_namespace,
    start_local_cluster,
    wait_for,
)
from harness.engine_fleet import EngineFleet, LoadGenerator
from harness.k8s import as_object, name_of, node_ready
from harness.kubeconfig import api_client_for
from harness.operator import (
    GROUP,
    PLURAL,
    SMALL_MODEL_SPEC,
    VERSION,
    OperatorProcess,
    install_crd,
    load_example,
    start_operator,
)

NAME = "spike"
MIN_REPLICAS, MAX_REPLICAS, TARGET = 1, 4, 1
DOWN_WINDOW = 2  # scaleDownStabilizationSeconds: back to 1 replica quickly between runs
SLOTS, SERVICE_TIME = 2, 0.3
HPA_SYNC_SECONDS, KEDA_POLL_SECONDS = 15, 30


class BenchTimeout(Exception):
    """--max-seconds passed."""


# --- instrumentation of the simulators run by this process ------------------------------


class Probe:
    """Stamps, from inside the simulators (they run in the fleet's thread): the first
    time a waiting count goes above 0 once armed, and every /metrics request served."""

    def __init__(self) -> None:
        self.armed = False
        self.first_waiting: float | None = None
        self.scrapes: deque[tuple[float, int]] = deque(maxlen=500)  # (time, waiting seen)

    def arm(self) -> None:
        self.first_waiting = None
        self.armed = True

    def disarm(self) -> None:
        self.armed = False


PROBE = Probe()


class StampedStats(EngineStats):
    """EngineStats whose `waiting` reports its first rise above 0 to PROBE."""

    @property
    def waiting(self) -> int:
        return int(self.__dict__.get("_waiting", 0))

    @waiting.setter
    def waiting(self, value: int) -> None:
        self.__dict__["_waiting"] = value
        if value > 0 and PROBE.armed and PROBE.first_waiting is None:
            PROBE.first_waiting = time.monotonic()


_render_vllm = render_vllm


def _stamped_render_vllm(stats: EngineStats, model: str) -> str:
    PROBE.scrapes.append((time.monotonic(), stats.waiting))
    return _render_vllm(stats, model)


def instrument_simulators() -> None:
    """Every simulator started by this process from now on reports to PROBE."""
    setattr(simulator_server, "EngineStats", StampedStats)  # noqa: B010
    setattr(simulator_server, "render_vllm", _stamped_render_vllm)  # noqa: B010


# --- the Deployment's replicas, as a watch delivers them -------------------------------


def replicas_of(deployment: client.V1Deployment) -> int:
    """spec.replicas (the API server defaults it to 1)."""
    spec = deployment.spec
    return 1 if spec is None or spec.replicas is None else spec.replicas


def resource_version_of(deployment: client.V1Deployment) -> str | None:
    return deployment.metadata.resource_version if deployment.metadata else None


@dataclass
class ReplicaWatch:
    """A thread watching one Deployment; records (arrival time, spec.replicas) changes."""

    api: client.ApiClient
    namespace: str
    name: str
    max_seconds: float
    changes: list[tuple[float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ReplicaWatch:
        apps = client.AppsV1Api(self.api)
        dep = apps.read_namespaced_deployment(self.name, self.namespace)
        self._record(replicas_of(dep))
        self._thread = threading.Thread(
            target=self._run, args=(resource_version_of(dep),), daemon=True
        )
        self._thread.start()
        return self

    def _record(self, replicas: int) -> None:
        now = time.monotonic()
        with self._cond:
            if not self.changes or self.changes[-1][1] != replicas:
                self.changes.append((now, replicas))
                self._cond.notify_all()

    def _run(self, resource_version: str | None) -> None:
        apps = client.AppsV1Api(self.api)
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if resource_version is None:  # expired: start again from a fresh read
                    dep = apps.read_namespaced_deployment(self.name, self.namespace)
                    self._record(replicas_of(dep))
                    resource_version = resource_version_of(dep)
                stream = watch.Watch().stream(
                    apps.list_namespaced_deployment,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=resource_version,
                    timeout_seconds=5,  # short, so that stop() is seen within 5 s
                    _request_timeout=15,
                )
                for event in stream:
                    if event["type"] == "ERROR":
                        resource_version = None
                        break
                    obj = event["object"]
                    resource_version = obj.metadata.resource_version
                    if event["type"] != "DELETED":
                        self._record(int(obj.spec.replicas))
                    if self._stop.is_set():
                        break
            except ApiException as e:
                if e.status == 410:
                    resource_version = None
                    continue
                self.errors.append(f"{e.status} {e.reason}")
                self._stop.wait(0.5)
            except Exception as e:  # e.g. the connection reset: watch again
                self.errors.append(repr(e))
                self._stop.wait(0.5)

    def mark(self) -> int:
        with self._cond:
            return len(self.changes)

    def current(self) -> int:
        with self._cond:
            return self.changes[-1][1]

    def wait_change(self, since: int, baseline: int, timeout: float) -> tuple[float, int] | None:
        """The first recorded value != baseline after index `since`, or None at timeout."""

        def found() -> tuple[float, int] | None:
            return next((c for c in self.changes[since:] if c[1] != baseline), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            return found()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


# --- one poll interval -----------------------------------------------------------------


@dataclass
class Run:
    latency: float | None  # None: no change of replicas before the deadline
    replicas: tuple[int, int]
    poll_wait: float | None = None
    act: float | None = None
    idle_scrape_gap: float | None = None
    queue_seen: int | None = None  # waiting, at the first scrape that saw the spike
    note: str = ""  # why there was no change, when there was none


@dataclass
class PollResult:
    poll: float
    runs: list[Run]
    scrape_period: float | None
    operator_log: Path

    @property
    def latencies(self) -> list[float]:
        return [r.latency if r.latency is not None else float("inf") for r in self.runs]

    @property
    def target(self) -> float:
        return self.poll + 1.0

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def ok(self) -> bool:
        return self.median <= self.target


def spike_md(namespace: str) -> dict[str, Any]:
    return load_example(
        "llama70b-awq.yaml",
        namespace,
        **copy.deepcopy(SMALL_MODEL_SPEC),
        autoscaling={
            "minReplicas": MIN_REPLICAS,
            "maxReplicas": MAX_REPLICAS,
            "targetQueueDepth": TARGET,
            "scaleDownStabilizationSeconds": DOWN_WINDOW,
        },
    ) | {"metadata": {"name": NAME, "namespace": namespace}}


def live_pods(api: client.ApiClient, namespace: str) -> int:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"openmodel.dev/model-deployment={NAME}"
    )
    return len(pods.items)


def wait_idle(
    api: client.ApiClient, namespace: str, fleet: EngineFleet, replicas: ReplicaWatch, poll: float
) -> None:
    since: list[float] = []

    def idle() -> bool | NotYet:
        state = (replicas.current(), len(fleet.urls()), fleet.total_waiting())
        if state != (MIN_REPLICAS, 1, 0):
            since.clear()
            return NotYet(f"replicas, engines, waiting = {state}")
        pods = live_pods(api, namespace)
        if pods != 1:
            since.clear()
            return NotYet(f"{pods} pods")
        since[:] = since or [time.monotonic()]
        # ... and the operator has scraped the idle engine since: it is polling it.
        scraped = any(t > since[0] and w == 0 for t, w in list(PROBE.scrapes)[-5:])
        return scraped or NotYet("no scrape of the idle engine yet")

    def what() -> str:
        errors = "; ".join(fleet.errors[-5:]) or "none"
        watcher = fleet._watcher
        if watcher.done():  # the fleet no longer follows the pods
            cause = None if watcher.cancelled() else watcher.exception()
            errors += f"; the fleet's pod watcher ended: {cause!r}"
        return (
            f"idle at 1 replica with one engine\n{describe_namespace(api, namespace)}\n"
            f"engines {sorted(fleet.handles)}, fleet errors: {errors}\n"
            f"{last_scrape()}; {autoscaler_state(api, namespace)}; {nodes_not_ready(api)}"
        )

    wait_for(idle, 60 + 4 * poll, what, interval=0.1)


def scrape_period(times: list[float]) -> float | None:
    """The median time between autoscaler cycles, from scrape times (one cycle scrapes
    every pod within a few ms: scrapes closer than 0.2 s are one cycle)."""
    ordered = sorted(times)
    starts = [t for prev, t in itertools.pairwise([-1e9, *ordered]) if t - prev > 0.2]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    return statistics.median(gaps) if gaps else None


def one_spike(
    api: client.ApiClient, fleet: EngineFleet, replicas: ReplicaWatch, poll: float, clients: int
) -> Run:
    mark = replicas.mark()
    before = replicas.current()
    deadline = 3 * poll + 15
    PROBE.arm()
    load = LoadGenerator(fleet, clients=clients, max_seconds=deadline + 10).start()
    try:
        wait_for(
            lambda: PROBE.first_waiting is not None, 10, "the simulator's queue", interval=0.005
        )
        t0 = PROBE.first_waiting
        assert t0 is not None
        change = replicas.wait_change(mark, before, deadline)
        # Under load still: what the operator decided last, when it did not scale.
        state = (
            ""
            if change is not None
            else f"{autoscaler_state(api, fleet.namespace)}; {last_scrape()}; "
            f"{nodes_not_ready(api)}\n{describe_namespace(api, fleet.namespace)}"
        )
    finally:
        PROBE.disarm()
        load.stop()
    scrapes = list(PROBE.scrapes)
    before_spike = [t for t, _ in scrapes if t < t0]
    seen = next(((t, w) for t, w in scrapes if t >= t0 and w > 0), None)
    run = Run(
        latency=None if change is None else change[0] - t0,
        replicas=(before, before if change is None else change[1]),
    )
    if seen is not None:
        run.poll_wait, run.queue_seen = seen[0] - t0, seen[1]
        if change is not None:
            run.act = change[0] - seen[0]
    if before_spike:
        run.idle_scrape_gap = t0 - before_spike[-1]
    if change is None:
        after = [(round(t - t0, 2), w) for t, w in scrapes if t >= t0]
        run.note = f"scrapes after the spike (s, waiting): {after[:12]}; {state}"
    return run


def last_scrape() -> str:
    """Is the operator's loop still scraping? (None at all: it never scraped an engine.)"""
    scrapes = list(PROBE.scrapes)
    if not scrapes:
        return "no operator scrape recorded"
    return f"last operator scrape {time.monotonic() - scrapes[-1][0]:.1f}s ago"


def nodes_not_ready(api: client.ApiClient) -> str:
    nodes = client.CoreV1Api(api).list_node().items
    bad = [name_of(n) for n in nodes if not node_ready(n)]
    return f"nodes not Ready: {bad or 'none'} of {len(nodes)}"


def autoscaler_state(api: client.ApiClient, namespace: str) -> str:
    """What the operator last wrote in the ModelDeployment's status."""
    try:
        md = as_object(
            client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, NAME
            )
        )
    except ApiException as e:
        return f"status unreadable: {e.status}"
    status = md.get("status") or {}
    active = [c for c in status.get("conditions") or [] if c.get("type") == "ScalingActive"]
    return f"status.autoscaler {status.get('autoscaler')}; ScalingActive {active}"


def measure_poll(
    kubeconfig: Path,
    namespace_prefix: str,
    api: client.ApiClient,
    workdir: Path,
    poll: float,
    runs: int,
    clients: int,
    budget: float,
    rng: random.Random,
    stack: contextlib.ExitStack,
) -> PollResult:
    label = f"p{poll:g}".replace(".", "-")
    namespace = create_namespace(api, f"{namespace_prefix}-{label}")
    stack.callback(delete_namespace, api, namespace)
    config_path = workdir / f"latency-{label}-config.yaml"
    config_path.write_text(yaml.safe_dump({"autoscaler": {"pollSeconds": poll}}))
    operator: OperatorProcess = start_operator(
        kubeconfig,
        workdir,
        {"OPENMODEL_CONFIG": str(config_path), "OPENMODEL_NAMESPACES": namespace},
        name=f"operator-latency-{label}",
    )
    stack.callback(operator.stop)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, spike_md(namespace)
    )
    fleet = EngineFleet(
        api, namespace, NAME, slots=SLOTS, service_time=SERVICE_TIME, max_seconds=budget
    ).start()
    stack.callback(fleet.stop)
    wait_for(lambda: len(fleet.urls()) == 1 or NotYet(fleet.urls()), 90, "the first engine")
    watch_api = api_client_for(kubeconfig)
    stack.callback(watch_api.close)
    replicas = ReplicaWatch(watch_api, namespace, NAME, max_seconds=budget).start()
    stack.callback(replicas.stop)

    PROBE.scrapes.clear()
    # Stratified phases: run k spikes at a random point of the k-th 1/runs of the poll
    # cycle (in shuffled order), so that few runs still cover the whole cycle evenly.
    phases = [(k + rng.random()) / runs for k in range(runs)]
    rng.shuffle(phases)
    results = []
    print(f"\nP = {poll:g} s (operator log: {operator.log_path})", flush=True)
    for index, phase in enumerate(phases):
        wait_idle(api, namespace, fleet, replicas, poll)
        sleep_to_phase(phase, poll)
        if not operator.alive():
            raise RuntimeError(f"the operator exited:\n{operator.log_tail()}")
        run = one_spike(api, fleet, replicas, poll, clients)
        results.append(run)
        print(f"  run {index + 1}: {describe(run)}", flush=True)
    period = scrape_period([t for t, _ in PROBE.scrapes])
    return PollResult(poll, results, period, operator.log_path)


def sleep_to_phase(phase: float, poll: float) -> None:
    """Sleep until `phase` (0..1) of a poll cycle has passed since the operator's last
    scrape, the cycles' clock as seen from the engine (a cycle scrapes a few ms after it
    starts)."""
    last = PROBE.scrapes[-1][0]
    at = last + phase * poll
    while at < time.monotonic() + 0.01:
        at += poll
    time.sleep(at - time.monotonic())


def seconds(value: float | None) -> str:
    return "   -   " if value is None else f"{value:6.3f}s"


def describe(run: Run) -> str:
    if run.latency is None:
        return f"NO SCALE within the deadline (replicas stayed {run.replicas[0]}): {run.note}"
    return (
        f"{seconds(run.latency)}  replicas {run.replicas[0]} -> {run.replicas[1]}  "
        f"(poll wait {seconds(run.poll_wait)}, queue seen {run.queue_seen}, "
        f"act {seconds(run.act)}; "
        f"previous scrape {seconds(run.idle_scrape_gap)} before the spike)"
    )


def report(results: list[PollResult]) -> None:
    print("\nspike -> spec.replicas changed (watch), per poll interval P:")
    for r in results:
        verdict = "meets" if r.ok else "MISSES"
        acts = [x.act for x in r.runs if x.act is not None]
        act = seconds(statistics.median(acts)).strip() if acts else "-"
        print(
            f"  P = {r.poll:g} s: median {r.median:.3f} s, max {max(r.latencies):.3f} s "
            f"over {len(r.runs)} runs -> {verdict} the target <= P + 1 s = {r.target:g} s"
        )
        print(
            f"           measured poll period {seconds(r.scrape_period).strip()}, "
            f"act (scrape -> write seen) median {act}"
        )
        failed = sum(x.latency is None for x in r.runs)
        if failed:
            print(f"           {failed} of {len(r.runs)} runs did NOT scale within the deadline")
    print(
        f"  references: HPA syncs every {HPA_SYNC_SECONDS} s (worst case >= {HPA_SYNC_SECONDS} s"
        f" + metrics pipeline), KEDA polls every {KEDA_POLL_SECONDS} s by default (worst case"
        f" >= {KEDA_POLL_SECONDS} s)"
    )
    for r in results:
        worst = max(r.latencies)
        if worst == float("inf"):
            continue
        print(
            f"  P = {r.poll:g} s: max {worst:.2f} s is {HPA_SYNC_SECONDS / worst:.1f}x below "
            f"HPA's {HPA_SYNC_SECONDS} s and {KEDA_POLL_SECONDS / worst:.1f}x below KEDA's "
            f"{KEDA_POLL_SECONDS} s"
        )


@contextlib.contextmanager
def bounded(max_seconds: float) -> Iterator[None]:
    """SIGALRM after max_seconds and SIGTERM both raise in the main thread, so every
    `finally` runs; during the final cleanup Ctrl-C is ignored (each step is bounded)."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise BenchTimeout(f"--max-seconds {max_seconds:g} passed")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous: dict[int, Any] = {
        signal.SIGALRM: signal.signal(signal.SIGALRM, on_alarm),
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
        # Also when started in the background, where a shell may have SIGINT ignored.
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
    }
    signal.setitimer(signal.ITIMER_REAL, max_seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cleanup(stack: contextlib.ExitStack) -> None:
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stack.close()
    finally:
        signal.signal(signal.SIGINT, old)


def run_all(args: argparse.Namespace, workdir: Path, started: float) -> list[PollResult]:
    results: list[PollResult] = []
    rng = random.Random(args.seed)
    stack = contextlib.ExitStack()
    try:
        if args.kubeconfig:
            kubeconfig = args.kubeconfig
            print(f"on the cluster of {kubeconfig}", flush=True)
        else:
            cluster = start_local_cluster(workdir / "cluster")
            stack.callback(cluster.stop)
            kubeconfig = cluster.kubeconfig
            print(f"cluster up in {time.monotonic() - started:.1f}s", flush=True)
        api = api_client_for(kubeconfig)
        stack.callback(api.close)
        install_crd(api)
        for poll in args.poll:
            inner = contextlib.ExitStack()
            try:
                remaining = args.max_seconds - (time.monotonic() - started)
                results.append(
                    measure_poll(
                        kubeconfig,
                        args.namespace_prefix,
                        api,
                        workdir,
                        poll,
                        args.runs,
                        args.clients,
                        remaining,
                        rng,
                        inner,
                    )
                )
            finally:
                cleanup(inner)
    finally:
        cleanup(stack)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.bench_autoscale_latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--poll", type=float, action="append", help="autoscaler.pollSeconds (repeatable; 1 and 5)"
    )
    parser.add_argument("--runs", type=int, default=5, help="spikes per poll interval")
    parser.add_argument("--clients", type=int, default=8, help="clients in a spike")
    parser.add_argument("--seed", type=int, help="seed of the spike phases (default: random)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="whole-script bound")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs even on success")
    parser.add_argument("--kubeconfig", type=Path, help="a cluster already up, not a fresh one")
    parser.add_argument(
        "--namespace-prefix", default="bench-latency", help="namespaces PREFIX-p<P>-<random>"
    )
    args = parser.parse_args(argv)
    args.poll = args.poll or [1.0, 5.0]
    args.seed = random.randrange(10**6) if args.seed is None else args.seed
    if any(p <= 0 for p in args.poll) or args.runs < 1 or args.clients <= SLOTS + TARGET:
        parser.error(f"--poll > 0, --runs >= 1, --clients > {SLOTS + TARGET} (a queue > target)")

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-bench-latency-"))
    instrument_simulators()
    print(
        f"{len(args.poll)} poll interval(s) x {args.runs} spikes of {args.clients} clients on "
        f"1 engine of {SLOTS} slots; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs; --seed {args.seed}; files in {workdir}",
        flush=True,
    )
    code = 2
    try:
        with bounded(args.max_seconds):
            results = run_all(args, workdir, started)
        report(results)
        code = 0 if all(r.ok for r in results) else 1
        print(
            f"\ndone in {time.monotonic() - started:.0f}s, load average "
            f"{os.getloadavg()[0]:.1f}; exit {code}"
        )
        return code
    except (BenchTimeout, KeyboardInterrupt) as e:
        print(f"\nstopped: {str(e) or type(e).__name__}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        remove_or_keep(workdir, code != 0 or args.keep_workdir, say=note)


if __name__ == "__main__":
    sys.exit(main())
