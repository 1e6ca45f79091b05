"""A failed pass is due again after a back-off (reconcile/retry.py)."""

from __future__ import annotations

import asyncio

from openmodel.reconcile.retry import MOST_DELAY_SECONDS, RetryQueue, retry_forever


def test_back_off_doubles_to_the_cap_and_success_clears() -> None:
    now = [0.0]
    queue = RetryQueue(clock=lambda: now[0])
    delays = [queue.failed(("ns", "m")) for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert delays[-1] == MOST_DELAY_SECONDS
    assert queue.take_due() == []
    now[0] = 60.0
    assert queue.take_due() == [("ns", "m")]
    assert queue.take_due() == []  # taken once
    queue.succeeded(("ns", "m"))
    assert len(queue) == 0
    assert queue.failed(("ns", "m")) == 1.0  # a new failure starts again at 1 s


def test_the_loop_runs_a_due_key_until_it_succeeds() -> None:
    now = [0.0]
    queue = RetryQueue(clock=lambda: now[0])
    queue.failed(("ns", "m"))
    calls: list[tuple[str, str]] = []

    def run(namespace: str, name: str) -> None:
        calls.append((namespace, name))
        if len(calls) == 1:
            raise ConnectionError("the API server is away")

    async def drive() -> None:
        task = asyncio.create_task(retry_forever(queue, run))
        try:
            for step in range(1, 8):
                now[0] = step * 10.0  # every delay has passed
                while len(calls) < min(step, 2):
                    await asyncio.sleep(0.05)
                if len(queue) == 0:
                    break
        finally:
            task.cancel()

    asyncio.run(asyncio.wait_for(drive(), 20))
    assert calls == [("ns", "m"), ("ns", "m")]
    assert len(queue) == 0
