"""Which ModelDeployments are due a pass, and the workers that run them.

kopf reads each watch as fast as the API server sends and keeps every event, decoded
whole, until that object's handler has returned. A handler that runs the pass itself
waits for a reconcile thread, which waits for the API server: during a burst of 1,000
creations about 6,000 decoded events (220 MiB) waited so (docs/benchmarks.md). Here the
event handlers only put the ModelDeployment's key in this queue and return, so kopf
lets go of each event once it is in the cache; `workers` tasks take keys and run one
pass each, in threads, reading the newest state from the cache. A key already waiting
is not queued twice: many events of one ModelDeployment become one pass.

Three lines, taken in order (`Line`): what a ModelDeployment's own event asks for (a
user's create or edit) goes first; what its children's events ask for (a Deployment's
status moving, a pod turning Ready) next; the resync's sweep over every cached
ModelDeployment last. So during a burst of 5,000 creations every engine Deployment is
created before the status of the first ones is brought up to date (that moves status
writes and Ready Events later; it does not remove work: docs/benchmarks.md); an edit
made while 5,000 converged ModelDeployments are swept is not queued behind them, and a
sweep during a burst adds next to nothing (its keys are waiting already). A waiting key
asked for by a line before its own moves up to it.

All of it runs on kopf's event loop (the handlers are async), so the queue needs no lock.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

Key = tuple[str, str]


class Line(enum.IntEnum):
    """Who asked for a pass; a lower line is taken first."""

    SPEC = 0  # the ModelDeployment's own event
    CHILD = 1  # an event of one of its children
    SWEEP = 2  # the resync (or an audit, or an election)


class WorkQueue:
    def __init__(self) -> None:
        self._lines: tuple[deque[Key], ...] = tuple(deque() for _ in Line)
        # Each waiting key and the line it waits in. An entry of a line whose key is not
        # (or no longer) waiting in that line is skipped by `take`.
        self._waiting: dict[Key, Line] = {}
        self._added = asyncio.Event()

    def add(self, key: Key, line: Line = Line.SPEC) -> None:
        waiting = self._waiting.get(key)
        if waiting is not None and waiting <= line:
            return
        self._waiting[key] = line
        self._lines[line].append(key)
        self._added.set()

    async def take(self) -> tuple[Key, Line]:
        """The next key due, and the line it waited in."""
        while True:
            for line, entries in zip(Line, self._lines, strict=True):
                while entries:
                    key = entries.popleft()
                    if self._waiting.get(key) is line:
                        del self._waiting[key]
                        return key, line
            self._added.clear()
            await self._added.wait()

    def __len__(self) -> int:
        return len(self._waiting)


async def work_forever(
    queue: WorkQueue, run: Callable[[str, str, bool], object], threads: ThreadPoolExecutor
) -> None:
    """One worker: take a key, run its pass in a thread (`run(namespace, name, swept)`,
    swept: from the sweep's line), next. A failing pass is logged (`run` records it
    for a retry) and does not end the worker."""
    loop = asyncio.get_running_loop()
    while True:
        (namespace, name), line = await queue.take()
        try:
            await loop.run_in_executor(threads, run, namespace, name, line is Line.SWEEP)
        except Exception:
            log.exception("pass of %s/%s failed", namespace, name)
