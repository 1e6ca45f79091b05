"""Probes as the kubelet runs them: httpGet, tcpSocket and exec, with their
period, thresholds, initial delay and timeout taken from the pod spec."""

from __future__ import annotations

import http.client
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

# The kubelet's defaults (k8s.io/api core/v1 Probe).
DEFAULT_PERIOD = 10
DEFAULT_TIMEOUT = 1
DEFAULT_FAILURES = 3


def resolve_port(port: Any, container: dict[str, Any]) -> int:
    """A probe port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"probe port {port!r} is not a port of container {container.get('name')}")


def run_probe(
    probe: dict[str, Any], container: dict[str, Any], pod_ip: str, pid: int | None
) -> tuple[bool, str]:
    """One probe attempt: (success, what was seen)."""
    timeout = float(probe.get("timeoutSeconds") or DEFAULT_TIMEOUT)
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = resolve_port(get.get("port"), container)
            conn = http.client.HTTPConnection(get.get("host") or pod_ip, port, timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                conn.request("GET", get.get("path") or "/", headers=headers)
                status = conn.getresponse().status
            finally:
                conn.close()
            return 200 <= status < 400, f"HTTP {status}"
        if "tcpSocket" in probe:
            port = resolve_port(probe["tcpSocket"].get("port"), container)
            with socket.create_connection((pod_ip, port), timeout=timeout):
                return True, "connected"
        if "exec" in probe:
            if pid is None:
                return False, "no process"
            result = subprocess.run(
                ["nsenter", "-t", str(pid), "-n", "-m", *probe["exec"]["command"]],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            return result.returncode == 0, f"exit {result.returncode}"
    except (OSError, http.client.HTTPException, subprocess.TimeoutExpired, ValueError) as e:
        return False, f"{type(e).__name__}: {e}"
    return False, "probe has no handler"


@dataclass
class ProbeState:
    """One probe's schedule and counters for one container run."""

    spec: dict[str, Any]
    started_at: float
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    last: str = ""

    def __post_init__(self) -> None:
        self.next_at = self.started_at + float(self.spec.get("initialDelaySeconds") or 0)

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or DEFAULT_PERIOD)

    @property
    def failure_threshold(self) -> int:
        return int(self.spec.get("failureThreshold") or DEFAULT_FAILURES)

    @property
    def success_threshold(self) -> int:
        return int(self.spec.get("successThreshold") or 1)

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, seen: str, now: float) -> None:
        self.next_at = now + self.period
        self.last = seen
        if ok:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0

    def passed(self) -> bool:
        return self.successes >= self.success_threshold

    def failed(self) -> bool:
        return self.failures >= self.failure_threshold
