"""Comparing and writing one loop's part of a ModelDeployment's status: its fields and its own
condition, under its own field manager, keeping lastTransitionTime while the
condition's status holds. Shared by the autoscaler and the adapter loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.api import API_VERSION, KIND, status_conditions
from openmodel.clock import utc_now
from openmodel.kube import calls as kube


def loop_status_changed(desired: Mapping[str, Any], observed: Any) -> bool:
    """True when the observed status lacks the loop's fields or its condition as
    `desired` has them (lastTransitionTime aside: it is kept, not compared)."""
    if not isinstance(observed, Mapping):
        # None, or a status that is not an object at all: everything is missing.
        return True
    if any(observed.get(k) != v for k, v in desired.items() if k != "conditions"):
        return True
    mine = desired["conditions"][0]
    have = status_conditions(observed).get(mine["type"])
    return have is None or any(
        have.get(k) != mine[k] for k in ("status", "reason", "message", "observedGeneration")
    )


def apply_loop_status(
    api: client.ApiClient,
    key: tuple[str, str],
    status: dict[str, Any],
    observed: Any,
    field_manager: str,
) -> dict[str, Any] | None:
    """`status` holds the loop's fields and one condition (`conditions[0]`); a
    ModelDeployment deleted meanwhile is not an error (None). Returns the API's answer."""
    mine = status["conditions"][0]
    before = status_conditions(observed).get(mine["type"])
    kept = before.get("lastTransitionTime") if before is not None else None
    if before is not None and before.get("status") == mine["status"] and isinstance(kept, str):
        mine["lastTransitionTime"] = kept or utc_now()
    else:
        mine["lastTransitionTime"] = utc_now()
    try:
        return kube.apply(
            api,
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": key[1], "namespace": key[0]},
                "status": status,
            },
            field_manager=field_manager,
            subresource="status",
        )
    except ApiException as e:
        if e.status != 404:
            raise
        return None
