"""The ModelDeployment CRD's own OpenAPI schema, checked offline.

`openmodel validate` runs a file through what the API server checks before the operator
ever sees an object: fields the schema does not declare (refused by `kubectl apply
--validate=strict`, pruned with only a warning by a plain apply), then the schema's
types, enums, bounds, lengths, patterns, formats, required fields and list-map keys.
The schema is the packaged copy of crds/modeldeployment.yaml (kept byte-identical by
hack/sync-crds.sh), so these verdicts follow the server's instead of a second list.
CEL rules (`x-kubernetes-validations`) are not evaluated here: `openmodel.api` re-checks
each of them in Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from openmodel.api import VERSION

CRD_RESOURCE = "data/crds/modeldeployment.yaml"
# Keywords this module enforces, and those it leaves to others on purpose (CEL rules go
# to openmodel.api; defaults and descriptions judge nothing). A keyword in the CRD that
# is in neither set fails a unit test, so a new kind of constraint cannot be skipped.
ENFORCED_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "items",
        "enum",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "maxItems",
        "minItems",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
    }
)
IGNORED_KEYWORDS = frozenset({"description", "default", "x-kubernetes-validations"})
# ObjectMeta's fields: the CRD declares `metadata: {type: object}` and the API server
# decodes it into ObjectMeta, so strict field validation refuses anything else there.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
# The API server's own rule for a custom resource's name.
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# `format: date-time`, as leniently as the server's parser (time zone and fraction optional).
DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?"
)


@dataclass(frozen=True)
class SchemaProblem:
    """One refusal: `field` is its path as the API server writes it (`spec.adapters[1]`)."""

    field: str
    message: str
    reason: str


def unknown_field(field: str) -> SchemaProblem:
    return SchemaProblem(field, f'unknown field "{field}"', "UnknownField")


@cache
def crd_schema(version: str = VERSION) -> Mapping[str, Any]:
    """The openAPIV3Schema of `version` in the packaged CRD."""
    text = resources.files("openmodel").joinpath(CRD_RESOURCE).read_text()
    crd = yaml.safe_load(text)
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema: Mapping[str, Any] = served["schema"]["openAPIV3Schema"]
            return schema
    raise LookupError(f"{CRD_RESOURCE} serves no version {version}")


def check_object(
    body: Mapping[str, Any], schema: Mapping[str, Any] | None = None
) -> list[SchemaProblem]:
    """Every problem the API server's decoding and schema validation would report:
    unknown fields first (strict decoding refuses before validating), then the rest."""
    problems = list(_walk(body, crd_schema() if schema is None else schema, ""))
    return sorted(problems, key=lambda p: p.reason != "UnknownField")


def schema_keywords(schema: Mapping[str, Any]) -> set[str]:
    """Every keyword used anywhere in `schema` (for the drift test)."""
    found = set(schema)
    for sub in _subschemas(schema):
        found |= schema_keywords(sub)
    return found


def _subschemas(schema: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from (schema.get("properties") or {}).values()
    if isinstance(schema.get("items"), Mapping):
        yield schema["items"]


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _has_type(value: Any, schema: Mapping[str, Any]) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    wanted = schema.get("type")
    if wanted is None:
        return True
    checks: dict[str, bool] = {
        "object": isinstance(value, Mapping),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
    }
    return checks.get(str(wanted), False)


def _walk(value: Any, schema: Mapping[str, Any], path: str) -> Iterator[SchemaProblem]:
    if not _has_type(value, schema):
        wanted = "integer or string" if schema.get("x-kubernetes-int-or-string") else schema["type"]
        yield SchemaProblem(
            path,
            f"must be of type {wanted}, got {_type_name(value)} {value!r}",
            "FieldValueTypeInvalid",
        )
        return
    if isinstance(value, Mapping):
        yield from _walk_object(value, schema, path)
    elif isinstance(value, list):
        yield from _walk_array(value, schema, path)
    elif isinstance(value, str):
        yield from _check_string(value, schema, path)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield from _check_number(value, schema, path)
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        yield SchemaProblem(
            path,
            f"unsupported value {value!r}: supported values: {allowed}",
            "FieldValueNotSupported",
        )


def _walk_object(
    value: Mapping[str, Any], schema: Mapping[str, Any], path: str
) -> Iterator[SchemaProblem]:
    properties: Mapping[str, Any] = schema.get("properties") or {}
    if path == "metadata" and not properties:
        yield from _check_metadata(value)
        return
    # A null field is dropped by the API server (no schema here is nullable).
    present = {k: v for k, v in value.items() if v is not None}
    for key in schema.get("required") or []:
        if key not in present:
            yield SchemaProblem(_child(path, key), "Required value", "FieldValueRequired")
    open_fields = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    for key, item in present.items():
        sub = properties.get(key)
        if sub is not None:
            yield from _walk(item, sub, _child(path, str(key)))
        elif not open_fields:
            yield unknown_field(_child(path, str(key)))


def _check_metadata(meta: Mapping[str, Any]) -> Iterator[SchemaProblem]:
    for key in meta:
        if key not in OBJECT_META_FIELDS:
            yield unknown_field(f"metadata.{key}")
    name = meta.get("name")
    if name is not None and (
        not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name)
    ):
        yield SchemaProblem(
            "metadata.name",
            f"{name!r}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character",
            "FieldValueInvalid",
        )
    for key in ("labels", "annotations"):
        strings = meta.get(key)
        if strings is None:
            continue
        if not isinstance(strings, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in strings.items()
        ):
            yield SchemaProblem(
                f"metadata.{key}", "must be a map of strings to strings", "FieldValueTypeInvalid"
            )


def _walk_array(
    value: Sequence[Any], schema: Mapping[str, Any], path: str
) -> Iterator[SchemaProblem]:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        yield SchemaProblem(
            path, f"must have at most {schema['maxItems']} items", "FieldValueTooMany"
        )
    if "minItems" in schema and len(value) < schema["minItems"]:
        yield SchemaProblem(
            path, f"must have at least {schema['minItems']} items", "FieldValueInvalid"
        )
    items = schema.get("items")
    for i, item in enumerate(value):
        if isinstance(items, Mapping):
            yield from _walk(item, items, f"{path}[{i}]")
    yield from _check_list_keys(value, schema, path)


def _check_list_keys(
    value: Sequence[Any], schema: Mapping[str, Any], path: str
) -> Iterator[SchemaProblem]:
    list_type = schema.get("x-kubernetes-list-type")
    seen: set[str] = set()
    for i, item in enumerate(value):
        if list_type == "map" and isinstance(item, Mapping):
            keys = {k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys") or []}
            identity = repr(sorted(keys.items()))
            shown = ", ".join(f"{k}: {v!r}" for k, v in keys.items())
        elif list_type == "set":
            identity, shown = repr(item), repr(item)
        else:
            return
        if identity in seen:
            yield SchemaProblem(
                f"{path}[{i}]", f"Duplicate value: {{{shown}}}", "FieldValueDuplicate"
            )
        seen.add(identity)


def _check_string(value: str, schema: Mapping[str, Any], path: str) -> Iterator[SchemaProblem]:
    if "minLength" in schema and len(value) < schema["minLength"]:
        yield SchemaProblem(
            path, f"should be at least {schema['minLength']} chars long", "FieldValueInvalid"
        )
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        yield SchemaProblem(
            path, f"may not be more than {schema['maxLength']} bytes", "FieldValueTooLong"
        )
    pattern = schema.get("pattern")
    if pattern is not None and not go_regex(pattern).search(value):
        yield SchemaProblem(path, f"{value!r} should match '{pattern}'", "FieldValueInvalid")
    if schema.get("format") == "date-time" and not DATE_TIME.fullmatch(value):
        yield SchemaProblem(
            path,
            f"{value!r} is not a date-time (RFC 3339, e.g. 2026-01-02T03:04:05Z)",
            "FieldValueInvalid",
        )


@cache
def go_regex(pattern: str) -> re.Pattern[str]:
    """`pattern` as the API server (Go's RE2) reads it: `$` ends the text, where Python's
    `$` also matches before a final newline. (The CRD's patterns use `$` only outside
    character classes.)"""
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def _check_number(value: float, schema: Mapping[str, Any], path: str) -> Iterator[SchemaProblem]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None:
        if schema.get("exclusiveMinimum") and value <= low:
            yield SchemaProblem(
                path, f"should be greater than {low}, got {value}", "FieldValueInvalid"
            )
        elif value < low:
            yield SchemaProblem(
                path, f"should be greater than or equal to {low}, got {value}", "FieldValueInvalid"
            )
    if high is not None:
        if schema.get("exclusiveMaximum") and value >= high:
            yield SchemaProblem(
                path, f"should be less than {high}, got {value}", "FieldValueInvalid"
            )
        elif value > high:
            yield SchemaProblem(
                path, f"should be less than or equal to {high}, got {value}", "FieldValueInvalid"
            )
    bounds = INT_RANGES.get(str(schema.get("format")))
    if bounds is not None and isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
        yield SchemaProblem(
            path, f"{value} is out of the {schema['format']} range", "FieldValueInvalid"
        )
