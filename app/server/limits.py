"""Bounds on the work one API request may ask for, checked before it takes a place in the queue.

The body limit (413) bounds the bytes, not the work in them: 50,000 empty messages (1.65 MB) once
held the engine for 71 s while the chat template ran, a JSON-schema enum of 50,000 values 94 s
while its grammar was built, and a lone surrogate ("\\ud800") reached the tokenizer as a 500.
Everything costly the engine does before the first token grows with what is bounded here:
templating with the number of messages, tokenizing with the characters, grammar building with the
schema's size, depth and widest list, stop matching with the stop strings.

`check_request` is the one call every API route makes with its parsed body (OpenAI's chat and
completions, Anthropic's messages): each string anywhere in it must be valid Unicode (else a 400
naming the field) and all of them together at most `Limits.chars` characters; the route names
which list holds the messages, the stop strings and the JSON schemas (response formats, tool
parameters), which get their own bounds. A refusal is a 400 with ``code: "limit_exceeded"`` (or
``"invalid_text"``) and the limit in its words. The limits are the server's settings
(`ServerConfig.limits`), with defaults far above what a person's conversation needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.server.errors import ApiError


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (each at least 1)."""

    messages: int = 1024  # templating cost grows faster than linearly with the count
    chars: int = 1_048_576  # all the text of a request together: ~250k tokens, more than most contexts
    stop: int = 16  # stop strings (OpenAI's own rule of 4 is checked by its route)
    stop_chars: int = 256  # the longest stop string
    schema_bytes: int = 65_536  # one JSON schema, as JSON
    schema_depth: int = 32  # nesting of one JSON schema
    schema_items: int = 256  # the widest list or object in a schema: enum values, anyOf branches, properties
    body_depth: int = 64  # nesting of the request body as a whole

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | Limits | None) -> Limits:
        """Limits from settings or a start's options; unknown names and values below 1 are refused in words."""
        if raw is None:
            return cls()
        if isinstance(raw, Limits):
            return raw
        if not isinstance(raw, dict):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"The server's limits must be an object of whole numbers, not {raw!r}.")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown server limit(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))}).")
        values = {k: v for k, v in raw.items() if v is not None}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"The server limit '{name}' must be a whole number of at least 1, not {value!r}.")
        return cls(**values)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def check_request(
    body: Any,
    limits: Limits,
    *,
    messages: Sequence[Any] | None = None,
    messages_param: str = "messages",
    stop: Sequence[str] | None = None,
    stop_param: str = "stop",
    schemas: Iterable[tuple[str, Any]] = (),
) -> None:
    """Refuse (`ApiError` 400) a request over any bound, before the engine sees it.

    ``body``: the parsed request (a pydantic model or plain JSON); every string in it is checked.
    ``schemas``: (param, JSON schema) pairs whose grammars the engine would build.
    """
    if messages is not None and len(messages) > limits.messages:
        raise _over(f"{len(messages):,} messages; this server takes at most {limits.messages:,} in one request", messages_param)
    plain = body.model_dump(by_alias=True, exclude_none=True) if hasattr(body, "model_dump") else body
    check_text(plain, limits)
    if stop:
        if len(stop) > limits.stop:
            raise _over(f"{len(stop)} stop strings; this server takes at most {limits.stop}", stop_param)
        for i, text in enumerate(stop):
            if len(text) > limits.stop_chars:
                raise _over(f"a stop string of {len(text):,} characters; this server takes at most {limits.stop_chars}", f"{stop_param}.{i}")
    for param, schema in schemas:
        check_schema(schema, limits, param=param)


def check_text(value: Any, limits: Limits, *, path: str = "") -> None:
    """Every string in ``value`` (keys too) valid Unicode, all of them together within
    ``limits.chars``, and the nesting within ``limits.body_depth``."""
    total = 0
    for where, text, depth in _strings(value, path):
        if depth > limits.body_depth:
            raise _over(f"JSON nested {depth} levels deep; this server takes at most {limits.body_depth}", where or None)
        if text is None:
            continue
        total += len(text)
        if total > limits.chars:
            raise _over(f"more than {limits.chars:,} characters of text in one request", where or None)
        bad = _lone_surrogate(text)
        if bad is not None:
            raise ApiError(
                400,
                f"{where or 'The request'} is not valid text: it holds a lone surrogate (\\u{ord(text[bad]):04x}) at character {bad + 1}. "
                "Send UTF-8 text.",
                param=where or None,
                code="invalid_text",
            )


def check_schema(schema: Any, limits: Limits, *, param: str) -> None:
    """A JSON schema small enough that its grammar is cheap to build and to sample under."""
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > limits.schema_bytes:
        raise _over(f"a JSON schema of {size:,} bytes; this server takes at most {limits.schema_bytes:,}", param)
    stack: list[tuple[Any, str, int]] = [(schema, param, 1)]
    while stack:
        node, where, depth = stack.pop()
        if depth > limits.schema_depth:
            raise _over(f"a JSON schema nested more than {limits.schema_depth} levels deep", where)
        if isinstance(node, dict):
            children = list(node.items())
        elif isinstance(node, list):
            children = list(enumerate(node))
        else:
            continue
        if len(children) > limits.schema_items:
            raise _over(f"a JSON schema with {len(children):,} entries in one list or object; this server takes at most {limits.schema_items}", where)
        stack.extend((child, f"{where}.{key}", depth + 1) for key, child in children)


def _strings(value: Any, path: str) -> Iterator[tuple[str, str | None, int]]:
    """(path, string, depth) for every string in ``value`` (None for a container, to check its depth)."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, str):
            yield where, node, depth
        elif isinstance(node, dict):
            yield where, None, depth + 1
            for key, child in node.items():
                inner = f"{where}.{key}" if where else str(key)
                if isinstance(key, str):
                    yield inner, key, depth + 1
                stack.append((child, inner, depth + 1))
        elif isinstance(node, (list, tuple)):
            yield where, None, depth + 1
            stack.extend((child, f"{where}.{i}" if where else str(i), depth + 1) for i, child in enumerate(node))


def _lone_surrogate(text: str) -> int | None:
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        return int(exc.start)


def _over(what: str, param: str | None) -> ApiError:
    return ApiError(400, f"{param + ': ' if param else ''}{what}.", param=param, code="limit_exceeded")


# ---- the OpenAI routes' shapes (Anthropic's route calls `check_request` with its own) ----------


def check_openai_chat(body: Any, limits: Limits) -> None:
    """/v1/chat/completions: its messages, stop strings, and the schemas of its response format and tools."""
    schemas: list[tuple[str, Any]] = []
    response_format = getattr(body, "response_format", None)
    spec = getattr(response_format, "json_schema", None) if response_format is not None else None
    if spec is not None and getattr(spec, "schema_", None):
        schemas.append(("response_format.json_schema.schema", spec.schema_))
    for i, tool in enumerate(getattr(body, "tools", None) or []):
        function = tool.get("function") if isinstance(tool, dict) else getattr(tool, "function", None)
        parameters = function.get("parameters") if isinstance(function, dict) else getattr(function, "parameters", None)
        if parameters is not None:
            schemas.append((f"tools.{i}.function.parameters", parameters))
    check_request(body, limits, messages=body.messages, stop=_stop_list(body), schemas=schemas)


def check_openai_completion(body: Any, limits: Limits) -> None:
    """/v1/completions: its prompt (text) and stop strings."""
    check_request(body, limits, stop=_stop_list(body))


def _stop_list(body: Any) -> list[str]:
    stop = getattr(body, "stop", None)
    return [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str)]
