"""OpenAI request and response bodies (the subset Hearth serves), as pydantic models.

They are the OpenAPI document too, so a client generator or schemathesis sees exactly what the
server accepts: bounds live here (max_tokens is bounded by the server's setting, see `bounded`).
Fields that OpenAI clients send by habit but a local engine cannot honour are either accepted
with a note (``user``) or refused with a clear 400 in the handler (``logprobs``, n > 1).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Stop = str | list[str] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaSpec(_Body):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampled(_Body):
    model: str = Field(min_length=1, max_length=512, description="A library model id (see /v1/models); another library model is loaded on demand.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(1, ge=1, le=1, description="Only 1: the engine generates one answer at a time.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = Field(None, description="Up to 4 strings.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="Accepted for compatibility; Hearth applies its repeat penalty instead.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="Accepted for compatibility; Hearth applies its repeat penalty instead.")
    user: str | None = None


class ChatCompletionRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None


class CompletionRequest(_Sampled):
    prompt: str | list[str] = Field(description="One prompt (a list of one string is accepted).")
    max_tokens: int | None = Field(16, ge=1)
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None


def bounded(limit: int) -> tuple[type[ChatCompletionRequest], type[CompletionRequest]]:
    """Request models whose max_tokens bound is this server's setting (so the OpenAPI document says it)."""

    class BoundedChatCompletionRequest(ChatCompletionRequest):
        max_tokens: int | None = Field(None, ge=1, le=limit)
        max_completion_tokens: int | None = Field(None, ge=1, le=limit)

    class BoundedCompletionRequest(CompletionRequest):
        max_tokens: int | None = Field(min(16, limit), ge=1, le=limit)

    BoundedChatCompletionRequest.__name__ = "ChatCompletionRequest"
    BoundedCompletionRequest.__name__ = "CompletionRequest"
    return BoundedChatCompletionRequest, BoundedCompletionRequest


# ---- responses ----------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "hearth"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None  # [{"id": "call_...", "type": "function", "function": {"name", "arguments"}}]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    queue: dict[str, int]
