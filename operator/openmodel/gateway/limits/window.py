"""A sliding-window log: what was charged in the last `seconds`, exactly, so a budget of
B per window holds over *every* window of that length (a token bucket would let 2B
through in a window that starts full; a fixed window, 2B across its boundary).

Pure: the caller passes `now` (a monotonic clock), so tests need no sleep.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass
class Charge:
    at: float
    amount: float
    live: bool = True  # False once it left the window


class SlidingWindow:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._charges: deque[Charge] = deque()
        self._total = 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self.seconds
        while self._charges and self._charges[0].at <= horizon:
            gone = self._charges.popleft()
            gone.live = False
            self._total -= gone.amount
        if not self._charges:
            self._total = 0.0  # no float drift left behind

    def used(self, now: float) -> float:
        self._expire(now)
        return self._total

    def empty(self, now: float) -> bool:
        self._expire(now)
        return not self._charges

    def wait_for(self, now: float, amount: float, budget: float) -> float:
        """Seconds until `amount` more fits in `budget`: 0 now, inf never (amount > budget)."""
        self._expire(now)
        if self._total + amount <= budget:
            return 0.0
        if amount > budget:
            return math.inf
        remaining = self._total
        for charge in self._charges:
            remaining -= charge.amount
            if remaining + amount <= budget:
                return charge.at + self.seconds - now
        return self.seconds  # unreachable: an empty window fits any amount <= budget

    def charge(self, now: float, amount: float) -> Charge:
        self._expire(now)
        entry = Charge(now, amount)
        self._charges.append(entry)
        self._total += amount
        return entry

    def settle(self, entry: Charge, actual: float, now: float) -> None:
        """The real amount of what `entry` reserved is `actual`: give back the unused part
        while the entry is still in the window, or charge the excess now."""
        self._expire(now)
        delta = actual - entry.amount
        if delta > 0:
            # Charged when it is learnt, so it counts against the window it shows up in.
            self._charges.append(Charge(now, delta))
            self._total += delta
        elif delta < 0 and entry.live:
            entry.amount = actual
            self._total += delta
