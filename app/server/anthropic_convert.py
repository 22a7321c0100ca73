"""Anthropic Messages <-> the engine's chat contract (OpenAI-shaped messages and tool calls).

Pure functions, so the mapping is read and tested in one place:

- ``system`` becomes a system message; text blocks are joined; ``tool_use`` blocks in an assistant
  turn become its ``tool_calls`` (arguments as a JSON string); ``tool_result`` blocks in a user
  turn become ``role: "tool"`` messages (before the turn's own text, as Anthropic orders them).
- ``tools`` become function tools with ``input_schema`` as ``parameters``; ``tool_choice`` auto /
  any / tool / none become "auto" / "required" / a named function / "none", and
  ``disable_parallel_tool_use`` becomes ``parallel_tool_calls: false``.
- The engine's ``call_...`` ids are shown as ``toolu_...``; ids coming back are passed through
  as they are (the engine only needs a call and its result to agree).

``stop_sequences`` are not handed to the engine: the server watches the text for them itself
(`StopWatch`), because Anthropic's answer says which one ended the reply.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from app.server.anthropic_schemas import MessagesRequest, OtherBlock, TextBlock, ToolResultBlock, ToolUseBlock

IGNORED_IN_HISTORY = ("thinking", "redacted_thinking")  # a client replays them; a local model never made them


class BadRequest(Exception):
    """A request the engine cannot serve, worded for the client (a 400 ``invalid_request_error``)."""


def engine_messages(body: MessagesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = body.system_text()
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(body.messages):
        blocks = [TextBlock(type="text", text=message.content)] if isinstance(message.content, str) else list(message.content)
        for j, block in enumerate(blocks):
            if isinstance(block, OtherBlock) and block.type not in IGNORED_IN_HISTORY:
                raise BadRequest(f"messages.{i}.content.{j}: '{block.type}' blocks are not supported by this server; send text.")
        text = "".join(block.text for block in blocks if isinstance(block, TextBlock))
        uses = [block for block in blocks if isinstance(block, ToolUseBlock)]
        results = [block for block in blocks if isinstance(block, ToolResultBlock)]
        if message.role == "assistant":
            if results:
                raise BadRequest(f"messages.{i}: tool_result blocks belong in a user message.")
            turn: dict[str, Any] = {"role": "assistant", "content": text}
            if uses:
                turn["tool_calls"] = [{"id": u.id, "type": "function", "function": {"name": u.name, "arguments": json.dumps(u.input)}} for u in uses]
            messages.append(turn)
            continue
        if uses:
            raise BadRequest(f"messages.{i}: tool_use blocks belong in an assistant message.")
        for result in results:
            content = result.text()
            messages.append({"role": "tool", "tool_call_id": result.tool_use_id, "content": f"Error: {content}" if result.is_error else content})
        if text or not results:
            messages.append({"role": "user", "content": text})
    if body.messages[-1].role == "assistant":
        raise BadRequest("The last message is the assistant's (a prefill to continue); this server answers a user message. "
                         "Put the text to continue in the user message instead.")
    return messages


def engine_tools(body: MessagesRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` for the engine (nothing without tools)."""
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice.type != "none":
            raise BadRequest("tool_choice needs tools: send 'tools' with the request, or leave tool_choice out.")
        return {}
    names = []
    for i, tool in enumerate(body.tools):
        if tool.type not in (None, "custom"):
            raise BadRequest(f"tools.{i}: server tools ('{tool.type}') are not available here; describe a tool with name and input_schema.")
        names.append(tool.name)
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "", "parameters": t.input_schema}} for t in body.tools]
    params: dict[str, Any] = {"tools": tools}
    if choice is not None:
        if choice.type == "tool":
            if not choice.name or choice.name not in names:
                raise BadRequest(f"tool_choice names the tool {choice.name!r}, which is not among the tools ({', '.join(names)}).")
            params["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            params["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            params["parallel_tool_calls"] = False
    return params


def sampling(body: MessagesRequest, limit: int) -> dict[str, Any]:
    """max_tokens is required by the API; a client's ceiling above the server's limit is capped, not refused
    (clients written for Anthropic send large ones by habit)."""
    values: dict[str, Any] = {"max_tokens": min(body.max_tokens, limit)}
    if body.temperature is not None:
        values["temperature"] = float(body.temperature)
    if body.top_p is not None:
        values["top_p"] = max(float(body.top_p), 1e-6)
    if body.top_k:
        values["top_k"] = int(body.top_k)
    return values


def stops(body: MessagesRequest) -> list[str]:
    return [s for s in body.stop_sequences or () if s]


# ---- the answer ---------------------------------------------------------------------------------


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_") if call_id.startswith("call_") else call_id


def tool_blocks(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The result's tool calls as ``tool_use`` blocks (arguments parsed: the engine's always parse)."""
    blocks = []
    for call in data.get("tool_calls") or ():
        function = call.get("function", {})
        arguments = function.get("arguments") or "{}"
        blocks.append({"type": "tool_use", "id": tool_use_id(str(call.get("id", ""))), "name": function.get("name", ""),
                       "input": json.loads(arguments) if isinstance(arguments, str) else arguments})
    return blocks


def stop_reason(data: dict[str, Any], matched: str | None) -> str:
    if matched is not None:
        return "stop_sequence"
    reason = data.get("finish_reason")
    if reason == "tool_calls" or data.get("tool_calls"):
        return "tool_use"
    return "max_tokens" if reason == "length" else "end_turn"


def usage(data: dict[str, Any]) -> dict[str, int]:
    used = data.get("usage", {})
    return {"input_tokens": int(used.get("prompt_tokens", 0)), "output_tokens": int(used.get("completion_tokens", 0))}


def message(ident: str, model: str, text: str, data: dict[str, Any], matched: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return {"id": ident, "type": "message", "role": "assistant", "model": model, "content": content + tool_blocks(data),
            "stop_reason": stop_reason(data, matched), "stop_sequence": matched, "usage": usage(data)}


class StopWatch:
    """Finds the first stop sequence in streamed text, holding back a tail that may be the start of one.

    ``feed`` returns the text that is safe to show; once a sequence is found, ``matched`` names it
    and nothing more is shown (the sequence itself never is, as Anthropic does).
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None
        self.text = ""  # everything shown so far

    def feed(self, piece: str) -> str:
        if self.matched is not None:
            return ""
        pending = self._held + piece
        found = [(pending.find(s), s) for s in self._stops if s in pending]
        if found:
            at, self.matched = min(found)
            self._held = ""
            return self._show(pending[:at])
        keep = max((k for s in self._stops for k in range(1, len(s)) if pending.endswith(s[:k])), default=0)
        self._held = pending[len(pending) - keep:] if keep else ""
        return self._show(pending[:len(pending) - keep])

    def flush(self) -> str:
        """At the end of the reply: a held tail that turned out not to be a stop sequence."""
        tail, self._held = ("" if self.matched is not None else self._held), ""
        return self._show(tail)

    def _show(self, text: str) -> str:
        self.text += text
        return text
