"""What one pod must load and unload, with a back-off per refused adapter.

Pure: the declared adapters (name -> path), what the pod's engine reports loaded, and
the failures seen so far. A refused load is retried after 2 s, then 4, 8 ... up to
60 s, and at once when its path changes: an engine that keeps refusing is asked a few
times a minute, never in a hot loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

BACKOFF_FIRST = 2.0
BACKOFF_MAX = 60.0

# (namespace, ModelDeployment, pod, adapter)
FailureKey = tuple[str, str, str, str]


@dataclass(frozen=True)
class Failure:
    path: str
    message: str
    attempts: int
    retry_at: float


@dataclass
class FailureLog:
    failures: dict[FailureKey, Failure] = field(default_factory=dict)

    def record(self, key: FailureKey, path: str, message: str, now: float) -> Failure:
        before = self.failures.get(key)
        attempts = 1 if before is None or before.path != path else before.attempts + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempts - 1))
        failure = Failure(path, message, attempts, now + delay)
        self.failures[key] = failure
        return failure

    def clear(self, key: FailureKey) -> None:
        self.failures.pop(key, None)

    def may_try(self, key: FailureKey, path: str, now: float) -> bool:
        before = self.failures.get(key)
        return before is None or before.path != path or now >= before.retry_at

    def last_error(self, namespace: str, name: str, adapter: str) -> str | None:
        errors = [
            f.message
            for (ns, md, _pod, a), f in sorted(self.failures.items())
            if (ns, md, a) == (namespace, name, adapter)
        ]
        return errors[-1] if errors else None

    def forget_pods_except(self, namespace: str, name: str, pods: set[str]) -> None:
        for key in [k for k in self.failures if k[:2] == (namespace, name) and k[2] not in pods]:
            del self.failures[key]


@dataclass(frozen=True)
class PodActions:
    load: tuple[tuple[str, str], ...]  # (name, path)
    unload: tuple[str, ...]


def pod_actions(
    declared: Mapping[str, str],
    loaded: frozenset[str],
    key_prefix: tuple[str, str, str],
    failures: FailureLog,
    now: float,
) -> PodActions:
    """Load what is declared and missing (unless backing off), unload what is loaded and
    no longer declared."""
    load = tuple(
        (name, path)
        for name, path in sorted(declared.items())
        if name not in loaded and failures.may_try((*key_prefix, name), path, now)
    )
    unload = tuple(sorted(loaded - declared.keys()))
    return PodActions(load=load, unload=unload)
