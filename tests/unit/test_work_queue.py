"""The queue between kopf's event handlers and the reconcile workers
(reconcile/work_queue.py): a waiting key is queued once, a key taken can be queued
again, and a failing pass does not end its worker."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from openmodel.reconcile.work_queue import WorkQueue, work_forever


def test_many_events_of_one_key_wait_as_one_and_order_is_kept() -> None:
    async def scenario() -> list[tuple[str, str]]:
        queue = WorkQueue()
        for key in [("a", "m"), ("a", "n"), ("a", "m"), ("a", "m")]:
            queue.add(key)
        assert len(queue) == 2
        first = await queue.take()
        queue.add(first)  # changed again while its pass runs: due once more
        return [first, await queue.take(), await queue.take()]

    assert asyncio.run(scenario()) == [("a", "m"), ("a", "n"), ("a", "m")]


def test_a_failing_pass_is_logged_and_the_worker_goes_on() -> None:
    ran: list[tuple[str, str]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        both = asyncio.Event()

        def run(namespace: str, name: str) -> None:
            ran.append((namespace, name))
            if len(ran) == 2:
                loop.call_soon_threadsafe(both.set)
            if name == "bad":
                raise RuntimeError("API server away")

        queue = WorkQueue()
        with ThreadPoolExecutor(1) as threads:
            worker = asyncio.create_task(work_forever(queue, run, threads))
            queue.add(("a", "bad"))
            queue.add(("a", "good"))
            await asyncio.wait_for(both.wait(), timeout=10)
            assert not worker.done()
            worker.cancel()

    asyncio.run(scenario())
    assert ran == [("a", "bad"), ("a", "good")]
