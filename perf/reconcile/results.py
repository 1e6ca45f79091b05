"""What one count of bench_reconcile measured, and the statistics its report uses."""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

from .kubeio import MetricKey
from harness.audit import AuditedRequest


@dataclasses.dataclass
class Results:
    source: str = ""
    count: int = 0
    concurrency: int = 0
    plain_seconds: float = float("nan")
    same_seconds: float = float("nan")  # the same-writes floor
    operator_creates_seconds: float = float("nan")
    operator_deployments_seconds: float = float("nan")
    operator_seconds: float = float("nan")  # every Deployment + Service + observedGeneration
    operator_ready_seconds: float = float("nan")  # every status Ready
    controllers_ready_seconds: float = float("nan")  # every Deployment readyReplicas >= 1
    quiet_after: float = float("nan")
    quiet: bool = False
    window: float = 0.0
    metrics_delta: dict[MetricKey, float] = dataclasses.field(default_factory=dict)
    window_requests: list[AuditedRequest] = dataclasses.field(default_factory=list)
    converge_requests: list[AuditedRequest] = dataclasses.field(default_factory=list)
    plain_requests: list[AuditedRequest] = dataclasses.field(default_factory=list)
    same_requests: list[AuditedRequest] = dataclasses.field(default_factory=list)
    cpu: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    operator_rss: int = 0
    operator_peak_rss: int = 0
    operator_cpu_total: float = float("nan")
    operator_cpu_converge: float = float("nan")
    operator_log: Path | None = None
    workdir: Path | None = None
    load: list[str] = dataclasses.field(default_factory=list)
    machine_probe: float = float("nan")
    wall: dict[str, float] = dataclasses.field(default_factory=dict)
    calm: list[float] = dataclasses.field(default_factory=list)
    edits_empty: list[float] = dataclasses.field(default_factory=list)
    edits_loaded: list[float] = dataclasses.field(default_factory=list)
    nodes: int = 0
    profile: Path | None = None
    audited: bool = True  # False on a cluster without an audit log: no request counts

    def phase(self, name: str, cpu: dict[str, float], wall: float) -> None:
        self.cpu[name] = cpu
        self.wall[name] = wall


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p90(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
