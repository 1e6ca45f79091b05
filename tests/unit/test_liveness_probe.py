"""The liveness probe fails once a background loop has ended."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from openmodel.main import background_loops_alive


def test_probe_passes_while_loops_run_and_fails_after() -> None:
    async def scenario() -> None:
        forever = asyncio.create_task(asyncio.sleep(3600), name="autoscaler")
        ended = asyncio.create_task(asyncio.sleep(0), name="resync")
        memo = kopf.Memo(tasks=[forever])
        assert background_loops_alive(memo=memo) == "ok"
        await ended
        memo.tasks.append(ended)
        with pytest.raises(kopf.PermanentError, match="resync"):
            background_loops_alive(memo=memo)
        forever.cancel()

    asyncio.run(scenario())
