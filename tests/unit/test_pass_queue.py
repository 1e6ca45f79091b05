"""The one queue into a pass (controller/queue.py) and its workers (controller/workers.py):
a waiting key is queued once, a key in a pass is never handed out again until it is done
(and then runs once more if it was added meanwhile), events go before the resync's sweep,
every pass is counted with who asked, and a failing pass does not end its worker."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from openmodel.config import PlatformConfig
from openmodel.controller.queue import Asker, Key, Line, PassQueue, Taken
from openmodel.controller.workers import work_forever
from openmodel.reconcile.reconciler import Reconciler
from openmodel.reconcile.resync import queue_all


def test_many_events_of_one_key_wait_as_one_and_order_is_kept() -> None:
    async def scenario() -> list[Taken]:
        queue = PassQueue()
        for key in [("a", "m"), ("a", "n"), ("a", "m"), ("a", "m")]:
            queue.add(key)
        assert len(queue) == 2
        first = await queue.take()
        queue.done(first.key)
        queue.add(first.key)  # changed again after its pass: due once more
        return [first, await queue.take(), await queue.take()]

    assert asyncio.run(scenario()) == [
        (("a", "m"), Line.SPEC, Asker.SPEC),
        (("a", "n"), Line.SPEC, Asker.SPEC),
        (("a", "m"), Line.SPEC, Asker.SPEC),
    ]


def test_a_key_in_a_pass_is_not_handed_out_again_until_it_is_done() -> None:
    """client-go's dirty/processing rule: added during its pass, a key is set aside and
    waits again (once, in the best line asked) only when that pass ends."""

    async def scenario() -> list[Taken]:
        queue = PassQueue()
        queue.add(("a", "m"))
        running = await queue.take()
        queue.add(("a", "m"), Line.SWEEP)
        queue.add(("a", "m"), Line.CHILD)  # the better line wins
        queue.add(("a", "m"), Line.SWEEP)
        queue.add(("a", "n"))
        assert len(queue) == 1  # only n waits: m is in its pass
        other = await queue.take()  # m was added first, yet n is handed out
        queue.done(running.key)
        assert len(queue) == 1
        queue.done(other.key)
        again = await queue.take()
        queue.done(again.key)
        assert len(queue) == 0
        return [running, other, again]

    assert asyncio.run(scenario()) == [
        (("a", "m"), Line.SPEC, Asker.SPEC),
        (("a", "n"), Line.SPEC, Asker.SPEC),
        (("a", "m"), Line.CHILD, Asker.CHILD),
    ]


def test_workers_never_run_one_key_twice_at_once() -> None:
    """Four workers, one key added again and again while its pass runs: the passes of
    that key never overlap, and the adds made during a pass give exactly one more."""
    events: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = PassQueue()
        in_pass = asyncio.Event()
        release = asyncio.Event()
        finished: list[int] = []
        all_done = asyncio.Event()

        def run(key: Key) -> str:
            events.append("start")
            loop.call_soon_threadsafe(in_pass.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
            events.append("end")
            finished.append(1)
            if len(finished) == 2:
                loop.call_soon_threadsafe(all_done.set)
            return "ok"

        def record(result: str, seconds: float, *, asked_by: str) -> None:
            pass

        with ThreadPoolExecutor(4) as threads:
            workers = [
                asyncio.create_task(work_forever(queue, run, threads, record)) for _ in range(4)
            ]
            queue.add(("a", "m"))
            await asyncio.wait_for(in_pass.wait(), timeout=10)
            for _ in range(5):
                queue.add(("a", "m"))
            await asyncio.sleep(0)  # let every idle worker look at the queue
            assert events == ["start"]
            release.set()
            await asyncio.wait_for(all_done.wait(), timeout=10)
            assert len(queue) == 0
            for worker in workers:
                worker.cancel()

    asyncio.run(scenario())
    assert events == ["start", "end", "start", "end"]


def test_a_failing_pass_is_logged_and_the_worker_goes_on() -> None:
    ran: list[Key] = []
    counted: list[tuple[str, str]] = []

    async def scenario() -> None:
        both = asyncio.Event()

        def run(key: Key) -> str:
            ran.append(key)
            if key[1] == "bad":
                raise RuntimeError("API server away")
            return "rejected"

        def record(result: str, seconds: float, *, asked_by: str) -> None:
            assert seconds >= 0
            counted.append((result, asked_by))
            if len(counted) == 2:
                both.set()  # on the event loop: the worker counts there

        queue = PassQueue()
        with ThreadPoolExecutor(1) as threads:
            worker = asyncio.create_task(work_forever(queue, run, threads, record))
            queue.add(("a", "bad"))
            queue.add(("a", "good"), line=Line.SWEEP)
            await asyncio.wait_for(both.wait(), timeout=10)
            assert not worker.done()
            assert queue.retrying() == 1  # the bad one waits for its retry
            worker.cancel()

    asyncio.run(scenario())
    assert ran == [("a", "bad"), ("a", "good")]
    assert counted == [("error", "spec"), ("rejected", "sweep")]


def taken_in_order(adds: list[tuple[str, Line]]) -> list[Taken]:
    """Add ("a", name) in each line given, then take every waiting key (one each)."""

    async def scenario() -> list[Taken]:
        queue = PassQueue()
        for name, line in adds:
            queue.add(("a", name), line)
        return [await queue.take() for _ in range(len(queue))]

    return asyncio.run(scenario())


def test_own_events_go_before_childrens_and_those_before_the_sweep() -> None:
    assert taken_in_order(
        [
            ("swept", Line.SWEEP),
            ("rolling", Line.CHILD),
            ("rolling", Line.CHILD),  # its Deployment's status moved again: once
            ("new", Line.SPEC),
            ("swept", Line.CHILD),  # moves up to the children's line
            ("new", Line.CHILD),  # waits in the first line already: stays
        ]
    ) == [
        (("a", "new"), Line.SPEC, Asker.SPEC),
        (("a", "rolling"), Line.CHILD, Asker.CHILD),
        (("a", "swept"), Line.CHILD, Asker.CHILD),
    ]


def test_what_events_ask_for_goes_before_the_resync_sweep() -> None:
    assert taken_in_order(
        [
            ("s1", Line.SWEEP),
            ("s2", Line.SWEEP),
            ("s3", Line.SWEEP),
            ("edited", Line.SPEC),
            ("s2", Line.SPEC),  # an event for a swept key: to the front, once
            ("s3", Line.SWEEP),  # waiting already: no second entry
        ]
    ) == [
        (("a", "edited"), Line.SPEC, Asker.SPEC),
        (("a", "s2"), Line.SPEC, Asker.SPEC),
        (("a", "s1"), Line.SWEEP, Asker.SWEEP),
        (("a", "s3"), Line.SWEEP, Asker.SWEEP),
    ]


def test_a_taken_key_swept_again_is_due_once_more() -> None:
    async def scenario() -> list[Taken]:
        queue = PassQueue()
        queue.add(("a", "m"), line=Line.SWEEP)
        queue.add(("a", "m"))  # moved to the front; its sweep entry is left behind
        first = await queue.take()
        queue.done(first.key)
        queue.add(("a", "m"), line=Line.SWEEP)
        second = await asyncio.wait_for(queue.take(), timeout=5)
        assert len(queue) == 0
        return [first, second]

    assert asyncio.run(scenario()) == [
        (("a", "m"), Line.SPEC, Asker.SPEC),
        (("a", "m"), Line.SWEEP, Asker.SWEEP),
    ]


def test_a_waiting_worker_wakes_for_a_key_added_later() -> None:
    async def scenario() -> Taken:
        queue = PassQueue()
        taker = asyncio.create_task(queue.take())
        await asyncio.sleep(0)  # the taker now waits on the empty queue
        assert not taker.done()
        queue.add(("a", "late"), line=Line.SWEEP)
        return await asyncio.wait_for(taker, timeout=5)

    assert asyncio.run(scenario()) == (("a", "late"), Line.SWEEP, Asker.SWEEP)


def test_forget_drops_a_waiting_key() -> None:
    async def scenario() -> list[Taken]:
        queue = PassQueue()
        queue.add(("a", "deleted"))
        queue.add(("a", "kept"), Line.SWEEP)
        queue.forget(("a", "deleted"))
        assert len(queue) == 1
        return [await queue.take()]

    assert asyncio.run(scenario()) == [(("a", "kept"), Line.SWEEP, Asker.SWEEP)]


def test_the_resync_queues_the_served_cached_model_deployments_behind_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENMODEL_NAMESPACES", "team-*")
    r = Reconciler(object(), PlatformConfig())  # type: ignore[arg-type]
    for namespace, name in (("team-a", "m"), ("team-b", "n"), ("other", "o")):
        md = {"kind": "ModelDeployment", "metadata": {"namespace": namespace, "name": name}}
        r.cache.observe("ModelDeployment", {**md, "apiVersion": "openmodel.dev/v1alpha1"})

    async def scenario() -> list[Taken]:
        queue = PassQueue()
        queue.add(("team-b", "n"))
        assert queue_all(r, queue) == 2
        return [await queue.take() for _ in range(len(queue))]

    # team-b/n waited for an event already: it stays in the front line.
    assert asyncio.run(scenario()) == [
        (("team-b", "n"), Line.SPEC, Asker.SPEC),
        (("team-a", "m"), Line.SWEEP, Asker.SWEEP),
    ]
