"""A failed pass is added to the queue again after a back-off (controller/queue.py): 1 s
doubling to 60 s, in the line it was taken from, asked by "retry"; a pass of that key
that succeeds, whoever asked for it, clears the back-off."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from openmodel.controller import queue as queue_module
from openmodel.controller.queue import MOST_DELAY_SECONDS, Asker, Key, Line, PassQueue, Taken
from openmodel.controller.workers import work_forever


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_back_off_doubles_to_the_cap_and_success_clears() -> None:
    async def scenario() -> tuple[list[float], list[Taken]]:
        clock = Clock()
        queue = PassQueue(clock=clock)
        queue.add(("ns", "m"))
        delays: list[float] = []
        taken = [await queue.take()]
        for _ in range(8):
            delays.append(queue.failed(("ns", "m")))
            assert len(queue) == 0  # not before its time
            clock.now += delays[-1]
            taken.append(await asyncio.wait_for(queue.take(), timeout=5))
        queue.done(("ns", "m"))
        assert queue.retrying() == 0
        queue.add(("ns", "m"))
        await queue.take()
        assert queue.failed(("ns", "m")) == 1.0  # a new failure starts again at 1 s
        return delays, taken

    delays, taken = asyncio.run(scenario())
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert delays[-1] == MOST_DELAY_SECONDS
    assert taken == [(("ns", "m"), Line.SPEC, Asker.SPEC)] + 8 * [
        (("ns", "m"), Line.SPEC, Asker.RETRY)
    ]


def test_a_retry_waits_in_the_line_its_failed_pass_was_taken_from() -> None:
    async def scenario() -> list[Taken]:
        clock = Clock()
        queue = PassQueue(clock=clock)
        queue.add(("ns", "swept"), Line.SWEEP)
        queue.failed((await queue.take()).key)
        clock.now = 1.0
        queue.add(("ns", "edited"))
        queue.add(("ns", "rolling"), Line.CHILD)
        return [await queue.take() for _ in range(3)]

    assert asyncio.run(scenario()) == [
        (("ns", "edited"), Line.SPEC, Asker.SPEC),
        (("ns", "rolling"), Line.CHILD, Asker.CHILD),
        (("ns", "swept"), Line.SWEEP, Asker.RETRY),
    ]


def test_a_pass_asked_for_by_anyone_that_succeeds_clears_the_retry() -> None:
    async def scenario() -> list[Taken]:
        clock = Clock()
        queue = PassQueue(clock=clock)
        queue.add(("ns", "m"))
        queue.failed((await queue.take()).key)
        queue.add(("ns", "m"), Line.CHILD)  # an event before the retry is due
        by_event = await queue.take()
        queue.done(by_event.key)
        assert queue.retrying() == 0
        clock.now = 100.0  # long past the retry's time: nothing comes back
        queue.add(("ns", "other"), Line.SWEEP)
        return [by_event, await queue.take()]

    assert asyncio.run(scenario()) == [
        (("ns", "m"), Line.CHILD, Asker.CHILD),
        (("ns", "other"), Line.SWEEP, Asker.SWEEP),
    ]


def test_forget_drops_the_retry_and_its_back_off() -> None:
    async def scenario() -> int:
        clock = Clock()
        queue = PassQueue(clock=clock)
        queue.add(("ns", "m"))
        queue.failed((await queue.take()).key)
        queue.forget(("ns", "m"))
        clock.now = 100.0
        queue.add(("ns", "other"))
        assert await queue.take() == (("ns", "other"), Line.SPEC, Asker.SPEC)
        return len(queue) + queue.retrying()

    assert asyncio.run(scenario()) == 0


def test_a_retry_added_while_its_key_is_in_a_pass_waits_for_it() -> None:
    async def scenario() -> list[Taken]:
        clock = Clock()
        queue = PassQueue(clock=clock)
        queue.add(("ns", "m"))
        queue.failed((await queue.take()).key)
        queue.add(("ns", "m"))
        running = await queue.take()  # an event's pass, before the retry is due
        clock.now = 1.0
        queue.add(("ns", "n"), Line.SWEEP)
        other = await queue.take()  # the due retry is set aside: m is in its pass
        queue.failed(running.key)
        return [running, other, await queue.take()]

    assert asyncio.run(scenario()) == [
        (("ns", "m"), Line.SPEC, Asker.SPEC),
        (("ns", "n"), Line.SWEEP, Asker.SWEEP),
        (("ns", "m"), Line.SPEC, Asker.RETRY),
    ]


def test_the_workers_run_a_failed_key_again_until_it_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the real clock: a worker waiting on an empty queue wakes when a retry is due."""
    monkeypatch.setattr(queue_module, "FIRST_DELAY_SECONDS", 0.05)
    calls: list[Key] = []
    counted: list[tuple[str, str]] = []

    async def scenario() -> int:
        queue = PassQueue()
        twice = asyncio.Event()

        def run(key: Key) -> str:
            calls.append(key)
            if len(calls) == 1:
                raise ConnectionError("the API server is away")
            return "ok"

        def record(result: str, seconds: float, *, asked_by: str) -> None:
            counted.append((result, asked_by))
            if len(counted) == 2:
                twice.set()

        with ThreadPoolExecutor(1) as threads:
            worker = asyncio.create_task(work_forever(queue, run, threads, record))
            queue.add(("ns", "m"))
            await asyncio.wait_for(twice.wait(), timeout=10)
            worker.cancel()
        return queue.retrying()

    assert asyncio.run(scenario()) == 0
    assert calls == [("ns", "m"), ("ns", "m")]
    assert counted == [("error", "spec"), ("ok", "retry")]
