"""The namespaces whose data must stay in the cluster (labelled `openmodel.dev/data:
private`), as the gateway's namespace watch last saw them.

Until the first list arrived nothing is known, and every question answers "private":
a request is never sent out on doubt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from openmodel.api import DATA_LABEL, DATA_PRIVATE

PRIVATE_SELECTOR: Final = f"{DATA_LABEL}={DATA_PRIVATE}"


def _is_private(namespace: Mapping[str, Any]) -> bool:
    labels = (namespace.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(DATA_LABEL) == DATA_PRIVATE)


@dataclass
class PrivateNamespaces:
    names: set[str] = field(default_factory=set)
    synced: bool = False

    def is_private(self, namespace: str) -> bool:
        """True for a private namespace, and for any while the list is not known."""
        return not self.synced or namespace in self.names

    def replace(self, namespaces: Iterable[Mapping[str, Any]]) -> None:
        self.names = {n["metadata"]["name"] for n in namespaces if _is_private(n)}
        self.synced = True

    def put(self, namespace: Mapping[str, Any]) -> None:
        name = namespace["metadata"]["name"]
        if _is_private(namespace):
            self.names.add(name)
        else:
            self.names.discard(name)

    def delete(self, namespace: Mapping[str, Any]) -> None:
        self.names.discard(namespace["metadata"]["name"])
