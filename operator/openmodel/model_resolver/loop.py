"""The background task that reads config.json files the reconciler asked about.

Started from the operator's startup like the other loops. It fetches what the store
says is due, records the answer (or the failure and its back-off), then asks for a pass
of every ModelDeployment that waited on it (`ask_pass`: the operator's queue, so the
workers run those passes as any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from openmodel.model_resolver.hub import HubClient, ResolveError, fetch_with_timeout
from openmodel.model_resolver.state import UNSUPPORTED, Failed, ModelConfigState, ModelRef, Resolved
from openmodel.model_resolver.store import ModelConfigStore
from openmodel.sizing.checkpoint import CheckpointError, read_checkpoint

log = logging.getLogger(__name__)
IDLE_SECONDS = 60.0


async def resolve_once(client: HubClient, ref: ModelRef, attempts: int) -> ModelConfigState:
    try:
        files = await fetch_with_timeout(client, ref)
        checkpoint = read_checkpoint(
            files.config, ref.repo, files.index, files.headers, files.files
        )
    except ResolveError as e:
        return Failed(ref, e.reason, e.message, attempts + 1)
    except CheckpointError as e:
        return Failed(ref, UNSUPPORTED, str(e), attempts + 1)
    return Resolved(ref, files.sha, checkpoint)


class ResolverLoop:
    def __init__(
        self,
        store: ModelConfigStore,
        client: HubClient,
        ask_pass: Callable[[tuple[str, str]], object],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.client = client
        self.ask_pass = ask_pass
        self.clock = clock

    async def _resolve(self, ref: ModelRef) -> None:
        state = await resolve_once(self.client, ref, self.store.attempts(ref))
        if isinstance(state, Failed):
            log.warning("config.json of %s: %s: %s (attempt %d)", ref, state.reason,
                        state.message, state.attempts)  # fmt: skip
        else:
            log.info("config.json of %s resolved at %s", ref, getattr(state, "sha", "?"))
        for waiter in sorted(self.store.record(ref, state, self.clock())):
            self.ask_pass(waiter)

    async def run_forever(self) -> None:
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.store.set_wake(lambda: loop.call_soon_threadsafe(wake.set))
        while True:
            due = self.store.due(self.clock())
            if due:
                await asyncio.gather(*(self._resolve(ref) for ref in due))
                continue
            wait = self.store.seconds_until_next_retry(self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), IDLE_SECONDS if wait is None else wait)
            wake.clear()
