"""Does an observed object already hold everything we would apply?

Server-side apply is idempotent, but a no-op apply is still a request; comparing first
keeps a converged cluster at zero writes. Semantics follow what apply would change:
every field we set must hold our value; fields the server defaulted or others own are
ignored. Lists of scalars (args, command) must match exactly; lists of objects must
match element by element, so a removed volume or env var is seen as drift. An empty list
we set holds where the server has no key: Kubernetes omits empty lists when it stores
an object (a NetworkPolicy's `egress: []`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def holds(desired: Any, observed: Any) -> bool:
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(holds(v, observed.get(k)) for k, v in desired.items())
    if isinstance(desired, Sequence) and not isinstance(desired, str):
        if observed is None and not desired:
            return True
        if not isinstance(observed, Sequence) or isinstance(observed, str):
            return False
        if len(desired) != len(observed):
            return False
        return all(holds(d, o) for d, o in zip(desired, observed, strict=True))
    return bool(desired == observed)


def object_holds(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """True when `observed` needs no apply to become `desired` (apiVersion/kind aside)."""
    if observed is None:
        return False
    return holds({k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}, observed)
