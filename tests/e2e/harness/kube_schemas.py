"""JSON schemas for kubeconform, written here instead of downloaded: its default schema
location is a public repository these machines cannot reach, and the schemas of our own
kinds live in crds/ anyway.

- The built-in kinds come from the API server's OpenAPI v3 (``/openapi/v3``, one document
  per group-version), so they are exactly the schemas of the cluster the tests run on.
- Our kinds come from the CRD files' ``openAPIV3Schema``.

Each kind gets one standalone file named as kubeconform's template
``{{ .ResourceKind }}{{ .KindSuffix }}.json`` expects (``deployment-apps-v1.json``,
``service-v1.json``, ``modeldeployment-openmodel-v1alpha1.json``), with every schema
it references copied into its ``$defs``. The schemas are made strict, as kubeconform's own
``-strict`` schemas are: an object that lists its properties admits no other (unless it
is marked ``x-kubernetes-preserve-unknown-fields``). OpenAPI's dialect is turned into
JSON Schema's where they differ: ``nullable``, boolean ``exclusiveMinimum`` and
``exclusiveMaximum``, and int-or-string (a string format in the
built-in schemas, ``x-kubernetes-int-or-string`` in CRDs), which admits both types.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml
from kubernetes import client

from . import rawapi

# kubeconform's -schema-location, relative to the directory written by write_schemas.
LOCATION_TEMPLATE = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
_REF_PREFIX = "#/components/schemas/"
# Named, so kubeconform does not read the files as its default, draft 4 (where $defs and
# $ref beside it are not keywords, and formats are assertions).
DIALECT = "https://json-schema.org/draft/2020-12/schema"

Schema = dict[str, Any]


def file_name(group: str, version: str, kind: str) -> str:
    """kubeconform's name for a kind's schema: the group's first label, then the version."""
    suffix = f"-{group.split('.')[0].lower()}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def _strict(node: Any) -> Any:
    """A copy in JSON Schema's dialect, closed where properties are listed; ``$ref``s to
    ``#/components/schemas/X`` become ``#/$defs/X``."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: Schema = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith(_REF_PREFIX):
            out[key] = "#/$defs/" + value.removeprefix(_REF_PREFIX)
        elif key in ("properties", "patternProperties", "$defs"):
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        else:
            out[key] = _strict(value)
    if out.pop("x-kubernetes-int-or-string", False) or out.get("format") == "int-or-string":
        for key in ("type", "format"):
            out.pop(key, None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        # OpenAPI 3.0 (draft 4): a boolean beside the bound; 2020-12: the bound itself.
        if isinstance(out.get(exclusive), bool) and out.pop(exclusive) and bound in out:
            out[exclusive] = out.pop(bound)
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        elif "anyOf" in out:
            out["anyOf"].append({"type": "null"})
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_REF_PREFIX):
                yield value.removeprefix(_REF_PREFIX)
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _standalone(name: str, components: dict[str, Schema]) -> Schema:
    """The component ``name`` with every component it reaches (transitively) in $defs."""
    needed, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in needed:
            continue
        needed.add(current)
        todo.extend(_refs(components[current]))
    return {
        "$schema": DIALECT,
        "$defs": {n: _strict(components[n]) for n in sorted(needed)},
        "$ref": f"#/$defs/{name}",
    }


def _group_version(path: str) -> tuple[str, str] | None:
    """``api/v1`` -> ("", "v1"); ``apis/apps/v1`` -> ("apps", "v1"); others None."""
    parts = path.split("/")
    if parts[0] == "api" and len(parts) == 2:
        return "", parts[1]
    if parts[0] == "apis" and len(parts) == 3:
        return parts[1], parts[2]
    return None


def _get_json(api: client.ApiClient, url: str) -> Any:
    split = urlsplit(url)
    return json.loads(rawapi.call(api, "GET", split.path, query=parse_qsl(split.query)))


def api_server_schemas(api: client.ApiClient) -> Iterator[tuple[str, Schema]]:
    """(file name, standalone strict schema) for every kind the API server serves."""
    index = _get_json(api, "/openapi/v3")
    for path, entry in sorted(index["paths"].items()):
        group_version = _group_version(path)
        if group_version is None:
            continue
        components = _get_json(api, entry["serverRelativeURL"])["components"]["schemas"]
        for name, schema in components.items():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                if (gvk["group"], gvk["version"]) == group_version:
                    yield file_name(*group_version, gvk["kind"]), _standalone(name, components)


def crd_schemas(crd_files: Iterable[Path]) -> Iterator[tuple[str, Schema]]:
    """(file name, strict schema) for every version of every CRD in the files."""
    for path in crd_files:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = {"$schema": DIALECT, **_strict(version["schema"]["openAPIV3Schema"])}
                yield file_name(spec["group"], version["name"], spec["names"]["kind"]), schema


def write_schemas(directory: Path, schemas: Iterable[tuple[str, Schema]]) -> list[str]:
    """Write each schema to ``directory/<file name>``; the names written, sorted."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for name, schema in schemas:
        (directory / name).write_text(json.dumps(schema))
        names.append(name)
    return sorted(names)
