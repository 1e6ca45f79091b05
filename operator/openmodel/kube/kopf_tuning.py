"""What the operator turns off or mends in kopf, and why.

The operator registers only event handlers and index functions (`main.py`): no
create/update/delete handlers, no daemons, no timers. kopf still builds, for every watch
event, a deep copy of the object's spec, labels and annotations (its "diff base", the
last-handled state that change handlers are compared against) and throws it away: a
tenth of the operator's samples in a 1,000-object burst (docs/benchmarks.md). With no
handler that reads it, an empty essence is the same answer for nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

import kopf
from kopf._core.reactor import observation


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff base for an operator without change handlers: nothing built, kept or read."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


# -- a namespace created while kopf starts ------------------------------------------------
#
# With namespace patterns (OPENMODEL_NAMESPACES), kopf 1.45's namespace observer lists
# the namespaces, then starts a watch, which lists them again before it watches, and it
# ignores that second listing (its events have type None). A namespace created between
# the two lists is in neither: kopf starts no watch in it, so its ModelDeployments get no
# pass, no cache entry and no status, until the namespace itself next changes (in the
# e2e runs: when the test deleted it, 20-120 s later; kopf then logged "Unprocessed
# streams left" at exit). The fix counts the second listing too: adding a namespace
# that is already known changes nothing, and kopf is told only when the set changed.


def _namespace_processor(original: Callable[..., Awaitable[None]]) -> Callable[..., Any]:
    async def process(
        *,
        raw_event: Any,
        namespaces: Collection[Any],
        insights: Any,
        **kwargs: Any,
    ) -> None:
        if raw_event.get("type") is not None:
            await original(raw_event=raw_event, namespaces=namespaces, insights=insights, **kwargs)
            return
        async with insights.revised:
            before = set(insights.namespaces)
            observation.revise_namespaces(
                raw_events=[raw_event], insights=insights, namespaces=namespaces
            )
            if insights.namespaces != before:
                insights.revised.notify_all()

    process.__wrapped__ = original  # type: ignore[attr-defined]
    return process


def count_the_watch_listing_of_namespaces() -> None:
    """Install the fix above (once; `python -m openmodel` does, before kopf.run)."""
    current = observation.process_discovered_namespace_event
    if hasattr(current, "__wrapped__"):
        return
    observation.process_discovered_namespace_event = _namespace_processor(current)
