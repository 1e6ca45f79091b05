"""A stand-in for the API server under `kube.get / apply / create / upgrade_to_apply`, for
unit tests of a reconcile pass: objects in a dict, every call counted as (verb, kind).

It keeps the rules a pass depends on: an apply carrying a resourceVersion is refused
(409) when the object has moved on; a create of a taken name is refused (409
AlreadyExists) and writes nothing; a create files the object's fields under an Update
entry of its field manager, an apply under an Apply entry, and `upgrade_to_apply` turns
the one into the other only where its test of the entry holds (else 422). Kinds in
`unserved` answer 404 (a CRD that is not installed); a create in a namespace of
`terminating` answers 403 NamespaceTerminating (a namespace being deleted), one in a
namespace of `gone` 404 `namespaces "x" not found` (deleted already). The real API
server's behaviour is checked by the e2e tests; this one only counts and refuses.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from openmodel.kube import calls as kube

Key = tuple[str, str, str]


def namespace_terminating_error(kind: str, name: str, namespace: str) -> ApiException:
    """The API server's refusal of a create in a namespace being deleted, as it words it."""
    message = (
        f'{kind} "{name}" is forbidden: unable to create new content in namespace '
        f"{namespace} because it is being terminated"
    )
    e = ApiException(status=403, reason="Forbidden")
    e.body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": "Forbidden",
            "details": {
                "name": name,
                "kind": kind,
                "causes": [
                    {
                        "reason": "NamespaceTerminating",
                        "message": f"namespace {namespace} is being terminated",
                        "field": "metadata.namespace",
                    }
                ],
            },
            "code": 403,
        }
    )
    return e


def namespace_not_found_error(namespace: str) -> ApiException:
    """The API server's refusal of a write in a namespace that does not exist, as it
    words it (the details name the namespace, not the object written)."""
    e = ApiException(status=404, reason="Not Found")
    e.body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f'namespaces "{namespace}" not found',
            "reason": "NotFound",
            "details": {"name": namespace, "kind": "namespaces"},
            "code": 404,
        }
    )
    return e


class FakeApiServer:
    def __init__(self, unserved: frozenset[str] = frozenset()) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.events: list[dict[str, Any]] = []
        self.unserved = unserved
        self.terminating: set[str] = set()
        self.gone: set[str] = set()
        self.version = 100

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeApiServer:
        for name in ("get", "apply", "create", "upgrade_to_apply", "list_objects"):
            monkeypatch.setattr(kube, name, getattr(self, name))
        return self

    @property
    def applied(self) -> list[str]:
        """Kind/name of every spec write (apply or create), in order; events aside."""
        return [f"{k}" for verb, k in self.calls if verb in ("APPLY", "POST") and "/" not in k]

    def _bump(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def get(self, _api: Any, _av: str, kind: str, ns: str, name: str) -> Any:
        self.calls.append(("GET", kind))
        if kind in self.unserved:
            return None
        return copy.deepcopy(self.objects.get((kind, ns, name)))

    def apply(self, _api: Any, obj: Any, field_manager: str = "", subresource: Any = None) -> Any:
        kind = obj["kind"]
        self.calls.append(("APPLY", kind if subresource is None else f"{kind}/{subresource}"))
        if kind in self.unserved:
            raise ApiException(status=404, reason="Not Found")
        meta = obj["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        current = self.objects.get(key)
        wanted = meta.get("resourceVersion")
        if wanted is not None and (
            current is None or wanted != current["metadata"]["resourceVersion"]
        ):
            raise ApiException(status=409, reason="Conflict")
        new = copy.deepcopy(current) if current else {"metadata": {}}
        if subresource == "status":
            new["status"] = copy.deepcopy(obj["status"])
        else:
            new.update(copy.deepcopy({k: v for k, v in obj.items() if k != "status"}))
            new["metadata"].setdefault("uid", f"uid-{self.version}")
        entry = {"manager": field_manager or kube.FIELD_MANAGER, "operation": "Apply"}
        if subresource:
            entry["subresource"] = subresource
        entries = new["metadata"].setdefault("managedFields", [])
        if entry not in entries:
            entries.append(entry)
        self._bump(new)
        self.objects[key] = new
        return copy.deepcopy(new)

    def create(self, _api: Any, obj: Any, field_manager: str | None = None) -> Any:
        kind = obj["kind"]
        self.calls.append(("POST", kind))
        meta = obj["metadata"]
        if meta["namespace"] in self.terminating:
            raise namespace_terminating_error(kind, meta.get("name", ""), meta["namespace"])
        if meta["namespace"] in self.gone:
            raise namespace_not_found_error(meta["namespace"])
        if kind == "Event":
            self.events.append(obj)
            return obj
        key = (kind, meta["namespace"], meta["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        new = copy.deepcopy(obj)
        new["metadata"]["uid"] = f"uid-{self.version}"
        new["metadata"]["managedFields"] = [
            {"manager": field_manager or "unknown", "operation": "Update"}
        ]
        self._bump(new)
        self.objects[key] = new
        return copy.deepcopy(new)

    def upgrade_to_apply(
        self, _api: Any, obj: Any, index: int, field_manager: str = kube.FIELD_MANAGER
    ) -> Any:
        kind, meta = obj["kind"], obj["metadata"]
        self.calls.append(("PATCH", kind))
        current = self.objects[(kind, meta["namespace"], meta["name"])]
        entries = current["metadata"].get("managedFields") or []
        if index >= len(entries) or entries[index] != {
            "manager": field_manager,
            "operation": "Update",
        }:
            raise ApiException(status=422, reason="Invalid")
        entries[index]["operation"] = "Apply"
        self._bump(current)
        return copy.deepcopy(current)

    def list_objects(self, *_: Any, **__: Any) -> list[Any]:
        return []

    def edit(self, key: Key, change: Any) -> dict[str, Any]:
        """Someone else changes an object: a new resourceVersion, the watch not yet told."""
        obj = self.objects[key]
        change(obj)
        self._bump(obj)
        return copy.deepcopy(obj)
