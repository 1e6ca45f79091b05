"""Container lifecycle hooks as the kubelet runs them: ``preStop`` before the stop signal.

The hook runs whenever the node stops a container (pod deletion, a failed liveness or
startup probe, the node stopping) and its time counts against the grace period: the
stop signal goes when the hook ends, and a hook still running when the grace period is
over gets cut off with two more seconds for the process (the kubelet's one-off
extension). Handlers: ``sleep``, ``exec`` (in the container's network and mount
namespaces, as exec probes run) and ``httpGet``/``tcpSocket`` (to the pod's address).
``postStart`` is not run.
"""

from __future__ import annotations

import threading
from typing import Any

from .probes import run_probe

# What the kubelet adds when a preStop hook used up the grace period.
GRACE_EXTENSION = 2.0


def run_pre_stop(
    container: dict[str, Any], pod_ip: str, pid: int | None, timeout: float
) -> str | None:
    """Run the container's preStop hook, for at most ``timeout`` seconds; what went
    wrong (for a FailedPreStopHook event), or None."""
    hook = (container.get("lifecycle") or {}).get("preStop")
    if not hook or timeout <= 0:
        return None
    if "sleep" in hook:
        # The hook's own semantics: the container keeps serving while endpoints go.
        threading.Event().wait(min(float(hook["sleep"]["seconds"]), timeout))
        return None
    handler = {k: v for k, v in hook.items() if k in ("exec", "httpGet", "tcpSocket")}
    if not handler:
        return f"preStop handler {sorted(hook)} is not supported on a process node"
    ok, seen = run_probe({**handler, "timeoutSeconds": timeout}, container, pod_ip, pid)
    return None if ok else f"PreStopHook failed: {seen}"
