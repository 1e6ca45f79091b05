"""The liveness probe fails once a background task (a worker, a loop) has ended."""

from __future__ import annotations

import asyncio

import kopf
import pytest
from operator_parts import new_operator

from openmodel.main import background_loops_alive


def test_probe_passes_while_loops_run_and_fails_after() -> None:
    async def scenario() -> None:
        forever = asyncio.create_task(asyncio.sleep(3600), name="autoscaler")
        ended = asyncio.create_task(asyncio.sleep(0), name="resync")
        operator = new_operator()
        operator.tasks = [forever]
        memo = kopf.Memo(operator=operator)
        assert background_loops_alive(memo=memo) == "ok"
        await ended
        operator.tasks.append(ended)
        with pytest.raises(kopf.PermanentError, match="resync"):
            background_loops_alive(memo=memo)
        forever.cancel()

    asyncio.run(scenario())


def test_probe_passes_before_startup_has_built_the_operator() -> None:
    assert background_loops_alive(memo=kopf.Memo()) == "ok"
