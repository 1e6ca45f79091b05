"""Which pod gets the next request: least outstanding work. Pure bookkeeping, no I/O.

Outstanding work on a pod = the gateway's own requests in flight to it + the queue the
engine reported at its last scrape (requests from other gateways, or sent straight to
the pod, that the gateway did not count itself). Ties rotate, so equal pods share.
An adapter request only goes to pods whose engine lists that adapter as loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from openmodel.gateway.routes import Endpoint, ObjectKey

PodKey = tuple[ObjectKey, str]


@dataclass
class Balancer:
    in_flight: dict[PodKey, int] = field(default_factory=dict)
    engine_waiting: dict[PodKey, float] = field(default_factory=dict)
    loaded_adapters: dict[PodKey, frozenset[str]] = field(default_factory=dict)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def eligible(
        self, key: ObjectKey, endpoints: Sequence[Endpoint], adapter: str | None
    ) -> list[Endpoint]:
        if adapter is None:
            return list(endpoints)
        return [e for e in endpoints if adapter in self.loaded_adapters.get((key, e.pod), ())]

    def pick(
        self,
        key: ObjectKey,
        endpoints: Sequence[Endpoint],
        adapter: str | None = None,
        exclude: Collection[str] = (),
    ) -> Endpoint | None:
        choices = [e for e in self.eligible(key, endpoints, adapter) if e.pod not in exclude]
        if not choices:
            return None
        turn = next(self._turn)
        n = len(choices)

        def score(item: tuple[int, Endpoint]) -> tuple[float, int]:
            i, e = item
            pk = (key, e.pod)
            return (self.in_flight.get(pk, 0) + self.engine_waiting.get(pk, 0.0), (i - turn) % n)

        return min(enumerate(choices), key=score)[1]

    def started(self, key: ObjectKey, pod: str) -> None:
        self.in_flight[(key, pod)] = self.in_flight.get((key, pod), 0) + 1

    def finished(self, key: ObjectKey, pod: str) -> None:
        left = self.in_flight.get((key, pod), 0) - 1
        if left > 0:
            self.in_flight[(key, pod)] = left
        else:
            self.in_flight.pop((key, pod), None)

    def in_flight_for(self, key: ObjectKey) -> int:
        return sum(n for (k, _), n in self.in_flight.items() if k == key)

    def keep_only(self, live: Collection[PodKey]) -> None:
        """Drop scraped state of pods that are gone (in-flight counts end by themselves)."""
        for table in (self.engine_waiting, self.loaded_adapters):
            for pk in [pk for pk in table if pk not in live]:
                del table[pk]
