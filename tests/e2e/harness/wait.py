"""Polling with a deadline, failing with what was last seen.

The only sleeping a cluster test should do is the poll interval inside
``wait_for``. A predicate returns something truthy when the wait is over (that
value is returned) or something falsy meanwhile; returning ``NotYet("...")``
(always falsy) records *why* it is not done, and that text is what the failure
message shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NotYet:
    """A falsy predicate result that says what was observed."""

    def __init__(self, seen: object) -> None:
        self.seen = seen

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return str(self.seen)


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline (a test failure, not an error)."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    describe: str | Callable[[], str],
    *,
    interval: float = 0.2,
) -> T:
    """Call ``predicate`` until it returns a truthy value or ``timeout`` seconds pass.

    ``describe`` names what is awaited; if it is a callable it is called at the
    deadline and may report the state of the world (e.g. events). Exceptions
    from ``predicate`` propagate: a probe that should tolerate "not found yet"
    must say so itself and return ``NotYet``.
    """
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            what = describe() if callable(describe) else describe
            elapsed = time.monotonic() - started
            raise WaitTimeout(
                f"timed out after {elapsed:.1f}s waiting for {what}; last saw: {last!r}"
            )
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
