"""The workers: take a key from the queue, run its pass in a thread, count it, next.

`operator.workers` of them run at once, whoever asked for the pass (an event, the sweep,
a retry, the resolver), so that number is the one limit on passes in flight. Every pass
is counted the same way (`telemetry.record_reconcile`: its result, its duration, who
asked). A pass that raises is logged, added again after a back-off by the queue, and
does not end its worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from openmodel import telemetry
from openmodel.controller.queue import Asker, Key, PassQueue

log = logging.getLogger(__name__)

# A pass: run it for a key, answer its result ("ok" or "rejected"), or raise.
Pass = Callable[[Key], str]


class RecordPass(Protocol):
    def __call__(self, result: str, seconds: float, *, asked_by: str) -> None: ...


async def work_forever(
    queue: PassQueue,
    run: Pass,
    threads: ThreadPoolExecutor,
    record: RecordPass = telemetry.record_reconcile,
) -> None:
    """One worker."""
    loop = asyncio.get_running_loop()
    while True:
        key, _line, asker = await queue.take()
        started = time.monotonic()
        try:
            result = await loop.run_in_executor(threads, run, key)
        except Exception as e:
            delay = queue.failed(key)
            record("error", time.monotonic() - started, asked_by=asker.value)
            if asker is Asker.RETRY:  # the API still away: said once with its traceback
                log.warning("retry of %s/%s failed (%s); again in %.0f s", *key, e, delay)
            else:
                log.exception("pass of %s/%s failed; again in %.0f s", *key, delay)
            continue
        queue.done(key)
        record(result, time.monotonic() - started, asked_by=asker.value)
