"""Between the rendered children and the apply: the Inference Extension objects go
through only while the API server serves their resources.

Enabled in the platform config but the CRDs not installed: the Deployment and Service
are applied as always, the InferencePool and HTTPRoute are left out, and the
ModelDeployment gets one Warning Event saying so (once per object while the CRDs stay
missing; Ready is not touched). The CRDs appear later: the next discovery (at most a
minute on) lets them through.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.inference_extension.discovery import CrdDiscovery, api_resources
from openmodel.inference_extension.render import is_extension_object
from openmodel.kube.events import post_event

UNAVAILABLE_REASON = "InferenceExtensionUnavailable"


class InferenceExtensionGate:
    def __init__(self, api: client.ApiClient, discovery: CrdDiscovery | None = None) -> None:
        self.api = api
        self.discovery = discovery or CrdDiscovery(api_resources(api))
        self._lock = threading.Lock()
        # uids of ModelDeployments already told; cleared once the CRDs are served.
        self._told: set[str] = set()

    def applicable(
        self, objects: Sequence[dict[str, Any]], md_body: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """`objects` without the Inference Extension ones while those are not served."""
        if not any(is_extension_object(o) for o in objects):
            return list(objects)
        missing = self.discovery.missing()
        if not missing:
            with self._lock:
                self._told.clear()
            return list(objects)
        uid = str(md_body["metadata"].get("uid") or "")
        with self._lock:
            first = uid not in self._told
            self._told.add(uid)
        if first:
            post_event(
                self.api,
                md_body,
                UNAVAILABLE_REASON,
                "inferenceExtension is enabled in the platform config but the API server "
                f"does not serve {', '.join(missing)}: no InferencePool or HTTPRoute was "
                "applied (install the Gateway API and Inference Extension v1.0.0+ CRDs)",
                "Warning",
            )
        return [o for o in objects if not is_extension_object(o)]

    def gone(self, obj: Mapping[str, Any], error: ApiException) -> bool:
        """An apply of an Inference Extension object found its resource gone (the CRD
        was removed since the last discovery): skip it and ask again next pass."""
        if error.status == 404 and is_extension_object(obj):
            self.discovery.invalidate()
            return True
        return False
