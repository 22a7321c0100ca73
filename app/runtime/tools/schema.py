"""The JSON-schema subset a tool's ``parameters`` may use, checked and made safe for a grammar.

A grammar guarantees that a call's arguments parse; it does not make a small model finish them.
SmolLM2 under a plain JSON-schema grammar loops inside a string, adds made-up keys or repeats array
items until ``max_tokens``. So before compiling, a schema gets bounds it did not state:

- a string without ``maxLength`` (and without ``enum``/``const``/``format``/``pattern``) gets
  ``maxLength: DEFAULT_MAX_LENGTH``;
- an object without ``additionalProperties`` gets ``additionalProperties: false`` (a tool's
  arguments are the properties it names);
- an array without ``maxItems`` gets ``maxItems: DEFAULT_MAX_ITEMS``.

Supported keywords (anything else is INVALID_PARAMS naming the keyword and where it is, never a
crash or a silently ignored constraint):

- ``type`` (one of object, string, integer, number, boolean, array, null, or a list of them);
- objects: ``properties``, ``required``, ``additionalProperties`` (true, false or a schema);
- strings: ``minLength``, ``maxLength``, ``pattern``, ``format`` (one of `FORMATS`);
- numbers and integers: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``;
- arrays: ``items`` (one schema), ``minItems``, ``maxItems``;
- ``enum``, ``const``, ``anyOf``, ``oneOf`` (generated as anyOf), ``$ref`` to ``#/$defs/...`` or
  ``#/definitions/...`` with those sections;
- annotations, kept and ignored: ``description``, ``title``, ``default``, ``examples``,
  ``$schema``, ``$id``, ``$comment``, ``deprecated``, ``readOnly``, ``writeOnly``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from app.runtime.protocol import ErrorKind, RuntimeFailure

DEFAULT_MAX_LENGTH = 128  # characters, for a string argument whose schema gives no bound
DEFAULT_MAX_ITEMS = 8  # items, for an array argument whose schema gives no bound
TYPES = frozenset(("object", "string", "integer", "number", "boolean", "array", "null"))
FORMATS = frozenset(("date-time", "date", "time", "email", "uuid", "ipv4", "ipv6", "hostname", "uri"))
ANNOTATIONS = frozenset(("description", "title", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly"))
_KEYWORDS = frozenset((
    "type", "properties", "required", "additionalProperties", "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "items", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions",
)) | ANNOTATIONS
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_COUNT_KEYS = ("minLength", "maxLength", "minItems", "maxItems")


def prepare(schema: Any, *, where: str = "parameters") -> dict[str, Any]:
    """A copy of ``schema`` checked against the supported subset, with the default bounds added.

    ``where`` names the schema in error messages ("tools[0].function.parameters").
    """
    if schema is None:
        schema = {"type": "object", "properties": {}}
    if not isinstance(schema, Mapping):
        raise _refuse(where, "must be a JSON-schema object")
    out = copy.deepcopy(dict(schema))
    _walk(out, where, root=out)
    return out


def _walk(node: Any, where: str, *, root: dict[str, Any]) -> None:
    if isinstance(node, bool):
        return  # true/false schemas: anything / nothing
    if not isinstance(node, dict):
        raise _refuse(where, "must be a JSON-schema object")
    for key in node:
        if key not in _KEYWORDS:
            raise _refuse(where, f"uses the JSON-schema keyword {key!r}, which Hearth's tool grammars do not support "
                                 f"(supported: {', '.join(sorted(_KEYWORDS - ANNOTATIONS))})", keyword=key)
    types = _types(node, where)
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not (ref.startswith("#/$defs/") or ref.startswith("#/definitions/")):
            raise _refuse(where, f"has $ref {ref!r}; only local references to #/$defs/... or #/definitions/... are supported", keyword="$ref")
        section, _, name = ref[2:].partition("/")
        if name not in (root.get(section) or {}):
            raise _refuse(where, f"has $ref {ref!r}, which the schema does not define", keyword="$ref")
    for section in ("$defs", "definitions"):
        if section in node:
            if node is not root or not isinstance(node[section], dict):
                raise _refuse(where, f"has {section} below the top of the schema; put definitions at the top", keyword=section)
            for name, sub in node[section].items():
                _walk(sub, f"{where}.{section}.{name}", root=root)
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        raise _refuse(where, "has an enum that is not a non-empty list", keyword="enum")
    for key in _NUMBER_KEYS:
        if key in node and (isinstance(node[key], bool) or not isinstance(node[key], (int, float))):
            raise _refuse(where, f"has {key} that is not a number", keyword=key)
    for key in _COUNT_KEYS:
        if key in node and (isinstance(node[key], bool) or not isinstance(node[key], int) or node[key] < 0):
            raise _refuse(where, f"has {key} that is not a non-negative integer", keyword=key)
    if "format" in node and node["format"] not in FORMATS:
        raise _refuse(where, f"has format {node['format']!r}; supported formats: {', '.join(sorted(FORMATS))}", keyword="format")
    if "pattern" in node and not isinstance(node["pattern"], str):
        raise _refuse(where, "has a pattern that is not a string", keyword="pattern")
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = node[key]
            if not isinstance(options, list) or not options:
                raise _refuse(where, f"has {key} that is not a non-empty list", keyword=key)
            for i, sub in enumerate(options):
                _walk(sub, f"{where}.{key}[{i}]", root=root)
    if "oneOf" in node:  # generated as anyOf: a grammar cannot check "exactly one"; the options rarely overlap
        node["anyOf"] = node.pop("oneOf")
    has_props = "properties" in node or "required" in node
    if "object" in types or (not types and has_props):
        _object(node, where, root=root)
    if "array" in types or (not types and "items" in node):
        if "items" in node:
            if isinstance(node["items"], list):
                raise _refuse(where, "has items as a list (tuple validation); give one schema for every item", keyword="items")
            _walk(node["items"], f"{where}.items", root=root)
        node.setdefault("maxItems", max(DEFAULT_MAX_ITEMS, node.get("minItems", 0)))
    if "string" in types and not any(k in node for k in ("maxLength", "enum", "const", "format", "pattern")):
        node["maxLength"] = max(DEFAULT_MAX_LENGTH, node.get("minLength", 0))


def _object(node: dict[str, Any], where: str, *, root: dict[str, Any]) -> None:
    props = node.get("properties", {})
    if not isinstance(props, dict):
        raise _refuse(where, "has properties that is not an object", keyword="properties")
    for name, sub in props.items():
        _walk(sub, f"{where}.properties.{name}", root=root)
    required = node.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _refuse(where, "has required that is not a list of names", keyword="required")
    extra = node.get("additionalProperties", False)
    if isinstance(extra, dict):
        _walk(extra, f"{where}.additionalProperties", root=root)
    elif not isinstance(extra, bool):
        raise _refuse(where, "has additionalProperties that is neither a boolean nor a schema", keyword="additionalProperties")
    node["additionalProperties"] = extra


def _types(node: dict[str, Any], where: str) -> set[str]:
    kind = node.get("type")
    if kind is None:
        return set()
    kinds = kind if isinstance(kind, list) else [kind]
    for k in kinds:
        if k not in TYPES:
            raise _refuse(where, f"has type {k!r}; JSON-schema types are {', '.join(sorted(TYPES))}", keyword="type")
    return set(kinds)


def _refuse(where: str, what: str, *, keyword: str | None = None) -> RuntimeFailure:
    return RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where} {what}.", detail=keyword or "")
