"""Passes that failed run again after a back-off, not only at the next resync.

kopf does not retry an `on.event` handler: a pass that fails because the API server is
away (a restart, a 5xx, a timeout) would otherwise wait for the periodic resync (60 s).
Here its object is due again after 1 s, doubling to 60 s while it keeps failing; a pass
that succeeds, by any path, clears it. Only the keys are kept, one entry per object.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ObjectKey = tuple[str, str]
FIRST_DELAY_SECONDS = 1.0
MOST_DELAY_SECONDS = 60.0
TICK_SECONDS = 0.5


@dataclass
class RetryQueue:
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _due: dict[ObjectKey, float] = field(default_factory=dict)
    _delay: dict[ObjectKey, float] = field(default_factory=dict)

    def failed(self, key: ObjectKey) -> float:
        """Schedule `key` again; returns the delay."""
        with self._lock:
            previous = self._delay.get(key)
            delay = (
                FIRST_DELAY_SECONDS if previous is None else min(MOST_DELAY_SECONDS, previous * 2)
            )
            self._delay[key] = delay
            self._due[key] = self.clock() + delay
            return delay

    def succeeded(self, key: ObjectKey) -> None:
        with self._lock:
            self._due.pop(key, None)
            self._delay.pop(key, None)

    forget = succeeded

    def take_due(self) -> list[ObjectKey]:
        """The keys whose time has come (they stay scheduled until they succeed)."""
        now = self.clock()
        with self._lock:
            due = [k for k, at in self._due.items() if at <= now]
            for key in due:
                del self._due[key]
            return due

    def __len__(self) -> int:
        with self._lock:
            return len(self._delay)


async def retry_forever(queue: RetryQueue, run: Callable[[str, str], object]) -> None:
    """Run each due key's pass (`run(namespace, name)`, in a thread)."""
    while True:
        await asyncio.sleep(TICK_SECONDS)
        for key in queue.take_due():
            try:
                await asyncio.to_thread(run, *key)
            except Exception as e:  # the API still away: later again
                delay = queue.failed(key)
                log.warning("retry of %s/%s failed (%s); again in %.0f s", *key, e, delay)
            else:
                queue.succeeded(key)
