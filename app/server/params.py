"""OpenAI request bodies -> `server.generate` job params (plain JSON for the dispatcher).

Everything a local engine cannot honour is refused here with a 400 that says so, before the
request takes a place in the queue.
"""

from __future__ import annotations

from typing import Any

from app.server import schemas
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
    if body.tools and body.tool_choice != "none":
        raise ApiError(
            400,
            "Tools (function calling) are not supported by this server's engine. Send the request without 'tools', "
            "or describe the functions in the system prompt and ask for JSON (response_format).",
            param="tools",
            code="tools_unsupported",
        )
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported by this server.", param="logprobs", code="unsupported")
    messages = []
    for i, message in enumerate(body.messages):
        if message.role == "tool" or message.tool_calls:
            raise ApiError(400, f"messages[{i}] is a tool call or result; tools are not supported by this server.", param=f"messages.{i}", code="tools_unsupported")
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": message.text()})
    params: dict[str, Any] = {
        "kind": "chat",
        "model": body.model,
        "messages": messages,
        "sampling": _sampling(body, body.max_completion_tokens or body.max_tokens, config),
    }
    if body.response_format is not None and body.response_format.type != "text":
        fmt: dict[str, Any] = {"type": body.response_format.type}
        if body.response_format.type == "json_schema":
            spec = body.response_format.json_schema
            if spec is None or not spec.schema_:
                raise ApiError(400, "response_format json_schema needs json_schema.schema, a JSON schema object.", param="response_format", code="invalid_value")
            fmt["json_schema"] = {"name": spec.name, "schema": spec.schema_}
        params["response_format"] = fmt
    return params


def completion_params(body: schemas.CompletionRequest, config: ServerConfig) -> dict[str, Any]:
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, "Send one prompt per request (a list of exactly one string).", param="prompt", code="invalid_value")
        prompt = prompt[0]
    if body.echo or body.suffix or body.logprobs:
        raise ApiError(400, "echo, suffix and logprobs are not supported by this server.", param="echo" if body.echo else "suffix" if body.suffix else "logprobs", code="unsupported")
    return {"kind": "completion", "model": body.model, "prompt": prompt, "sampling": _sampling(body, body.max_tokens, config)}
