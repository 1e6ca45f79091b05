"""The operator's cache of config.json resolutions, by repo and revision (thread-safe).

Reconcile passes run on kopf's worker threads and only read it: `lookup` answers at
once (Pending the first time, which also queues the work) and remembers who asked, so
the resolver loop can ask for their passes again when the answer arrives. Failures are
retried with back-off (2 s doubling to `maxBackoffSeconds`); a failed entry keeps
answering Failed meanwhile, so the fallback (catalogue, or the stated count) applies.
Least recently used entries beyond `cacheEntries` are dropped.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from openmodel.api import ModelDeploymentSpec, requested_revision
from openmodel.config.model_resolver import ModelResolverConfig
from openmodel.model_resolver.state import Failed, ModelConfigState, ModelRef, Pending, Resolved
from openmodel.sizing.formats import implied_quantization

SKIP_FIT_CHECK_ANNOTATION = "openmodel.dev/skip-fit-check"
FIRST_RETRY_SECONDS = 2.0
Waiter = tuple[str, str]  # (namespace, name) of a ModelDeployment


def model_ref_for(
    spec: ModelDeploymentSpec, annotations: Mapping[str, Any] | None = None
) -> ModelRef | None:
    """The repo and revision whose config.json sizes this spec, or None when sizing does
    not need it: spec.modelInfo given, a pvc:// / s3:// / gs:// model (no Hub to ask),
    GGUF (no config.json), or the fit check skipped with a stated count."""
    if spec.model_info is not None or "://" in spec.model:
        return None
    if spec.quantization == "gguf" or implied_quantization(spec.model) == "gguf":
        return None
    skip = (annotations or {}).get(SKIP_FIT_CHECK_ANNOTATION) == "true"
    if skip and spec.gpu.count is not None:
        return None
    return ModelRef(spec.model, requested_revision(spec.args))


def backoff_seconds(attempts: int, ceiling: float) -> float:
    return float(min(ceiling, FIRST_RETRY_SECONDS * 2 ** max(0, attempts - 1)))


class ModelConfigStore:
    def __init__(self, settings: ModelResolverConfig) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._states: OrderedDict[ModelRef, ModelConfigState] = OrderedDict()
        self._waiters: dict[ModelRef, set[Waiter]] = {}
        self._retry_at: dict[ModelRef, float] = {}
        self._wake: Callable[[], object] | None = None

    def set_wake(self, wake: Callable[[], object]) -> None:
        """Called by the resolver loop: how to wake it when new work is queued."""
        with self._lock:
            self._wake = wake

    def lookup(self, ref: ModelRef, waiter: Waiter | None = None) -> ModelConfigState:
        with self._lock:
            state = self._states.get(ref)
            new = state is None
            if state is None:
                state = Pending(ref)
                self._states[ref] = state
                self._evict()
            else:
                self._states.move_to_end(ref)
            if waiter is not None and not isinstance(state, Resolved):
                self._waiters.setdefault(ref, set()).add(waiter)
            wake = self._wake if new else None
        if wake is not None:
            wake()
        return state

    def _evict(self) -> None:
        while len(self._states) > self.settings.cache_entries:
            old, _ = self._states.popitem(last=False)
            self._waiters.pop(old, None)
            self._retry_at.pop(old, None)

    def due(self, now: float) -> list[ModelRef]:
        """Pending refs, and failed ones whose back-off has passed."""
        with self._lock:
            return [
                ref
                for ref, state in self._states.items()
                if isinstance(state, Pending)
                or (isinstance(state, Failed) and self._retry_at.get(ref, 0.0) <= now)
            ]

    def seconds_until_next_retry(self, now: float) -> float | None:
        with self._lock:
            times = [
                t for ref, t in self._retry_at.items() if isinstance(self._states.get(ref), Failed)
            ]
        return max(0.0, min(times) - now) if times else None

    def attempts(self, ref: ModelRef) -> int:
        with self._lock:
            state = self._states.get(ref)
            return state.attempts if isinstance(state, Failed) else 0

    def record(self, ref: ModelRef, state: ModelConfigState, now: float) -> set[Waiter]:
        """Store an answer; returns the ModelDeployments to reconcile again."""
        with self._lock:
            if ref not in self._states:
                return set()  # evicted meanwhile
            self._states[ref] = state
            if isinstance(state, Failed):
                self._retry_at[ref] = now + backoff_seconds(
                    state.attempts, self.settings.max_backoff_seconds
                )
                return set(self._waiters.get(ref, set()))
            self._retry_at.pop(ref, None)
            return self._waiters.pop(ref, set())

    def forget_waiter(self, waiter: Waiter) -> None:
        with self._lock:
            for waiters in self._waiters.values():
                waiters.discard(waiter)
