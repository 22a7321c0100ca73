"""The tool-call syntaxes Hearth speaks: a closed, named list, each detected from the chat template.

A format knows four things: how to recognise a template that speaks it, how to put a
conversation's calls and results in the shape that template expects, the grammar of the calls it
produces (Lark text for llguidance, arguments as ``%json`` from each tool's prepared schema), and
how to read calls back out of a reply.

| format  | models (detected by)                                  | a call in the reply                                   |
|---------|-------------------------------------------------------|-------------------------------------------------------|
| hermes  | Qwen 2.5/3, Hermes 2 Pro/3 (``<tool_call>``)           | ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` |
| llama3  | Llama 3.1+ (``"parameters"`` and ``ipython``/python_tag) | ``{"name": ..., "parameters": {...}}`` as the whole reply |
| mistral | Mistral/Nemo (``[TOOL_CALLS]``)                         | ``[TOOL_CALLS][{"name": ..., "arguments": {...}}]``    |
| hearth  | any other template (SmolLM2's has no tools)             | as hermes, taught by Hearth's own system prompt; one call per reply |

The model's own template renders the tool list for the first three (``tools=`` in the template,
as transformers passes it); the hearth format writes the list into the system message itself and
turns calls and results into plain assistant and user text, so any template can render them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}  # as tojson and json.dumps write


@dataclass(frozen=True)
class Call:
    """One call read back from a reply: the tool's name and its arguments as the model wrote them (JSON text)."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Parsed:
    content: str  # the text before the calls
    calls: list[Call] = field(default_factory=list)
    error: str | None = None  # why calls were started but could not be read (cut off, not JSON)


class ToolFormat:
    """One tool-call syntax (see the module's table)."""

    name = "base"
    trigger = ""  # the text that starts the calls
    trigger_in_body = False  # the trigger is the first character of the calls' own JSON (llama3's "{")
    anywhere = True  # the calls may follow some text; else only at the start of the reply
    parallel = True  # the syntax can carry several calls in one reply
    template_tools = True  # the template renders the tool list itself

    @staticmethod
    def detect(template: str) -> bool:
        raise NotImplementedError

    # ---- rendering -------------------------------------------------------------------------------

    def messages(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """The conversation in the shape the template expects (arguments as objects, as transformers passes them)."""
        out = []
        for m in messages:
            m = dict(m)
            if m.get("tool_calls"):
                m["tool_calls"] = [_call_for_template(c) for c in m["tool_calls"]]
                m["content"] = m.get("content") or ""
            out.append(m)
        return out

    # ---- grammar ---------------------------------------------------------------------------------

    def call_text(self, name: str) -> tuple[str, str]:
        """The literal text around one call's arguments object."""
        raise NotImplementedError

    def grammar(self, schemas: dict[str, dict[str, Any]], *, parallel: bool) -> str:
        """Lark (llguidance) for the calls after the trigger (with it when ``trigger_in_body``),
        choosing among ``schemas`` (name -> prepared arguments schema)."""
        rules, alternatives = [], []
        for i, (name, schema) in enumerate(schemas.items()):
            before, after = self.call_text(name)
            rules.append(f"call_{i}: {json.dumps(before)} args_{i} {json.dumps(after)}")
            rules.append(f"args_{i}: %json {json.dumps({**schema, 'x-guidance': JSON_STYLE})}")
            alternatives.append(f"call_{i}")
        head = self.calls_rule(parallel=parallel and self.parallel)
        return "\n".join([head, "call: " + " | ".join(alternatives), *rules]) + "\n"

    def calls_rule(self, *, parallel: bool) -> str:
        raise NotImplementedError

    # ---- parsing ---------------------------------------------------------------------------------

    def parse(self, text: str) -> Parsed:
        raise NotImplementedError

    def start(self, text: str) -> int | None:
        """Where the calls start in ``text`` (the trigger's position), or None."""
        if self.anywhere:
            at = text.find(self.trigger)
            return None if at < 0 else at
        stripped = text.lstrip()
        return len(text) - len(stripped) if stripped.startswith(self.trigger) else None


class HermesFormat(ToolFormat):
    """``<tool_call>`` JSON blocks: Qwen 2.5 and 3, NousResearch Hermes 2 Pro and 3."""

    name = "hermes"
    trigger = "<tool_call>"

    @staticmethod
    def detect(template: str) -> bool:
        return "<tool_call>" in template

    def call_text(self, name: str) -> tuple[str, str]:
        return '\n{"name": ' + json.dumps(name) + ', "arguments": ', "}\n</tool_call>"

    def calls_rule(self, *, parallel: bool) -> str:
        return 'start: call ("\\n<tool_call>" call)*' if parallel else "start: call"

    def parse(self, text: str) -> Parsed:
        """Each ``<tool_call>`` block in turn, its JSON read whole first: a string argument may
        itself contain "</tool_call>" (SmolLM2 wrote one), so the closing tag is looked for after it."""
        at = self.start(text)
        if at is None:
            return Parsed(text.strip())
        content, calls, pos = text[:at].strip(), [], at
        while (pos := text.find(self.trigger, pos)) >= 0:
            start = pos + len(self.trigger)
            start += len(text[start:]) - len(text[start:].lstrip())
            try:
                obj, end = json.JSONDecoder().raw_decode(text, start)
            except json.JSONDecodeError as exc:
                return Parsed(content, calls, f"a tool call is not complete JSON ({exc.msg})")
            rest = text[end:].lstrip()
            if not rest.startswith("</tool_call>"):
                return Parsed(content, calls, "a tool call was cut off before </tool_call>")
            call = _call(obj, "arguments")
            if isinstance(call, str):
                return Parsed(content, calls, call)
            calls.append(call)
            pos = len(text) - len(rest) + len("</tool_call>")
        return Parsed(content, calls)


class HearthFormat(HermesFormat):
    """Hearth's own prompt for templates without tool support: the hermes syntax, taught in the system message."""

    name = "hearth"
    template_tools = False
    # One call per reply: a model never trained on tools, given the choice, goes on calling until
    # max_tokens (SmolLM2 did); it calls again after it has seen the result.
    parallel = False

    @staticmethod
    def detect(template: str) -> bool:
        return True  # the last resort

    def messages(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        names: dict[str, str] = {}
        for m in messages:
            role, content = m["role"], m.get("content") or ""
            if role == "assistant" and m.get("tool_calls"):
                blocks = []
                for c in m["tool_calls"]:
                    fn = c["function"]
                    names[c.get("id", "")] = fn["name"]
                    blocks.append("<tool_call>\n" + json.dumps({"name": fn["name"], "arguments": _arguments(fn.get("arguments"))}) + "\n</tool_call>")
                out.append({"role": "assistant", "content": "\n".join(([content] if content else []) + blocks)})
            elif role == "tool":
                name = names.get(m.get("tool_call_id", ""), "")
                body = f"<tool_response name={json.dumps(name)}>\n{content}\n</tool_response>" if name else f"<tool_response>\n{content}\n</tool_response>"
                if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response"):
                    out[-1] = {"role": "user", "content": out[-1]["content"] + "\n" + body}  # parallel results: one message
                else:
                    out.append({"role": "user", "content": body})
            else:
                out.append({"role": role, "content": content})
        if tools:
            prompt = hearth_prompt(tools)
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": out[0]["content"].rstrip() + "\n\n" + prompt}
            else:
                out.insert(0, {"role": "system", "content": prompt})
        return out


def hearth_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The system text that teaches a model without tool support the hermes syntax."""
    listing = "\n".join(json.dumps(t["function"] if "function" in t else t, ensure_ascii=False) for t in tools)
    return (
        "You can call functions (tools) to help answer. Their signatures, one per line:\n<tools>\n" + listing + "\n</tools>\n"
        "To call one, reply with only:\n<tool_call>\n{\"name\": <function name>, \"arguments\": <arguments as a JSON object>}\n</tool_call>\n"
        "Each function's result comes back in <tool_response></tool_response>; then answer the user with it."
    )


class Llama3Format(ToolFormat):
    """Llama 3.1+ JSON tool calls: the whole reply is ``{"name": ..., "parameters": {...}}``, one call."""

    name = "llama3"
    trigger = "{"
    trigger_in_body = True
    anywhere = False
    parallel = False

    @staticmethod
    def detect(template: str) -> bool:
        return '"parameters"' in template and ("ipython" in template or "<|python_tag|>" in template)

    def call_text(self, name: str) -> tuple[str, str]:
        return '{"name": ' + json.dumps(name) + ', "parameters": ', "}"

    def calls_rule(self, *, parallel: bool) -> str:
        return "start: call"

    def parse(self, text: str) -> Parsed:
        body = text.strip()
        if body.startswith("<|python_tag|>"):
            body = body[len("<|python_tag|>") :].lstrip()
        if not body.startswith("{"):
            return Parsed(text.strip())
        call = _read_call(body, "parameters")
        return Parsed("", [call]) if isinstance(call, Call) else Parsed("", [], call)


class MistralFormat(ToolFormat):
    """``[TOOL_CALLS]`` followed by a JSON list of calls: Mistral 7B v0.3, Nemo, Small."""

    name = "mistral"
    trigger = "[TOOL_CALLS]"

    @staticmethod
    def detect(template: str) -> bool:
        return "[TOOL_CALLS]" in template

    def messages(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """Mistral's templates insist on 9-character alphanumeric call ids: derive one from each of ours."""
        out = super().messages(messages, tools)
        for m in out:
            if m.get("tool_calls"):
                m["tool_calls"] = [{**c, "id": mistral_id(c.get("id", ""))} for c in m["tool_calls"]]
            if m.get("role") == "tool":
                m["tool_call_id"] = mistral_id(m.get("tool_call_id", ""))
        return out

    def call_text(self, name: str) -> tuple[str, str]:
        return '{"name": ' + json.dumps(name) + ', "arguments": ', "}"

    def calls_rule(self, *, parallel: bool) -> str:
        return 'start: "[" call (", " call)* "]"' if parallel else 'start: "[" call "]"'

    def parse(self, text: str) -> Parsed:
        at = self.start(text)
        if at is None:
            return Parsed(text.strip())
        content, body = text[:at].strip(), text[at + len(self.trigger) :].strip()
        try:
            items, _ = json.JSONDecoder().raw_decode(body)
        except json.JSONDecodeError as exc:
            return Parsed(content, [], f"the tool calls are not complete JSON ({exc.msg})")
        items = items if isinstance(items, list) else [items]
        calls = []
        for item in items:
            call = _read_call(json.dumps(item), "arguments")
            if isinstance(call, str):
                return Parsed(content, calls, call)
            calls.append(call)
        return Parsed(content, calls)


FORMATS: dict[str, ToolFormat] = {f.name: f for f in (Llama3Format(), MistralFormat(), HermesFormat(), HearthFormat())}


def detect(template: str | None) -> ToolFormat:
    """The format a chat template speaks; Hearth's own for a template without tools (or none at all)."""
    if template and "tools" in template:
        for fmt in (FORMATS["mistral"], FORMATS["llama3"], FORMATS["hermes"]):
            if fmt.detect(template):
                return fmt
    return FORMATS["hearth"]


def mistral_id(call_id: str) -> str:
    """A stable 9-character alphanumeric id for one of ours (Mistral's templates refuse any other)."""
    return hashlib.sha1(call_id.encode("utf-8")).hexdigest()[:9]


def _read_call(body: str, key: str) -> Call | str:
    """A `Call` from a JSON object ``{"name", key: {...}}``; else the reason it is not one."""
    try:
        obj, _ = json.JSONDecoder().raw_decode(body.strip())
    except json.JSONDecodeError as exc:
        return f"a tool call is not complete JSON ({exc.msg})"
    return _call(obj, key)


def _call(obj: Any, key: str) -> Call | str:
    """A `Call` from a decoded ``{"name", key: {...}}``; else the reason it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return "a tool call has no function name"
    args = obj.get(key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return f"the arguments of {obj['name']} are not JSON"
    if not isinstance(args, dict):
        return f"the arguments of {obj['name']} are not a JSON object"
    return Call(obj["name"], json.dumps(args, ensure_ascii=False))


def _arguments(raw: Any) -> Any:
    """OpenAI sends arguments as JSON text; templates (and transformers) want the object."""
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return raw
    return raw if raw is not None else {}


def _call_for_template(call: dict[str, Any]) -> dict[str, Any]:
    fn = dict(call.get("function") or {})
    fn["arguments"] = _arguments(fn.get("arguments"))
    return {"id": call.get("id", ""), "type": "function", "function": fn}


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_name(name: Any) -> bool:
    """OpenAI's rule for function names, which every format here can carry."""
    return isinstance(name, str) and bool(_NAME.match(name))
