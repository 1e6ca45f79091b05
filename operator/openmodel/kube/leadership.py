"""Leadership: whether this replica may write now, answered by its own monotonic clock.

With several replicas (OPENMODEL_LEADER_ELECTION=true) one task renews the Lease
(`kube/leader.py`) every retry period, on a thread of its own, apart from every loop. A
successful attempt makes this replica the leader until the monotonic time taken just
before the attempt's first request plus the renew deadline. A standby takes the Lease
over only a whole lease duration after the renewal it saw, which was sent after that
time: the holder has stopped writing a safety margin (lease duration - renew deadline)
before anyone else may start. Nothing another loop does (a stalled cycle, a hung write,
a slow scrape) extends it, and an attempt that hangs extends nothing either.

Every writer asks just before writing: the operator's API client before any request that
is not a read (`kube.calls.GuardedApiClient` calls `write_window`), the adapter loop
before each load or unload it sends an engine. The refusal is `NotLeader`, which a pass
or a cycle treats as "stop here, quietly": the next leader reconciles everything when it
is elected. Without leader election this replica is always the leader.

Timing: client-go's defaults, which Kubernetes' own controllers use.
- lease duration 15 s (`leaseDurationSeconds`): a dead holder's writes stop at once, its
  Lease is taken over 15-17 s later.
- renew deadline 10 s: this replica writes for at most 10 s after the start of its last
  successful renewal. The 5 s margin covers a write already on its way when leadership
  ends (a write is given up when the Lease expires by this replica's clock:
  `write_window`) and clocks of two machines that run at slightly different rates.
- retry period 2 s: the holder renews and a standby tries every 2 s, so a standby takes
  over at most one retry period after the Lease expired, and a holder gets four tries
  within its renew deadline (each request gives up after 4 s:
  `leader.REQUEST_TIMEOUT_SECONDS`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from openmodel.kube.leader import LEASE_SECONDS

log = logging.getLogger(__name__)

RENEW_DEADLINE_SECONDS = 10.0
RETRY_PERIOD_SECONDS = 2.0


class NotLeader(Exception):
    """This replica may not write now: it does not hold the Lease, or its hold lapsed.
    Not an error: whoever holds the Lease does the work."""


class Elector(Protocol):
    """One acquire-or-renew attempt (`kube.leader.LeaseElector`)."""

    @property
    def identity(self) -> str: ...

    def try_acquire_or_renew(self) -> bool: ...


@dataclass(frozen=True)
class LeaseTiming:
    lease_seconds: float = LEASE_SECONDS
    renew_deadline_seconds: float = RENEW_DEADLINE_SECONDS
    retry_period_seconds: float = RETRY_PERIOD_SECONDS

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(f"need 0 < retry period < renew deadline < lease duration: {self}")


@dataclass
class Leadership:
    # None: no leader election (one replica): always the leader.
    elector: Elector | None = None
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    clock: Callable[[], float] = time.monotonic
    # clock() just before the first request of the last attempt that held the Lease.
    _renewed_at: float | None = None
    # What was last announced (elected / lost), so each transition is told once.
    _leading: bool = False
    _on_elected: list[Callable[[], object]] = field(default_factory=list)

    def is_leader(self) -> bool:
        if self.elector is None:
            return True
        renewed = self._renewed_at
        return renewed is not None and self.clock() < renewed + self.timing.renew_deadline_seconds

    def check(self) -> None:
        """Raises NotLeader unless this replica may write now."""
        if not self.is_leader():
            raise NotLeader(self._who())

    def write_window(self) -> float:
        """Seconds a write sent now may take: until the Lease expires by this replica's
        clock (inf without leader election). Raises NotLeader when it may not write."""
        if self.elector is None:
            return math.inf
        self.check()
        renewed = self._renewed_at
        assert renewed is not None  # check() passed
        return renewed + self.timing.lease_seconds - self.clock()

    def when_elected(self, callback: Callable[[], object]) -> None:
        """Run `callback` (on the event loop) each time this replica becomes the leader:
        another replica decided until then."""
        self._on_elected.append(callback)

    def attempted(self, started: float, held: bool) -> None:
        """The outcome of one acquire-or-renew attempt whose first request was sent after
        clock() read `started`."""
        self.notice_lapse()
        if not held:
            self._renewed_at = None
            if self._leading:
                self._leading = False
                log.warning("operator: another replica holds the Lease; standing by")
            return
        self._renewed_at = started
        if self._leading or not self.is_leader():
            return  # renewed; or the attempt took longer than the renew deadline
        self._leading = True
        log.info("operator: became leader (%s)", self._who())
        for callback in self._on_elected:
            callback()

    def notice_lapse(self) -> None:
        """Tell once that the hold lapsed unrenewed (is_leader() already says so)."""
        if self._leading and not self.is_leader():
            self._leading = False
            log.warning(
                "operator: Lease not renewed within %.0f s (%s); stopped writing, standing by",
                self.timing.renew_deadline_seconds,
                self._who(),
            )

    def _who(self) -> str:
        return "no leader election" if self.elector is None else self.elector.identity

    def _attempt(self) -> tuple[float, bool]:
        """One attempt, on the Lease's thread: the time is read there, just before the
        first request, not when the attempt was queued."""
        assert self.elector is not None
        started = self.clock()
        return started, self.elector.try_acquire_or_renew()

    async def run_forever(self) -> None:
        """Attempt every retry period; an attempt still running (a hung request) is
        waited for, never doubled, and the lapse it causes is told meanwhile."""
        if self.elector is None:
            raise ValueError("no leader election: nothing to renew")
        loop = asyncio.get_running_loop()
        period = self.timing.retry_period_seconds
        thread = ThreadPoolExecutor(1, thread_name_prefix="lease")
        attempt: asyncio.Future[tuple[float, bool]] | None = None
        try:
            while True:
                tick = self.clock()
                if attempt is None:
                    attempt = loop.run_in_executor(thread, self._attempt)
                done, _ = await asyncio.wait({attempt}, timeout=period)
                if done:
                    self._settle(attempt)
                    attempt = None
                self.notice_lapse()
                await asyncio.sleep(max(0.0, period - (self.clock() - tick)))
        finally:
            thread.shutdown(wait=False, cancel_futures=True)

    def _settle(self, attempt: asyncio.Future[tuple[float, bool]]) -> None:
        try:
            started, held = attempt.result()
        except Exception as e:
            # Not renewed (API unreachable, a request timed out): the hold lapses by
            # itself at its deadline; the next attempt comes a retry period later.
            log.warning("operator: Lease attempt failed (%s): %s", self._who(), e)
            return
        self.attempted(started, held)
