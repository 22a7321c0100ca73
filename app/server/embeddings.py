"""OpenAI's `/v1/embeddings` over the runtime's `engine.embed`.

The vectors come from a second llama.cpp context in embedding mode (see
app.runtime.services.embed), so an embedding request never disturbs the model that chats. The
named model must be in the library; a chat model may be named (it is mean-pooled), which is how
clients that only know one model name still get vectors. ``encoding_format: "base64"`` is the
little-endian float32 array, base64-encoded: what the official `openai` client asks for by default
and decodes itself.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.runtime.client import RuntimeClient
from app.runtime.protocol import Method
from app.server.errors import ApiError

MAX_INPUTS = 2048  # OpenAI's own limit per request


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=512, description="A library model id (see /v1/models); an embedding model gives the best vectors.")
    input: str | list[str] | list[int] | list[list[int]] = Field(description="A string or a list of up to 2048 strings (token arrays are refused).")
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


def texts_of(body: EmbeddingRequest) -> list[str]:
    """The request's input as a list of non-empty strings, or a 400 that says what is wrong."""
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts:
        raise ApiError(400, "'input' is an empty list: send a string or a list of strings.", param="input", code="invalid_value")
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "'input' as token ids is not supported by this server: send the text.", param="input", code="unsupported")
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"At most {MAX_INPUTS} inputs per request; this one has {len(texts):,}.", param="input", code="invalid_value")
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise ApiError(400, f"input[{empty}] is an empty string; every input needs some text.", param="input", code="invalid_value")
    return texts  # type: ignore[return-value]


def encode(vector: list[float], encoding: str | None) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def router(client: RuntimeClient, *, library: Callable[[], Awaitable[list[dict[str, Any]]]], dependencies: list[Any],
           responses: dict[int | str, dict[str, Any]]) -> APIRouter:
    """The route, guarded like the rest of the OpenAI API; ``library`` lists the models it may name."""
    api = APIRouter(dependencies=dependencies)

    @api.post("/v1/embeddings", response_model=EmbeddingList, responses=responses)
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        entry: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("hearth_log", {})
        entry.update(model=body.model, stream=False)
        texts = texts_of(body)
        if not any(row["id"] == body.model for row in await library()):
            raise ApiError(404, f"No model called {body.model!r} in the library. GET /v1/models lists them.", param="model", code="model_not_found")
        slot = request.app.state.slots.try_acquire()
        if slot is None:
            raise ApiError(429, "The server is busy: too many requests are already waiting or running. Try again in a moment.",
                           type="rate_limit_error", code="queue_full")
        try:
            got = await run_in_threadpool(client.call, Method.ENGINE_EMBED, {"model": body.model, "input": texts})
        finally:
            slot.release()
        if body.dimensions is not None and body.dimensions != got["dimensions"]:
            raise ApiError(400, f"{got['model']} makes vectors of {got['dimensions']} dimensions; it cannot shorten them to {body.dimensions}.",
                           param="dimensions", code="unsupported")
        entry.update(model=got["model"], prompt_tokens=got["tokens"])
        data = [{"object": "embedding", "index": i, "embedding": encode(v, body.encoding_format)} for i, v in enumerate(got["embeddings"])]
        return {"object": "list", "data": data, "model": got["model"], "usage": {"prompt_tokens": got["tokens"], "total_tokens": got["tokens"]}}

    return api
