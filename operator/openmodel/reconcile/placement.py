"""Where an engine pod may run: node affinity, tolerations and the GPU limit."""

from __future__ import annotations

from typing import Any

from openmodel.accelerators import Accelerator


def node_affinity(accelerator: Accelerator) -> dict[str, Any]:
    expression: dict[str, Any] = {
        "key": accelerator.node_label,
        "operator": "In",
        "values": sorted(accelerator.node_label_values),
    }
    if accelerator.cpu_only and not accelerator.node_label_values:
        # CPU-only nodes are the ones without the GPU label.
        expression = {"key": accelerator.node_label, "operator": "DoesNotExist"}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [expression]}]
            }
        }
    }


def tolerations(accelerator: Accelerator) -> list[dict[str, str]]:
    return [t.to_k8s() for t in accelerator.tolerations]


def gpu_limits(accelerator: Accelerator, count: int) -> dict[str, str]:
    # Extended resources are limits-only; the request defaults to the limit.
    if accelerator.cpu_only:
        return {}
    return {accelerator.resource_name: str(count)}
