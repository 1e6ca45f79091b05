"""Which pod gets the next request. Pure bookkeeping, no I/O.

Outstanding work on a pod = the gateway's own requests in flight to it + the others' work
on it: what the engine reported at its last scrape (requests running and waiting) less
the gateway's own in flight at that moment, so that its own requests, which the engine
counts too, are not counted twice (the others: other gateways, other gateway processes,
clients sent straight to the pod). Two policies (the platform's
`gateway.balancing.policy`, which a ModelDeployment's `spec.gateway.balancing.policy`
overrides for its own requests):
- `least-load`: the pod with the least outstanding work; ties rotate, so equal pods share;
- `prefix`: requests that begin alike go to one pod (its prefix cache holds their
  beginning) while its load stays within a bound of the mean (affinity.py); requests
  without a prompt to key on fall back to least-load.
An adapter request only goes to pods whose engine lists that adapter as loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from openmodel.gateway.affinity import RingCache, bounded_pick
from openmodel.gateway.routes import Endpoint, ObjectKey

PodKey = tuple[ObjectKey, str]


@dataclass
class Balancer:
    in_flight: dict[PodKey, int] = field(default_factory=dict)
    # Work on the pod the gateway did not send itself, as of the last scrape.
    others_outstanding: dict[PodKey, float] = field(default_factory=dict)
    # The engine's own queue (requests waiting, not running), as of the last scrape:
    # what an overflow's queueDepthAbove is about (gateway/external/overflow.py).
    engine_waiting: dict[PodKey, float] = field(default_factory=dict)
    loaded_adapters: dict[PodKey, frozenset[str]] = field(default_factory=dict)
    policy: str = "least-load"
    load_factor: float = 1.25
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    _rings: RingCache = field(default_factory=RingCache.empty)

    def load(self, key: ObjectKey, pod: str) -> float:
        pk = (key, pod)
        return self.in_flight.get(pk, 0) + self.others_outstanding.get(pk, 0.0)

    def engine_reported(self, key: ObjectKey, pod: str, outstanding: float) -> None:
        """The engine's own count of the requests it runs and queues, just scraped."""
        pk = (key, pod)
        self.others_outstanding[pk] = max(0.0, outstanding - self.in_flight.get(pk, 0))

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
        affinity: int | None = None,
        policy: str | None = None,
    ) -> Endpoint | None:
        """`affinity`: the request's prefix key (affinity.affinity_key), used by the
        `prefix` policy; `policy`: its ModelDeployment's, None for the platform's."""
        choices = [e for e in self.eligible(key, endpoints, adapter) if e.pod not in exclude]
        if not choices:
            return None
        if (policy or self.policy) == "prefix" and affinity is not None and len(choices) > 1:
            return bounded_pick(
                affinity,
                choices,
                lambda e: e.pod,
                lambda e: self.load(key, e.pod),
                self.load_factor,
                self._rings,
            )
        turn = next(self._turn)
        n = len(choices)

        def score(item: tuple[int, Endpoint]) -> tuple[float, int]:
            i, e = item
            return (self.load(key, e.pod), (i - turn) % n)

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
        for table in (self.others_outstanding, self.engine_waiting, self.loaded_adapters):
            for pk in [pk for pk in table if pk not in live]:
                del table[pk]
