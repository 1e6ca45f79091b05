"""Where a weights download stands, read from its Job, the Job's pods and the newest
progress line of the running pod's log: `status.cache` and, when it failed, why.

Pure: the reconciler reads those objects (the Job from its watch cache; the pods and
the log line with one request each, only while the Job has not finished) and passes them
in. The downloader (`download.py`) prints a JSON progress line every few seconds and ends
with a JSON result line, which the kubelet copies into the container's termination
message; its exit code names a cause no retry can fix (`render.PERMANENT_EXIT_CODES`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openmodel.weights.render import (
    DOWNLOAD_CONTAINER,
    EXIT_INCOMPLETE,
    EXIT_NOT_FOUND,
    EXIT_OUT_OF_SPACE,
    EXIT_UNAUTHORIZED,
    CachePlan,
)

PENDING = "Pending"
DOWNLOADING = "Downloading"
READY = "Ready"
FAILED = "Failed"
# The condition reason while the engine waits for its weights (not a fault).
DOWNLOADING_WEIGHTS = "DownloadingWeights"
FAILURE_REASONS = {
    EXIT_UNAUTHORIZED: "DownloadUnauthorized",
    EXIT_NOT_FOUND: "DownloadNotFound",
    EXIT_OUT_OF_SPACE: "DownloadOutOfSpace",
    EXIT_INCOMPLETE: "CacheIncomplete",
}
DOWNLOAD_FAILED = "DownloadFailed"
DOWNLOAD_TIMEOUT = "DownloadTimeout"
MESSAGE_MAX = 300


@dataclass(frozen=True)
class CacheState:
    phase: str
    claim_name: str
    job: str | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    revision: str | None = None
    reason: str | None = None
    message: str | None = None

    @property
    def progress(self) -> str:
        """What `kubectl get md` shows in its Cache column."""
        if self.phase == DOWNLOADING and self.bytes_total:
            done = self.bytes_done or 0
            return f"Downloading {100 * done // self.bytes_total}% of {_size(self.bytes_total)}"
        if self.phase == FAILED and self.reason:
            return f"Failed: {self.reason}"
        return self.phase

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": self.phase,
            "claimName": self.claim_name,
            "progress": self.progress,
        }
        for key, value in (
            ("job", self.job),
            ("bytesDone", self.bytes_done),
            ("bytesTotal", self.bytes_total),
            ("revision", self.revision),
            ("reason", self.reason),
            ("message", self.message),
        ):
            if value is not None:
                out[key] = value
        return out


def _size(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def job_condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def needs_pods(job: Mapping[str, Any] | None, previous: Any, job_name: str | None) -> bool:
    """Whether a pass must read the Job's pods: while it runs, when it failed, and once
    after it completed (its result goes into status and is kept from there on)."""
    if job is None:
        return False
    if job_condition(job, "Complete") is None:
        return True
    return not (
        isinstance(previous, Mapping)
        and previous.get("job") == job_name
        and previous.get("phase") == READY
    )


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == DOWNLOAD_CONTAINER:
            state = status.get("state") or {}
            return state.get("terminated") or (status.get("lastState") or {}).get("terminated")
    return None


def _created(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def last_json_line(text: str | None) -> dict[str, Any] | None:
    """The last line of `text` that is a JSON object (the downloader's own lines)."""
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _failure(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], name: str
) -> tuple[str, str]:
    """(reason, message) of a failed Job: the cause the newest failed pod's exit code names,
    with the downloader's last line."""
    cond = job_condition(job, "Failed") or {}
    failed = [(pod, t) for pod in pods if (t := _terminated(pod)) and t.get("exitCode")]
    failed.sort(key=lambda item: _created(item[0]))
    if cond.get("reason") == "DeadlineExceeded":
        return DOWNLOAD_TIMEOUT, f"download Job {name} ran out of time: {cond.get('message', '')}"
    if not failed:
        return DOWNLOAD_FAILED, f"download Job {name} failed: {cond.get('message', '')}".strip()
    terminated = failed[-1][1]
    reason = FAILURE_REASONS.get(int(terminated.get("exitCode") or 0), DOWNLOAD_FAILED)
    said = terminated.get("message")
    result = last_json_line(said)
    line = str(result.get("message")) if result and result.get("message") else _last_line(said)
    message = f"download Job {name} failed: {line}" if line else f"download Job {name} failed"
    return reason, message[:MESSAGE_MAX]


def _result(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    for pod in sorted(pods, key=_created, reverse=True):
        terminated = _terminated(pod)
        if terminated is not None and terminated.get("exitCode") == 0:
            return last_json_line(terminated.get("message"))
    return None


def _running(pods: Sequence[Mapping[str, Any]]) -> bool:
    return any((pod.get("status") or {}).get("phase") == "Running" for pod in pods)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def observe(
    plan: CachePlan,
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]] = (),
    progress_line: str | None = None,
    previous: Any = None,
) -> CacheState:
    """The state of the plan's cache. `previous` is the stored status.cache: a finished
    download's result is kept from it instead of reading the pods on every pass."""
    name = plan.job_name
    if plan.download is None or name is None:
        return CacheState(READY, plan.claim_name)
    if job is None:
        return CacheState(PENDING, plan.claim_name, job=name)
    if job_condition(job, "Complete") is not None:
        result = _result(pods)
        if result is None and isinstance(previous, Mapping) and previous.get("job") == name:
            result = {"revision": previous.get("revision"), "bytes": previous.get("bytesTotal")}
        result = result or {}
        total = _int(result.get("bytes"))
        revision = result.get("revision")
        return CacheState(
            READY,
            plan.claim_name,
            job=name,
            bytes_done=total,
            bytes_total=total,
            revision=revision if isinstance(revision, str) else None,
        )
    if job_condition(job, "Failed") is not None:
        reason, message = _failure(job, pods, name)
        return CacheState(FAILED, plan.claim_name, job=name, reason=reason, message=message)
    if not _running(pods):
        return CacheState(PENDING, plan.claim_name, job=name)
    progress = last_json_line(progress_line) or {}
    revision = progress.get("revision")
    return CacheState(
        DOWNLOADING,
        plan.claim_name,
        job=name,
        bytes_done=_int(progress.get("bytesDone")),
        bytes_total=_int(progress.get("bytesTotal")),
        revision=revision if isinstance(revision, str) else None,
    )


def running_pod(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The newest running pod of the Job, whose log holds the progress line."""
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if not running:
        return None
    return str(max(running, key=_created)["metadata"]["name"])
