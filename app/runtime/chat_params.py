"""The chat request: its messages (tool calls and results included), sampling, context policy,
speculation, tools and documents, each checked with a message that names the field.

Apart from the protocol's envelope (`app.runtime.protocol`) because it is most of what is checked:
the engine, the API's engine side and the tests build it; the studio sends its plain JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from app.runtime.protocol import CONTEXT_POLICIES, ROLES, ErrorKind, RuntimeFailure, Sampling, checked


@dataclass(frozen=True)
class ChatParams:
    messages: tuple[dict[str, str], ...]
    model: str | None = None  # a library id or a file path; None = the loaded or default model
    backend: str = "auto"
    sampling: Sampling = field(default_factory=Sampling)
    context_policy: str = "rolling_window"  # one of CONTEXT_POLICIES
    chat_template: str | None = None  # a Jinja chat template used instead of the model's
    prefs: dict[str, Any] = field(default_factory=dict)  # planner preferences for this chat (e.g. context_length)
    # {"collection": NAME, "query"?: text to search (default: the newest user message), "max_passages"?: 1-20}:
    # answer from a document collection (app.runtime.docs.chat); the result's `docs` says what went in and why
    docs: dict[str, Any] | None = None
    # Tool calling (issue 17; app.runtime.tools): OpenAI function tools {"type": "function", "function":
    # {"name", "description"?, "parameters"?}}; tool_choice "auto" | "none" | "required" |
    # {"type": "function", "function": {"name"}}; the result's tool_calls / finish_reason "tool_calls"
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    # Speculative decoding (issue 18; app.runtime.spec): "auto" | "off" | "lookup" | "draft:MODEL";
    # None = the person's saved setting. The result's `speculation` says what it did and why.
    speculate: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ChatParams:
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown parameter(s) {', '.join(unknown)} (known: {', '.join(f.name for f in fields(cls))})")
        messages = raw.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'messages' must be a non-empty list")
        clean = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'messages[{i}]' must be an object")
            role, content = message.get("role"), message.get("content")
            if role in TOOL_ROLES or message.get("tool_calls"):
                clean.append(_tool_message(message, i))
                continue
            if role not in ROLES:
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'messages[{i}]' has an unknown role {role!r}")
            if not isinstance(content, str):
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'messages[{i}]' needs string content")
            clean.append({"role": role, "content": content})
        model = raw.get("model")
        if model is not None:
            checked(model, str, "model")
        policy = checked(raw.get("context_policy", "rolling_window"), str, "context_policy")
        if policy not in CONTEXT_POLICIES:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'context_policy' must be one of {', '.join(CONTEXT_POLICIES)}, not {policy!r}")
        template = raw.get("chat_template")
        if template is not None and (not isinstance(template, str) or not template.strip()):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'chat_template' must be a non-empty Jinja template string")
        return cls(
            messages=tuple(clean),
            model=model,
            backend=checked(raw.get("backend", "auto"), str, "backend"),
            sampling=Sampling.from_dict(raw.get("sampling")),
            context_policy=policy,
            chat_template=template,
            prefs=dict(checked(raw.get("prefs") or {}, dict, "prefs")),
            docs=_docs_request(raw.get("docs")),
            tools=_tools(raw.get("tools")),
            tool_choice=_tool_choice(raw.get("tool_choice", "auto")),
            parallel_tool_calls=checked(raw.get("parallel_tool_calls", True), bool, "parallel_tool_calls"),
            speculate=_speculate(raw.get("speculate")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": list(self.messages),
            "model": self.model,
            "backend": self.backend,
            "sampling": self.sampling.to_dict(),
            "context_policy": self.context_policy,
            "chat_template": self.chat_template,
            "prefs": dict(self.prefs),
            **({"docs": dict(self.docs)} if self.docs is not None else {}),
            **({"tools": list(self.tools), "tool_choice": self.tool_choice, "parallel_tool_calls": self.parallel_tool_calls} if self.tools else {}),
            **({"speculate": self.speculate} if self.speculate is not None else {}),
        }


SPECULATE_MODES = ("auto", "off", "lookup")  # or "draft:MODEL" (a library id, name or path)


def _speculate(raw: Any) -> str | None:
    """ChatParams.speculate checked: None, one of SPECULATE_MODES, or draft:MODEL."""
    if raw is None:
        return None
    value = checked(raw, str, "speculate").strip()
    if value in SPECULATE_MODES or (value.startswith("draft:") and value[len("draft:"):].strip()):
        return value
    raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'speculate' must be auto, off, lookup or draft:MODEL, not {raw!r}")


TOOL_ROLES = ("tool",)  # a tool's result: {"role": "tool", "tool_call_id", "content"}
_TOOL_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _tool_message(message: dict[str, Any], i: int) -> dict[str, Any]:
    """A tool result, or an assistant message carrying tool_calls (content "" or null), checked and copied."""
    where = f"'messages[{i}]'"
    role, content = message.get("role"), message.get("content")
    if role == "tool":
        if not isinstance(message.get("tool_call_id"), str) or not message["tool_call_id"]:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where} is a tool result and needs the 'tool_call_id' it answers")
        if not isinstance(content, str):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where} needs string content (the tool's result)")
        return {"role": "tool", "tool_call_id": message["tool_call_id"], "content": content}
    if role != "assistant":
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where}: only assistant messages carry tool_calls")
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where}.tool_calls must be a list")
    clean = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where}.tool_calls[{j}] needs an 'id' and a function with a 'name'")
        arguments = fn.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)  # a client that sent the object itself
        clean.append({"id": call["id"], "type": "function", "function": {"name": fn["name"], "arguments": arguments}})
    if content is not None and not isinstance(content, str):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where} needs string content (or null beside tool_calls)")
    return {"role": "assistant", "content": content or "", "tool_calls": clean}


def _tools(raw: Any) -> tuple[dict[str, Any], ...]:
    """ChatParams.tools checked for shape (the JSON schemas themselves are checked by app.runtime.tools.schema)."""
    if raw is None:
        return ()
    checked(raw, list, "tools")
    out = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'tools[{i}]' must be {{\"type\": \"function\", \"function\": {{...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or set(name) - _TOOL_NAME_CHARS:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'tools[{i}].function.name' must be 1-64 letters, digits, _ or -")
        if fn.get("description") is not None:
            checked(fn["description"], str, f"tools[{i}].function.description")
        if fn.get("parameters") is not None:
            checked(fn["parameters"], dict, f"tools[{i}].function.parameters")
        out.append({"type": "function", "function": {k: v for k, v in fn.items() if k in ("name", "description", "parameters") and v is not None}})
    return tuple(out)


def _tool_choice(raw: Any) -> str | dict[str, Any]:
    if raw in ("auto", "none", "required"):
        return str(raw)
    fn = raw.get("function") if isinstance(raw, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str) and raw.get("type", "function") == "function":
        return {"type": "function", "function": {"name": fn["name"]}}
    raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}")


def _docs_request(raw: Any) -> dict[str, Any] | None:
    """ChatParams.docs checked: a collection name, and optionally the query and how many passages."""
    if raw is None:
        return None
    checked(raw, dict, "docs")
    unknown = sorted(set(raw) - {"collection", "query", "max_passages"})
    if unknown:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown 'docs' field(s) {', '.join(unknown)} (known: collection, query, max_passages)")
    if not isinstance(raw.get("collection"), str) or not raw["collection"]:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'docs.collection' must name a document collection")
    if raw.get("query") is not None:
        checked(raw["query"], str, "docs.query")
    passages = checked(raw.get("max_passages", 8), int, "docs.max_passages")
    if not 1 <= passages <= 20:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'docs.max_passages' must be from 1 to 20")
    return {"collection": raw["collection"], "query": raw.get("query"), "max_passages": passages}
