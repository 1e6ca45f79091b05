"""The queue between kopf's event handlers and the reconcile workers
(reconcile/work_queue.py): a waiting key is queued once, a key taken can be queued
again, events go before the resync's sweep, and a failing pass does not end its worker."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from openmodel.config import PlatformConfig
from openmodel.reconcile.reconciler import Reconciler
from openmodel.reconcile.resync import queue_all
from openmodel.reconcile.work_queue import Line, WorkQueue, work_forever

Taken = tuple[tuple[str, str], Line]


def test_many_events_of_one_key_wait_as_one_and_order_is_kept() -> None:
    async def scenario() -> list[Taken]:
        queue = WorkQueue()
        for key in [("a", "m"), ("a", "n"), ("a", "m"), ("a", "m")]:
            queue.add(key)
        assert len(queue) == 2
        first = await queue.take()
        queue.add(first[0])  # changed again while its pass runs: due once more
        return [first, await queue.take(), await queue.take()]

    assert asyncio.run(scenario()) == [
        (("a", "m"), Line.SPEC),
        (("a", "n"), Line.SPEC),
        (("a", "m"), Line.SPEC),
    ]


def test_a_failing_pass_is_logged_and_the_worker_goes_on() -> None:
    ran: list[tuple[str, str, bool]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        both = asyncio.Event()

        def run(namespace: str, name: str, swept: bool) -> None:
            ran.append((namespace, name, swept))
            if len(ran) == 2:
                loop.call_soon_threadsafe(both.set)
            if name == "bad":
                raise RuntimeError("API server away")

        queue = WorkQueue()
        with ThreadPoolExecutor(1) as threads:
            worker = asyncio.create_task(work_forever(queue, run, threads))
            queue.add(("a", "bad"))
            queue.add(("a", "good"), line=Line.SWEEP)
            await asyncio.wait_for(both.wait(), timeout=10)
            assert not worker.done()
            worker.cancel()

    asyncio.run(scenario())
    assert ran == [("a", "bad", False), ("a", "good", True)]


def taken_in_order(adds: list[tuple[str, Line]]) -> list[Taken]:
    """Add ("a", name) in each line given, then take every waiting key (one each)."""

    async def scenario() -> list[Taken]:
        queue = WorkQueue()
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
    ) == [(("a", "new"), Line.SPEC), (("a", "rolling"), Line.CHILD), (("a", "swept"), Line.CHILD)]


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
        (("a", "edited"), Line.SPEC),
        (("a", "s2"), Line.SPEC),
        (("a", "s1"), Line.SWEEP),
        (("a", "s3"), Line.SWEEP),
    ]


def test_a_taken_key_swept_again_is_due_once_more() -> None:
    async def scenario() -> list[Taken]:
        queue = WorkQueue()
        queue.add(("a", "m"), line=Line.SWEEP)
        queue.add(("a", "m"))  # moved to the front; its sweep entry is left behind
        first = await queue.take()
        queue.add(("a", "m"), line=Line.SWEEP)
        second = await asyncio.wait_for(queue.take(), timeout=5)
        assert len(queue) == 0
        return [first, second]

    assert asyncio.run(scenario()) == [(("a", "m"), Line.SPEC), (("a", "m"), Line.SWEEP)]


def test_a_waiting_worker_wakes_for_a_key_added_later() -> None:
    async def scenario() -> Taken:
        queue = WorkQueue()
        taker = asyncio.create_task(queue.take())
        await asyncio.sleep(0)  # the taker now waits on the empty queue
        assert not taker.done()
        queue.add(("a", "late"), line=Line.SWEEP)
        return await asyncio.wait_for(taker, timeout=5)

    assert asyncio.run(scenario()) == (("a", "late"), Line.SWEEP)


def test_the_resync_queues_the_served_cached_model_deployments_behind_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENMODEL_NAMESPACES", "team-*")
    r = Reconciler(object(), PlatformConfig())  # type: ignore[arg-type]
    for namespace, name in (("team-a", "m"), ("team-b", "n"), ("other", "o")):
        md = {"kind": "ModelDeployment", "metadata": {"namespace": namespace, "name": name}}
        r.cache.observe("ModelDeployment", {**md, "apiVersion": "openmodel.dev/v1alpha1"})

    async def scenario() -> list[Taken]:
        queue = WorkQueue()
        queue.add(("team-b", "n"))
        assert queue_all(r, queue) == 2
        return [await queue.take() for _ in range(len(queue))]

    # team-b/n waited for an event already: it stays in the front line.
    assert asyncio.run(scenario()) == [(("team-b", "n"), Line.SPEC), (("team-a", "m"), Line.SWEEP)]
