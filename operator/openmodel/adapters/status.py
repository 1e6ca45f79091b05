"""`status.adapters`, `status.adaptersReady` and condition AdaptersReady, from what the
engines report.

Pure. An adapter counts as loaded on a pod only when that pod's own `/v1/models` lists
it, never because a load was sent; a pod whose list could not be read counts as not
having any.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ADAPTERS_READY = "AdaptersReady"


@dataclass(frozen=True)
class PodReport:
    pod: str
    loaded: frozenset[str] | None  # None: the engine's list could not be read


def adapters_status(
    declared: Sequence[str],
    reports: Sequence[PodReport],
    errors: Mapping[str, str],
    generation: int,
) -> dict[str, Any]:
    ready = len(reports)
    entries = []
    complete = 0
    missing: list[str] = []
    for name in declared:
        on = sum(1 for r in reports if r.loaded is not None and name in r.loaded)
        entry: dict[str, Any] = {"name": name, "loadedPods": on, "readyPods": ready}
        if name in errors:
            entry["lastError"] = errors[name][:1000]
        entries.append(entry)
        if ready and on == ready:
            complete += 1
        else:
            missing.append(name)
    if not declared:
        reason, ok, message = "NoAdapters", True, "no adapters declared"
    elif not ready:
        reason, ok, message = "NoReadyPods", False, "no ready pod to load adapters on"
    elif not missing:
        reason, ok, message = "AllLoaded", True, f"{complete} adapter(s) loaded on {ready} pod(s)"
    else:
        failed = [n for n in missing if n in errors]
        first = failed[0] if failed else missing[0]
        ok = False
        reason = "AdapterFailed" if failed else "AdapterMissing"
        detail = f": {errors[first]}" if first in errors else ""
        message = (
            f"adapter {first} loaded on "
            f"{next(e['loadedPods'] for e in entries if e['name'] == first)}/{ready} ready "
            f"pod(s){detail}"
        )
        if len(missing) > 1:
            message += f" (and {len(missing) - 1} more not everywhere)"
    return {
        "adapters": entries,
        "adaptersReady": f"{complete}/{len(declared)}",
        "conditions": [
            {
                "type": ADAPTERS_READY,
                "status": "True" if ok else "False",
                "reason": reason,
                "message": message[:32000],
                "observedGeneration": generation,
            }
        ],
    }
