"""OpenAI request bodies -> `server.generate` job params (plain JSON for the dispatcher).

Everything a local engine cannot honour is refused here with a 400 that says so, before the
request takes a place in the queue.
"""

from __future__ import annotations

import json
from typing import Any

from app.server import limits, schemas
from app.server.config import ServerConfig
from app.server.errors import ApiError

MAX_STOP = 4


def _sampling(body: Any, max_tokens: int | None, config: ServerConfig) -> dict[str, Any]:
    sampling: dict[str, Any] = {"max_tokens": min(max_tokens or config.max_tokens, config.max_tokens)}
    if body.temperature is not None:
        sampling["temperature"] = float(body.temperature)
    if body.top_p is not None:
        sampling["top_p"] = max(float(body.top_p), 1e-6)  # OpenAI allows 0 (only the top token); Hearth needs > 0
    if body.seed is not None:
        sampling["seed"] = int(body.seed)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP:
        raise ApiError(400, f"At most {MAX_STOP} stop sequences are allowed.", param="stop", code="invalid_value")
    stop = [s for s in stop if s]
    if stop:
        sampling["stop"] = stop
    return sampling


def chat_params(body: schemas.ChatCompletionRequest, config: ServerConfig) -> dict[str, Any]:
    limits.check_openai_chat(body, config.limits)  # bounded work and valid text before anything else (app.server.limits)
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported by this server.", param="logprobs", code="unsupported")
    messages = [_message(i, message) for i, message in enumerate(body.messages)]
    params: dict[str, Any] = {
        "kind": "chat",
        "model": body.model,
        "messages": messages,
        "sampling": _sampling(body, body.max_completion_tokens or body.max_tokens, config),
    }
    params.update(_tools(body))
    if body.response_format is not None and body.response_format.type != "text":
        fmt: dict[str, Any] = {"type": body.response_format.type}
        if body.response_format.type == "json_schema":
            spec = body.response_format.json_schema
            if spec is None or not spec.schema_:
                raise ApiError(400, "response_format json_schema needs json_schema.schema, a JSON schema object.", param="response_format", code="invalid_value")
            fmt["json_schema"] = {"name": spec.name, "schema": spec.schema_}
        params["response_format"] = fmt
    return params


def _message(i: int, message: schemas.ChatMessage) -> dict[str, Any]:
    """One chat message as the runtime takes it: tool results keep their call id, assistant calls their list."""
    if message.role == "tool":
        if not message.tool_call_id:
            raise ApiError(400, f"messages[{i}] is a tool result without the tool_call_id it answers.", param=f"messages.{i}.tool_call_id", code="invalid_value")
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.text()}
    role = "system" if message.role == "developer" else message.role
    if message.tool_calls:
        if role != "assistant":
            raise ApiError(400, f"messages[{i}]: only assistant messages carry tool_calls.", param=f"messages.{i}.tool_calls", code="invalid_value")
        calls = []
        for j, call in enumerate(message.tool_calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
                raise ApiError(400, f"messages[{i}].tool_calls[{j}] needs an id and a function with a name.", param=f"messages.{i}.tool_calls", code="invalid_value")
            arguments = fn.get("arguments", "{}")
            calls.append({"id": call["id"], "type": "function",
                          "function": {"name": fn["name"], "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
        return {"role": "assistant", "content": message.text(), "tool_calls": calls}
    return {"role": role, "content": message.text()}


def _tools(body: schemas.ChatCompletionRequest) -> dict[str, Any]:
    """tools, tool_choice and parallel_tool_calls for the runtime; their schemas are checked there (a 400 naming the keyword)."""
    out: dict[str, Any] = {}
    if body.tools:
        tools = []
        for i, tool in enumerate(body.tools):
            fn = tool.get("function")
            if tool.get("type", "function") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise ApiError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\", \"parameters\"...}}}}.", param=f"tools.{i}", code="invalid_value")
            tools.append({"type": "function", "function": {k: v for k, v in fn.items() if k in ("name", "description", "parameters") and v is not None}})
        out["tools"] = tools
    choice = body.tool_choice
    if choice is not None:
        named = isinstance(choice, dict) and isinstance(choice.get("function"), dict) and isinstance(choice["function"].get("name"), str)
        if choice not in ("auto", "none", "required") and not named:
            raise ApiError(400, "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                           param="tool_choice", code="invalid_value")
        if choice != "none" and not body.tools:
            raise ApiError(400, "tool_choice needs 'tools'.", param="tool_choice", code="invalid_value")
        out["tool_choice"] = {"type": "function", "function": {"name": choice["function"]["name"]}} if named else choice
    if body.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = bool(body.parallel_tool_calls)
    return out


def completion_params(body: schemas.CompletionRequest, config: ServerConfig) -> dict[str, Any]:
    limits.check_openai_completion(body, config.limits)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, "Send one prompt per request (a list of exactly one string).", param="prompt", code="invalid_value")
        prompt = prompt[0]
    if body.echo or body.suffix or body.logprobs:
        raise ApiError(400, "echo, suffix and logprobs are not supported by this server.", param="echo" if body.echo else "suffix" if body.suffix else "logprobs", code="unsupported")
    return {"kind": "completion", "model": body.model, "prompt": prompt, "sampling": _sampling(body, body.max_tokens, config)}
