"""The SIGUSR2 dump names the tasks and kopf's blockers (kube/diagnostics.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from kopf._cogs.aiokits.aiotoggles import ToggleSet

from openmodel.kube import diagnostics


def test_dump_names_waiting_tasks_and_the_listing_not_yet_done() -> None:
    async def scenario() -> tuple[str, str]:
        readiness = ToggleSet(all)
        listed = await readiness.make_toggle(name="pods@team-a")
        pending = await readiness.make_toggle(name="deployments@team-b")
        await listed.turn_to(True)
        waiter = asyncio.create_task(readiness.wait_for(True), name="worker for md-1")
        await asyncio.sleep(0)  # let it reach its wait
        blocked = diagnostics.dump()
        await pending.turn_to(True)
        await waiter
        return blocked, diagnostics.dump()

    blocked, after = asyncio.run(scenario())
    assert "task worker for md-1: wait_for:" in blocked
    assert "kopf blockers: not yet: deployments@team-b" in blocked
    assert "pods@team-a" not in blocked
    assert "worker for md-1" not in after
    assert "kopf blockers: none" in after


def test_sigusr2_logs_the_dump() -> None:
    records: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        logged = asyncio.Event()

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record.getMessage())
                logged.set()  # the signal handler runs on the loop's thread

        handler = Keep()
        diagnostics.log.addHandler(handler)
        diagnostics.install(loop)
        try:
            os.kill(os.getpid(), signal.SIGUSR2)
            await asyncio.wait_for(logged.wait(), 5)
        finally:
            loop.remove_signal_handler(signal.SIGUSR2)
            diagnostics.log.removeHandler(handler)

    asyncio.run(scenario())
    assert len(records) == 1 and records[0].startswith("what the operator waits on (SIGUSR2):")
    assert "task Task-" in records[0]  # the scenario itself is one of the tasks
