"""Why a ModelDeployment's pods are not serving, in words a person can act on.

Pure functions of the pods the reconciler lists: the scheduler's reason for a pod it
cannot place, and the engine container that keeps failing (crash loop with its exit
code and the log line naming the error, image or config errors). `status` turns them
into the Degraded condition.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from openmodel.api import ROLE_LABEL
from openmodel.problems import Problem


def unschedulable_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The scheduler's own words for the first Pending pod it could not place; for a pod
    of a group (a replica across nodes), which one it is."""
    stuck = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Pending":
            continue
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                said = cond.get("message") or "no message from the scheduler"
                meta = pod.get("metadata") or {}
                role = (meta.get("labels") or {}).get(ROLE_LABEL)
                stuck.append(said if role is None else f"{role} pod {meta.get('name')}: {said}")
    if not stuck:
        return None
    return f"{len(stuck)} pod(s) cannot be scheduled: {stuck[0]}"


# Waiting reasons that no amount of waiting fixes: the pod spec or the image is wrong.
# (CrashLoopBackOff is not here: it is the pause between crashes, read from lastState.)
START_FAILURES = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "InvalidImageName",
    }
)
# The kubelet keeps up to 2048 bytes of log tail; one line of it is what a person needs
# in `kubectl describe`, and it keeps the condition message short.
LOG_LINE_LIMIT = 300


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= LOG_LINE_LIMIT else text[: LOG_LINE_LIMIT - 1] + "\u2026"


# A word ending in "error" or "exception": `error:`, `Value error,`, `ValueError:`,
# `ERROR` (a log level), `RuntimeException`. Not one inside a snake_case name or a URL
# (pydantic's `[type=value_error, ...]`, `errors.pydantic.dev`), which name no problem.
_ERROR_WORD = re.compile(r"(?<!\w)[a-z]*(?:error|exception)\b", re.IGNORECASE)
# Lines that point elsewhere instead of saying what went wrong: pydantic ends every
# ValidationError with the first.
_POINTER_LINE = re.compile(
    r"\s*(?:for further information visit\b|https?://\S+\s*$)", re.IGNORECASE
)


def _telling_log_line(terminated: Mapping[str, Any]) -> str | None:
    """The log line that says why the engine stopped. With terminationMessagePolicy
    FallbackToLogsOnError the kubelet puts the log's tail in `message`. Its last line is
    the error for an argparse refusal or a traceback, but not for a pydantic one (an
    engine's config validation): that ends with a link, the error some lines above. So:
    the last line that looks like an error and is not a link, else the last non-empty
    line."""
    lines = [ln for ln in str(terminated.get("message") or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR_WORD.search(ln) and not _POINTER_LINE.match(ln)]
    chosen = errors or lines
    return _clip(chosen[-1]) if chosen else None


def _exited(where: str, terminated: Mapping[str, Any], restarts: int) -> str:
    reason = terminated.get("reason")
    # "Error" is what every non-zero exit says; OOMKilled and the like say more.
    detail = f"{reason}, " if reason and reason != "Error" else ""
    text = f"{where} exited with code {terminated.get('exitCode')} ({detail}restarts: {restarts})"
    line = _telling_log_line(terminated)
    return text if line is None else f'{text}; last log line: "{line}"'


def _container_failure(pod_name: str, cs: Mapping[str, Any]) -> Problem | None:
    """Why this container cannot serve, when it is failing rather than starting."""
    if cs.get("ready"):
        return None
    where = f"pod {pod_name} container {cs.get('name')}"
    restarts = int(cs.get("restartCount") or 0)
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    # The current state first: it is what blocks the container now.
    if waiting.get("reason") in START_FAILURES:
        message = _clip(str(waiting.get("message") or "no message from the kubelet"))
        return Problem("EngineStartFailed", f"{where} cannot start: {waiting['reason']}: {message}")
    terminated = state.get("terminated") or {}
    if terminated.get("exitCode"):
        return Problem("EngineCrashLoop", _exited(where, terminated, restarts))
    last = (cs.get("lastState") or {}).get("terminated") or {}
    # An engine is a server: exiting at all is a failure. Some exit 0 when their engine
    # core dies, so a back-off after a clean exit counts as a crash loop too.
    backing_off = waiting.get("reason") == "CrashLoopBackOff"
    if last and restarts > 0 and (last.get("exitCode") or backing_off):
        return Problem("EngineCrashLoop", _exited(where, last, restarts))
    return None


def engine_failure(pods: Sequence[Mapping[str, Any]]) -> Problem | None:
    """The first engine container that keeps failing (crash loop, image or config
    error), quoting its exit code and the log line that names the error; None while all
    are fine or merely starting. Pods that are being deleted or have finished (an
    evicted pod lingers as Failed) are left out: the ReplicaSet has already replaced
    them."""
    failing: list[Problem] = []
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name") or "")):
        meta = pod.get("metadata") or {}
        st = pod.get("status") or {}
        if meta.get("deletionTimestamp") or st.get("phase") in ("Failed", "Succeeded"):
            continue
        for cs in st.get("containerStatuses") or []:
            found = _container_failure(str(meta.get("name")), cs)
            if found is not None:
                failing.append(found)
                break  # one per pod: the count is of pods
    if not failing:
        return None
    first = failing[0]
    return Problem(first.reason, f"{len(failing)} pod(s) failing: {first.message}")


def engine_failure_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """`engine_failure`'s message alone, the counterpart of `unschedulable_message`."""
    failure = engine_failure(pods)
    return None if failure is None else failure.message
