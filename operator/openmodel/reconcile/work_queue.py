"""Which ModelDeployments are due a pass, and the workers that run them.

kopf reads each watch as fast as the API server sends and keeps every event, decoded
whole, until that object's handler has returned. A handler that runs the pass itself
waits for a reconcile thread, which waits for the API server: during a burst of 1,000
creations about 6,000 decoded events (220 MiB) waited so (docs/benchmarks.md). Here the
event handlers only put the ModelDeployment's key in this queue and return, so kopf
lets go of each event once it is in the cache; `workers` tasks take keys and run one
pass each, in threads, reading the newest state from the cache. A key already waiting
is not queued twice: many events of one ModelDeployment become one pass.

Two lines: what an event asks for goes first; the resync's sweep over every cached
ModelDeployment waits behind it (`background`), so an edit made while 5,000 converged
ModelDeployments are swept is not queued behind them, and a sweep during a burst adds
next to nothing (its keys are waiting already). A waiting background key that an event
asks for moves to the front line.

All of it runs on kopf's event loop (the handlers are async), so the queue needs no lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

Key = tuple[str, str]


class WorkQueue:
    def __init__(self) -> None:
        self._urgent: deque[Key] = deque()
        self._background: deque[Key] = deque()
        # Each waiting key, and whether it waits in the front line. An entry of a line
        # whose key is not (or no longer) waiting in that line is skipped by `take`.
        self._waiting: dict[Key, bool] = {}
        self._added = asyncio.Event()

    def add(self, key: Key, *, background: bool = False) -> None:
        urgent = not background
        waiting = self._waiting.get(key)
        if waiting is not None and (waiting or not urgent):
            return
        self._waiting[key] = urgent
        (self._urgent if urgent else self._background).append(key)
        self._added.set()

    async def take(self) -> tuple[Key, bool]:
        """The next key due, and whether it came from the background line (the sweep)."""
        while True:
            for line, urgent in ((self._urgent, True), (self._background, False)):
                while line:
                    key = line.popleft()
                    if self._waiting.get(key) is urgent:
                        del self._waiting[key]
                        return key, not urgent
            self._added.clear()
            await self._added.wait()

    def __len__(self) -> int:
        return len(self._waiting)


async def work_forever(
    queue: WorkQueue, run: Callable[[str, str, bool], object], threads: ThreadPoolExecutor
) -> None:
    """One worker: take a key, run its pass in a thread (`run(namespace, name, swept)`,
    swept: from the background line), next. A failing pass is logged (`run` records it
    for a retry) and does not end the worker."""
    loop = asyncio.get_running_loop()
    while True:
        (namespace, name), swept = await queue.take()
        try:
            await loop.run_in_executor(threads, run, namespace, name, swept)
        except Exception:
            log.exception("pass of %s/%s failed", namespace, name)
