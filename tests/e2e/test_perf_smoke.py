"""Every benchmark and chaos script of `perf` at tiny counts, so that none can rot.

The scripts run as their documented commands (`python -m perf.<script>`), the ones that
need a cluster on the session's (`--kubeconfig`, in e2e-perf-* namespaces the session's
operator leaves alone, each script's operator serving its own alone), all at once: one
minute in all is the budget on two cores, so they overlap. Their figures mean nothing at
these counts and under this load; each must run to its report and exit 0 (every target
met) or 1 (a target missed), not 2 (an error) or a traceback.

Two scripts cannot run on the session's cluster within that budget: chaos_api_restart
restarts kube-apiserver and etcd (and the e2e suite runs that scenario, `run_outage`, in
test_api_restart.py on a cluster of its own), chaos_leader_failover needs an audited
control plane and a 15 s Lease per round (test_leader_failover.py runs `run_failover`).
For those two, and for bench_control_plane (whose figure is a cold start), the smoke
runs the script's own code on made-up or session inputs: its report and verdicts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from openmodel.kube.leadership import RETRY_PERIOD_SECONDS
from perf import bench_control_plane, chaos_api_restart, chaos_leader_failover

from harness import Cluster
from harness.failover import FailoverResult
from harness.resilience import Outage
from openmodel_fixtures import PERF_NAMESPACE_PREFIX

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 240  # each script: far above its share of the minute, so a hang fails


@dataclass
class Script:
    module: str
    process: subprocess.Popen[str]
    started: float

    def finish(self) -> tuple[int, str, float]:
        """Exit status, output (stdout then stderr) and seconds taken."""
        try:
            stdout, stderr = self.process.communicate(timeout=DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
            pytest.fail(f"perf.{self.module} still running after {DEADLINE_SECONDS}s:\n{stdout}")
        return self.process.returncode, f"{stdout}\n{stderr}", time.monotonic() - self.started


def start(module: str, *args: str) -> Script:
    process = subprocess.Popen(
        [sys.executable, "-m", f"perf.{module}", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Script(module, process, time.monotonic())


@pytest.fixture(scope="module")
def scripts(cluster: Cluster, crd: None) -> Iterator[dict[str, Script]]:
    """Every script started at once; each test waits for its own."""
    kubeconfig = str(cluster.kubeconfig)
    prefix = PERF_NAMESPACE_PREFIX
    started = {
        "bench_reconcile": start(
            "bench_reconcile",
            *("--kubeconfig", kubeconfig, "--namespace-prefix", f"{prefix}-rec"),
            *("--count", "2", "--concurrency", "2", "--edits", "2", "--probe-rounds", "1"),
            *("--window", "1", "--quiet", "0.5", "--quiet-deadline", "5"),
            *("--calm", "64", "--calm-sample", "0.1", "--calm-deadline", "0"),
        ),
        "chaos_operator_kill": start(
            "chaos_operator_kill",
            *("--kubeconfig", kubeconfig, "--namespace-prefix", f"{prefix}-kill"),
            *("--rounds", "1", "--count", "3", "--edits", "2", "--deadline", "90"),
        ),
        "soak": start(
            "soak",
            *("--kubeconfig", kubeconfig, "--namespace", f"{prefix}-soak"),
            *("--minutes", "0.05", "--count", "2", "--autoscaled", "1", "--calm-window", "1"),
        ),
        "bench_autoscale_latency": start(
            "bench_autoscale_latency",
            *("--kubeconfig", kubeconfig, "--namespace-prefix", f"{prefix}-latency"),
            *("--poll", "1", "--runs", "1", "--clients", "4", "--seed", "1"),
            *("--max-seconds", "120"),
        ),
        "bench_autoscaler": start(
            "bench_autoscaler",
            *("--pods", "3", "--cycles", "1", "--baseline-cycles", "1", "--hanging", "1"),
        ),
        "bench_gateway": start(
            "bench_gateway",
            *("--concurrency", "2", "--duration", "1", "--warmup", "0.5", "--engines", "1"),
            *("--clients", "1", "--tokens", "4", "--service-time", "0.05"),
        ),
        "bench_prefix_routing": start(
            "bench_prefix_routing",
            *("--engines", "2", "--conversations", "4", "--turns", "2", "--system-prompts", "2"),
            *("--system-words", "40", "--concurrency", "2", "--prefill-ms-per-token", "0.1"),
        ),
    }
    yield started
    for script in started.values():
        if script.process.poll() is None:
            script.process.kill()
            script.process.wait()


@pytest.mark.parametrize(
    ("module", "report_line"),
    [
        ("bench_reconcile", "== Scale summary =="),
        ("chaos_operator_kill", "result: every round converged"),
        ("soak", "operator writes in the 1s calm window"),
        ("bench_autoscale_latency", "spike -> spec.replicas changed"),
        ("bench_autoscaler", "micro-benchmarks:"),
        ("bench_gateway", "Added by the gateway"),
        ("bench_prefix_routing", "prefix vs least-load: hit rate"),
    ],
)
def test_script_runs_to_its_report(
    scripts: dict[str, Script], module: str, report_line: str
) -> None:
    code, output, seconds = scripts[module].finish()
    print(f"perf.{module}: exit {code} after {seconds:.1f}s")
    assert code in (0, 1), f"perf.{module} exited {code}:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    assert report_line in output, output[-4000:]


def test_chaos_api_restart_reports_its_outages(capsys: pytest.CaptureFixture[str]) -> None:
    outage = Outage("etcd", operator_pid=1, down_seconds=2.0, api_back_seconds=1.0)
    outage.converge_after_api_seconds, outage.converge_after_last_edit_seconds = 3.0, 2.5
    assert chaos_api_restart.report([outage], 3, failed=None) == 0
    assert chaos_api_restart.report([outage], 3, failed="round 0 etcd: not converged") == 1
    out = capsys.readouterr().out
    assert "etcd: converge after the API was back: median 3.0s" in out
    assert chaos_api_restart.parse_args(["--count", "3"]).count == 3


def test_chaos_leader_failover_judges_a_takeover() -> None:
    def result(acquired_at: float, op_a_writes: list[float]) -> FailoverResult:
        return FailoverResult(
            lease_seconds=15,
            first_holder="op-a",
            new_holder="op-b",
            last_renew_at=99.0,
            killed_at=100.0,
            acquired_at=acquired_at,
            autoscaler_writes={"op-a": op_a_writes, "op-b": [acquired_at + 1]},
            reconciler_writes={"op-a": [], "op-b": []},
            reconciler_writes_while_standby=[],
        )

    assert chaos_leader_failover.broken_rules(result(110.0, [90.0])) == []
    bound = 15 + RETRY_PERIOD_SECONDS  # the Lease, then at most one retry period
    assert chaos_leader_failover.broken_rules(result(120.0, [90.0])) == [
        f"takeover 20.00s > {bound:.0f}s"
    ]
    assert chaos_leader_failover.broken_rules(result(110.0, [101.0])) == [
        "the autoscaler wrote replicas without the Lease"
    ]


def test_bench_control_plane_reads_each_components_memory(cluster: Cluster) -> None:
    if cluster.control_plane is None:
        pytest.skip("the session's cluster is not a local control plane")
    rss = bench_control_plane.component_rss(cluster.control_plane)
    assert set(rss) >= {"etcd", "kube-apiserver"}, rss
    assert all(value > 0 for value in rss.values()), rss
