"""The accelerator catalog: what a `gpu.type` name means on the cluster.

Built-in entries come from GPU Feature Discovery's `nvidia.com/gpu.product` values
(NVML names, spaces replaced by dashes). The platform team can add or override entries
through the operator config (see `openmodel.config`), e.g. an AMD MI300X with
`amd.com/gpu`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NVIDIA_RESOURCE = "nvidia.com/gpu"
NVIDIA_PRODUCT_LABEL = "nvidia.com/gpu.product"
# GPU Feature Discovery sets it on every NVIDIA node; CPU-only nodes lack it.
NVIDIA_PRESENT_LABEL = "nvidia.com/gpu.present"
# spec.gpu.type's pattern and length in the CRD.
GPU_TYPE_NAME = re.compile(r"(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = None

    def to_k8s(self) -> dict[str, str]:
        out = {"key": self.key, "operator": self.operator}
        if self.value is not None:
            out["value"] = self.value
        if self.effect is not None:
            out["effect"] = self.effect
        return out


@dataclass(frozen=True)
class Accelerator:
    """One accelerator type as the scheduler sees it."""

    name: str
    memory_gib: float
    node_label: str = NVIDIA_PRODUCT_LABEL
    node_label_values: tuple[str, ...] = ()
    resource_name: str = NVIDIA_RESOURCE
    tolerations: tuple[Toleration, ...] = (Toleration(key=NVIDIA_RESOURCE),)
    max_per_node: int = 8
    # A CPU-only type (`gpu.type: cpu`): no GPU limit, CPU and memory requests sized from
    # the model, and nodes chosen by `node_label` *not* existing unless values are given.
    cpu_only: bool = False

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 1024**3


def _nvidia(name: str, memory_gib: float, *products: str) -> Accelerator:
    return Accelerator(name=name, memory_gib=memory_gib, node_label_values=products)


BUILTIN_ACCELERATORS: Mapping[str, Accelerator] = {
    a.name: a
    for a in (
        _nvidia("nvidia-t4", 15, "Tesla-T4"),
        _nvidia("nvidia-a10g", 22.5, "NVIDIA-A10G"),
        _nvidia("nvidia-l4", 22.5, "NVIDIA-L4"),
        _nvidia("nvidia-l40s", 45, "NVIDIA-L40S"),
        _nvidia("nvidia-a100-40gb", 40, "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"),
        _nvidia("nvidia-a100-80gb", 80, "NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
        _nvidia("nvidia-h100-80gb", 79.6, "NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"),
        _nvidia("nvidia-h200", 140, "NVIDIA-H200"),
        _nvidia("nvidia-b200", 179, "NVIDIA-B200"),
        # CPU-only nodes: those without GPU Feature Discovery's label (no toleration, so
        # tainted GPU nodes are out too). memory_gib 0: no GPU budget, never suggested
        # as a GPU type.
        Accelerator(
            name="cpu",
            memory_gib=0,
            node_label=NVIDIA_PRESENT_LABEL,
            resource_name="",
            tolerations=(),
            max_per_node=1,
            cpu_only=True,
        ),
    )
}


class AcceleratorConfigError(ValueError):
    """A platform-config accelerator entry is malformed."""


def accelerator_from_config(name: str, raw: Mapping[str, Any]) -> Accelerator:
    """Build an accelerator from a platform-config entry, with a clear error per field.

    Accepted keys: memoryGiB (required), nodeLabel, nodeLabelValues (required, list),
    resourceName, tolerations (list of {key, operator, value, effect}), maxPerNode;
    or `cpuOnly: true` with nodeLabel, nodeLabelValues and tolerations (a CPU node pool).
    """
    where = f"accelerators.{name}"
    if not isinstance(name, str) or not GPU_TYPE_NAME.fullmatch(name):
        # The CRD refuses any other spec.gpu.type, so such an entry could never be used.
        raise AcceleratorConfigError(
            f"{where}: the name must be what spec.gpu.type accepts: at most 63 lower-case "
            "letters, digits and '-', starting and ending with a letter or digit"
        )
    if raw.get("cpuOnly") is True:
        return _cpu_from_config(where, name, raw)
    try:
        memory = float(raw["memoryGiB"])
    except KeyError:
        raise AcceleratorConfigError(f"{where}.memoryGiB is required") from None
    except (TypeError, ValueError):
        raise AcceleratorConfigError(f"{where}.memoryGiB must be a number") from None
    if memory <= 0:
        raise AcceleratorConfigError(f"{where}.memoryGiB must be > 0")
    values = raw.get("nodeLabelValues")
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise AcceleratorConfigError(f"{where}.nodeLabelValues must be a non-empty list of strings")
    tolerations_raw = raw.get("tolerations", [{"key": raw.get("resourceName", NVIDIA_RESOURCE)}])
    if not isinstance(tolerations_raw, list):
        raise AcceleratorConfigError(f"{where}.tolerations must be a list")
    tolerations = []
    for i, t in enumerate(tolerations_raw):
        if not isinstance(t, Mapping) or not isinstance(t.get("key"), str):
            raise AcceleratorConfigError(f"{where}.tolerations[{i}].key must be a string")
        tolerations.append(
            Toleration(
                key=t["key"],
                operator=str(t.get("operator", "Exists")),
                value=t.get("value"),
                effect=t.get("effect"),
            )
        )
    max_per_node = raw.get("maxPerNode", 8)
    if not isinstance(max_per_node, int) or max_per_node < 1:
        raise AcceleratorConfigError(f"{where}.maxPerNode must be an integer >= 1")
    return Accelerator(
        name=name,
        memory_gib=memory,
        node_label=str(raw.get("nodeLabel", NVIDIA_PRODUCT_LABEL)),
        node_label_values=tuple(values),
        resource_name=str(raw.get("resourceName", NVIDIA_RESOURCE)),
        tolerations=tuple(tolerations),
        max_per_node=max_per_node,
    )


def _cpu_from_config(where: str, name: str, raw: Mapping[str, Any]) -> Accelerator:
    """A CPU-only node type: nodeLabel and nodeLabelValues select the nodes (without
    values: nodes where nodeLabel does not exist), optional tolerations."""
    values = raw.get("nodeLabelValues", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise AcceleratorConfigError(f"{where}.nodeLabelValues must be a list of strings")
    tolerations = []
    for i, t in enumerate(raw.get("tolerations") or []):
        if not isinstance(t, Mapping) or not isinstance(t.get("key"), str):
            raise AcceleratorConfigError(f"{where}.tolerations[{i}].key must be a string")
        tolerations.append(
            Toleration(t["key"], str(t.get("operator", "Exists")), t.get("value"), t.get("effect"))
        )
    return Accelerator(
        name=name,
        memory_gib=0,
        node_label=str(raw.get("nodeLabel", NVIDIA_PRESENT_LABEL)),
        node_label_values=tuple(values),
        resource_name="",
        tolerations=tuple(tolerations),
        max_per_node=1,
        cpu_only=True,
    )


@dataclass(frozen=True)
class AcceleratorCatalog:
    entries: Mapping[str, Accelerator] = field(default_factory=lambda: dict(BUILTIN_ACCELERATORS))

    def get(self, name: str) -> Accelerator | None:
        return self.entries.get(name)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def extended(self, raw: Mapping[str, Mapping[str, Any]]) -> AcceleratorCatalog:
        """A catalog with platform entries added or overriding built-ins."""
        merged = dict(self.entries)
        for name, entry in raw.items():
            merged[name] = accelerator_from_config(name, entry)
        return AcceleratorCatalog(entries=merged)
