"""What the operator remembers about each object, forgotten in one call.

Several parts keep something per object between passes: the queue (a waiting key, a
retry and its back-off), the reconciler (the versions of its own writes), the model
resolver (who waits for a config.json), the metrics (series labelled by the object).
Each registers how to forget a key here when it is built; a deleted object is then
forgotten by one `forget(key)`, and a part added later cannot be left out by a handler
that does not know of it.

The loops that rebuild their state from the cache every cycle (the autoscaler's
histories, the adapter loop's failures) forget by that cycle instead: what a cycle
did not see is dropped at its end, which also covers an object that stops being
autoscaled without being deleted.
"""

from __future__ import annotations

from collections.abc import Callable

from openmodel.controller.queue import Key


class ObjectMemory:
    def __init__(self) -> None:
        self._forgetters: dict[str, Callable[[Key], object]] = {}

    def register(self, name: str, forget: Callable[[Key], object]) -> None:
        """`forget(key)` drops what `name` keeps about the object `key`."""
        if name in self._forgetters:
            raise ValueError(f"{name} is registered already")
        self._forgetters[name] = forget

    def forget(self, key: Key) -> None:
        """The object is gone: every registered part lets it go."""
        for forget in self._forgetters.values():
            forget(key)

    def names(self) -> list[str]:
        return sorted(self._forgetters)
