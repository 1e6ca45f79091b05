"""Wall-clock timestamps in the form Kubernetes uses for conditions and events."""

from __future__ import annotations

import datetime as dt


def utc_now() -> str:
    """Now, as RFC 3339 UTC with second precision (metav1.Time)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
