"""What the operator is waiting on, on request: `kill -USR2 <pid>` logs every asyncio task
with where it is suspended, and kopf's readiness blockers (its toggles that are off: a
watch whose first listing never finished keeps every handler of every kind waiting).
`kill -USR1` (`__main__`) prints the threads' stacks instead; that one works even when
the event loop itself is stuck, this one needs the loop.

kopf keeps its toggles private; they are found by type, read only, and a kopf without
them gives a dump without that part.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

MAX_FRAMES = 6
SHOWN_NAMES = 40  # every kopf watcher of a small cluster (resource@namespace)


def install(loop: asyncio.AbstractEventLoop) -> None:
    loop.add_signal_handler(signal.SIGUSR2, lambda: log.warning("%s", dump()))


def dump() -> str:
    lines = ["what the operator waits on (SIGUSR2):"]
    # Tasks suspended at the same place (a watcher per namespace and kind) are one line.
    by_place: dict[str, list[str]] = defaultdict(list)
    for task in asyncio.all_tasks():
        by_place[_suspended_at(task)].append(task.get_name())
    for place, names in sorted(by_place.items(), key=lambda item: sorted(item[1])[0]):
        shown = ", ".join(sorted(names)[:SHOWN_NAMES])
        more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
        lines.append(f"  task {shown}{more}: {place}")
    blockers = sorted(kopf_blockers())
    lines.append(f"  kopf blockers: {', '.join(blockers) if blockers else 'none'}")
    return "\n".join(lines)


def _suspended_at(task: asyncio.Task[Any]) -> str:
    frames = task.get_stack(limit=MAX_FRAMES)
    if not frames:
        return "done" if task.done() else "not started"
    return " > ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames)


def kopf_blockers() -> Iterable[str]:
    """The names of kopf's toggles that hold a toggle set back: off ones where all must be
    on (readiness: the first listings), on ones where any pauses (the pause set)."""
    try:
        from kopf._cogs.aiokits.aiotoggles import ToggleSet
    except ImportError:  # pragma: no cover - another kopf layout
        return []
    found: list[str] = []
    for obj in gc.get_objects():
        if not isinstance(obj, ToggleSet):
            continue
        fn = getattr(obj, "_fn", None)
        toggles = list(obj)
        if fn is all:
            found.extend(f"not yet: {t.name or '?'}" for t in toggles if t.is_off())
        elif fn is any:
            found.extend(f"paused: {t.name or '?'}" for t in toggles if t.is_on())
    return found
