"""Which ModelDeployments are due a pass, and the workers that run them.

kopf reads each watch as fast as the API server sends and keeps every event, decoded
whole, until that object's handler has returned. A handler that runs the pass itself
waits for a reconcile thread, which waits for the API server: during a burst of 1,000
creations about 6,000 decoded events (220 MiB) waited so (docs/benchmarks.md). Here the
event handlers only put the ModelDeployment's key in this queue and return, so kopf
lets go of each event once it is in the cache; `workers` tasks take keys and run one
pass each, in threads, reading the newest state from the cache. A key already waiting
is not queued twice: many events of one ModelDeployment become one pass.

All of it runs on kopf's event loop (the handlers are async), so the queue needs no lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

Key = tuple[str, str]


class WorkQueue:
    def __init__(self) -> None:
        self._keys: asyncio.Queue[Key] = asyncio.Queue()
        self._waiting: set[Key] = set()

    def add(self, key: Key) -> None:
        if key in self._waiting:
            return
        self._waiting.add(key)
        self._keys.put_nowait(key)

    async def take(self) -> Key:
        key = await self._keys.get()
        self._waiting.discard(key)
        return key

    def __len__(self) -> int:
        return len(self._waiting)


async def work_forever(
    queue: WorkQueue, run: Callable[[str, str], object], threads: ThreadPoolExecutor
) -> None:
    """One worker: take a key, run its pass in a thread, next. A failing pass is logged
    (`run` records it for a retry) and does not end the worker."""
    loop = asyncio.get_running_loop()
    while True:
        namespace, name = await queue.take()
        try:
            await loop.run_in_executor(threads, run, namespace, name)
        except Exception:
            log.exception("pass of %s/%s failed", namespace, name)
