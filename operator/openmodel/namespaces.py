"""Which namespaces this operator serves (env OPENMODEL_NAMESPACES).

Empty: every namespace (cluster-wide). Otherwise a comma-separated list of namespaces or
globs (`team-a,team-*`), any of which may match. A list with a negated glob (`!`) is one
kopf pattern instead, with kopf's rules: the first glob is decisive (a leading negation
implies `*` before it) and the rightmost matching glob wins, e.g. `team-*,!team-secret`
or `!kube-*`. kopf filters its watches with the same patterns; the resync and autoscaler
loops, which list cluster-wide, filter with `matches` so that all parts agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

ENV = "OPENMODEL_NAMESPACES"


def patterns_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    globs = [g.strip() for g in raw.split(",") if g.strip()]
    if not globs:
        return []
    if any(g.startswith("!") for g in globs):
        return [",".join(globs)]
    return globs


def _matches_pattern(namespace: str, pattern: str) -> bool:
    globs = pattern.split(",")
    first = globs[0]
    if first.startswith("!"):
        result = True
    elif fnmatchcase(namespace, first):
        result = True
        globs = globs[1:]
    else:
        return False
    for glob in globs:
        if glob.startswith("!"):
            if fnmatchcase(namespace, glob[1:]):
                result = False
        elif fnmatchcase(namespace, glob):
            result = True
    return result


def matches(namespace: str, patterns: Sequence[str]) -> bool:
    """True when `namespace` is served; no patterns means every namespace."""
    return not patterns or any(_matches_pattern(namespace, p) for p in patterns)
