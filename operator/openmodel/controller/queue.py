"""Which objects are due a pass: the one queue every pass goes through.

kopf reads each watch as fast as the API server sends and keeps every event, decoded
whole, until that object's handler has returned. A handler that runs the pass itself
waits for a reconcile thread, which waits for the API server: during a burst of 1,000
creations about 6,000 decoded events (220 MiB) waited so (docs/benchmarks.md). Here the
event handlers only put the object's key in this queue and return, so kopf lets go of
each event once it is in the cache; the workers (`workers.py`) take keys and run one
pass each, in threads, reading the newest state from the cache. A key already waiting
is not queued twice: many events of one object become one pass.

Three lines, taken in order (`Line`): what an object's own event asks for (a user's
create or edit) goes first; what its children's events ask for (a Deployment's status
moving, a pod turning Ready) next; the resync's sweep over every cached object last. So
during a burst of 5,000 creations every engine Deployment is created before the status
of the first ones is brought up to date (that moves status writes and Ready Events
later; it does not remove work: docs/benchmarks.md); an edit made while 5,000 converged
objects are swept is not queued behind them, and a sweep during a burst adds next to
nothing (its keys are waiting already). A waiting key asked for by a line before its
own moves up to it.

A key is never in two passes at once (client-go's workqueue rule): a key taken is
`processing` until its worker calls `done` (or `failed`); added meanwhile, it is kept
aside (`dirty`) and waits again only then, so its next pass sees all those adds saw.

A pass that failed (the API server away: a restart, a 5xx, a timeout; kopf does not
retry an `on.event` handler) is added again by the queue itself after a back-off, in the
line it was taken from: 1 s, doubling to 60 s while it keeps failing; a pass of that key
that succeeds, whoever asked for it, clears the back-off.

All of it runs on kopf's event loop (the handlers are async), so the queue needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

Key = tuple[str, str]  # (namespace, name)

FIRST_DELAY_SECONDS = 1.0
MOST_DELAY_SECONDS = 60.0


class Line(enum.IntEnum):
    """Where a key waits; a lower line is taken first."""

    SPEC = 0  # the object's own event (and what completes it: the resolver's answer)
    CHILD = 1  # an event of one of its children
    SWEEP = 2  # the resync (or an audit, or an election)


class Asker(enum.Enum):
    """Who asked for a pass (counted per pass: `openmodel_reconcile_passes_total`)."""

    SPEC = "spec"  # the object's own event
    CHILD = "child"  # a child's event
    SWEEP = "sweep"  # the resync's sweep, the cache audit, an election
    RETRY = "retry"  # the back-off after a failed pass
    RESOLVER = "resolver"  # an answer the object's pass waited for (config.json)


_ASKER_OF_LINE = {Line.SPEC: Asker.SPEC, Line.CHILD: Asker.CHILD, Line.SWEEP: Asker.SWEEP}


class Asked(NamedTuple):
    line: Line
    asker: Asker


class Taken(NamedTuple):
    """A key handed to a worker, with the line it waited in and who asked."""

    key: Key
    line: Line
    asker: Asker


class PassQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lines: tuple[deque[Key], ...] = tuple(deque() for _ in Line)
        # Each waiting key and the line it waits in. An entry of a line whose key is not
        # (or no longer) waiting in that line is skipped by `take`.
        self._waiting: dict[Key, Asked] = {}
        # Keys in a pass now (the line each was taken from), and those added meanwhile.
        self._processing: dict[Key, Line] = {}
        self._dirty: dict[Key, Asked] = {}
        # Failed keys: when each is added again (and in which line), and its last delay.
        self._retry_at: dict[Key, tuple[float, Line]] = {}
        self._delay: dict[Key, float] = {}
        self._added = asyncio.Event()

    def add(self, key: Key, line: Line = Line.SPEC, asker: Asker | None = None) -> None:
        """Ask for a pass of `key` (`asker`: the line's own unless given)."""
        asked = Asked(line, asker or _ASKER_OF_LINE[line])
        if key in self._processing:
            aside = self._dirty.get(key)
            if aside is None or line < aside.line:
                self._dirty[key] = asked
            return
        waiting = self._waiting.get(key)
        if waiting is not None and waiting.line <= line:
            return
        self._wait(key, asked)

    def _wait(self, key: Key, asked: Asked) -> None:
        self._waiting[key] = asked
        self._lines[asked.line].append(key)
        self._added.set()

    async def take(self) -> Taken:
        """The next key due; it is processing until `done`."""
        while True:
            self._add_due_retries()
            for line, entries in zip(Line, self._lines, strict=True):
                while entries:
                    key = entries.popleft()
                    waiting = self._waiting.get(key)
                    if waiting is not None and waiting.line is line:
                        del self._waiting[key]
                        self._processing[key] = line
                        return Taken(key, line, waiting.asker)
            self._added.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._added.wait(), self._seconds_to_next_retry())

    def done(self, key: Key) -> None:
        """The pass of a taken key succeeded: any back-off of the key is cleared."""
        self._delay.pop(key, None)
        self._retry_at.pop(key, None)
        self._end(key)

    def failed(self, key: Key) -> float:
        """The pass of a taken key failed: it is added again after a back-off, in the
        line it was taken from; returns the delay."""
        previous = self._delay.get(key)
        delay = FIRST_DELAY_SECONDS if previous is None else min(MOST_DELAY_SECONDS, previous * 2)
        self._delay[key] = delay
        self._retry_at[key] = (self.clock() + delay, self._processing[key])
        self._added.set()  # a waiting worker's timeout may now be too long
        self._end(key)
        return delay

    def _end(self, key: Key) -> None:
        """Added while its pass ran: it waits again now."""
        del self._processing[key]
        aside = self._dirty.pop(key, None)
        if aside is not None:
            self._wait(key, aside)

    def _add_due_retries(self) -> None:
        now = self.clock()
        due = [(key, line) for key, (at, line) in self._retry_at.items() if at <= now]
        for key, line in due:
            del self._retry_at[key]  # its back-off stays until a pass succeeds
            self.add(key, line, Asker.RETRY)

    def _seconds_to_next_retry(self) -> float | None:
        if not self._retry_at:
            return None
        return max(0.0, min(at for at, _ in self._retry_at.values()) - self.clock())

    def forget(self, key: Key) -> None:
        """The object is gone: no pass waits for it, no retry, no back-off. A pass
        running now ends as it would (it finds nothing to do)."""
        self._waiting.pop(key, None)
        self._dirty.pop(key, None)
        self._retry_at.pop(key, None)
        self._delay.pop(key, None)

    def retrying(self) -> int:
        """Keys whose last pass failed."""
        return len(self._delay)

    def __len__(self) -> int:
        """Keys waiting to be taken now (not those in a pass or waiting for a retry)."""
        return len(self._waiting)
