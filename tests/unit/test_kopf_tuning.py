"""kopf's diff base is turned off (kube/kopf_tuning.py); that is only right while the
operator has no handler that compares against it."""

from __future__ import annotations

import asyncio

import kopf

import openmodel.main  # noqa: F401  (registers the handlers)
from openmodel.kube.kopf_tuning import NoDiffBase


def test_no_handler_reads_the_diff_base_that_is_turned_off() -> None:
    registry = kopf.get_default_registry()
    # Change handlers (create/update/delete/resume/field) and daemons/timers would.
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    assert list(registry._watching.get_all_handlers())  # the event handlers are there


def test_the_empty_diff_base_keeps_nothing() -> None:
    storage = NoDiffBase()
    body = kopf.Body({"metadata": {"name": "m"}, "spec": {"model": "x"}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None


# -- a namespace created between kopf's two listings of namespaces ----------------------

from kopf._cogs.structs.references import Insights  # noqa: E402
from kopf._core.reactor import observation  # noqa: E402

from openmodel.kube.kopf_tuning import (  # noqa: E402
    _namespace_processor,
    count_the_watch_listing_of_namespaces,
)


def _listed(name: str, **meta: object) -> dict[str, object]:
    """A namespace as the watch's own initial listing delivers it (type None)."""
    return {"type": None, "object": {"metadata": {"name": name, **meta}}}


def _revisions(processor: object, *events: dict[str, object]) -> tuple[set[object], int]:
    async def run() -> tuple[set[object], int]:
        insights = Insights()
        notified = 0

        async def count() -> None:
            nonlocal notified
            async with insights.revised:
                while True:
                    await insights.revised.wait()
                    notified += 1

        counter = asyncio.create_task(count())
        await asyncio.sleep(0)  # the counter waits on the condition
        for event in events:
            await processor(raw_event=event, namespaces=["team-*"], insights=insights)  # type: ignore[operator]
            await asyncio.sleep(0)  # let the counter see a notification
        counter.cancel()
        return set(insights.namespaces), notified

    return asyncio.run(run())


def test_kopf_alone_ignores_a_namespace_only_its_watch_listed() -> None:
    # The reason for the fix: if this starts failing, kopf counts the listing itself and
    # count_the_watch_listing_of_namespaces can go.
    original = getattr(
        observation.process_discovered_namespace_event,
        "__wrapped__",
        observation.process_discovered_namespace_event,
    )
    namespaces, _ = _revisions(original, _listed("team-a"))
    assert namespaces == set()


def test_a_namespace_only_the_watch_listed_is_served() -> None:
    fixed = _namespace_processor(observation.process_discovered_namespace_event)
    namespaces, notified = _revisions(
        fixed, _listed("team-a"), _listed("kube-system"), _listed("team-a")
    )
    assert namespaces == {"team-a"}  # the pattern still decides
    assert notified == 1  # told once: the second listing of team-a changed nothing


def test_a_listed_namespace_follows_kopfs_rules_as_a_watch_event_would() -> None:
    # kopf serves a terminating namespace until it is gone (its objects' last events);
    # listed or watched, the same namespace ends in the same set.
    fixed = _namespace_processor(observation.process_discovered_namespace_event)
    meta = {"deletionTimestamp": "2026-12-02T16:00:00Z"}
    modified = {"type": "MODIFIED", "object": {"metadata": {"name": "team-b", **meta}}}
    assert _revisions(fixed, _listed("team-b", **meta))[0] == _revisions(fixed, modified)[0]


def test_watch_events_still_take_kopfs_own_path() -> None:
    fixed = _namespace_processor(observation.process_discovered_namespace_event)
    added = {"type": "ADDED", "object": {"metadata": {"name": "team-c"}}}
    deleted = {"type": "DELETED", "object": {"metadata": {"name": "team-c"}}}
    assert _revisions(fixed, added) == ({"team-c"}, 1)
    assert _revisions(fixed, added, deleted)[0] == set()


def test_installing_twice_wraps_once() -> None:
    before = observation.process_discovered_namespace_event
    try:
        count_the_watch_listing_of_namespaces()
        once = observation.process_discovered_namespace_event
        count_the_watch_listing_of_namespaces()
        assert observation.process_discovered_namespace_event is once
        assert once.__wrapped__ is getattr(before, "__wrapped__", before)  # type: ignore[attr-defined]
    finally:
        observation.process_discovered_namespace_event = before
