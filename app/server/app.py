"""The OpenAI-compatible HTTP API over the runtime's own dispatcher (FastAPI).

Every generation is one `server.generate` job on the engine thread, queued first in, first out
with the GUI's chats; `Slots` bounds how many may wait. Streaming answers are server-sent events
in OpenAI's chunk format; a stream starts once the first token exists, so that a request that
fails before it (unknown model, prompt too long) gets a proper status code and error body.

Mounted beside it: Anthropic's Messages API (`app.server.anthropic`, its own key header and error
shape) and `/v1/embeddings` (`app.server.embeddings`, the runtime's `engine.embed`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app import __version__
from app.runtime.client import RuntimeClient, failure_from_event
from app.runtime.protocol import Event, EventKind, Method
from app.server import anthropic, embeddings, errors, schemas
from app.server.config import ServerConfig
from app.server.errors import ApiError
from app.server.hosts import HostGuard
from app.server.jobs import UNFINISHED, Job, wait_disconnect
from app.server.middleware import AccessMiddleware
from app.server.params import chat_params, completion_params
from app.server.queue import RequestLog, Slots

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorResponse, "description": text}
    for status, text in (
        (400, "Bad request (also: a body that does not validate)"),
        (401, "Missing or wrong API key"),
        (404, "Unknown model"),
        (413, "Request body too large"),
        (429, "The queue is full"),
        (503, "The engine cannot take the request now"),
    )
}


def create_app(client: RuntimeClient, config: ServerConfig, log: RequestLog, slots: Slots | None = None) -> FastAPI:
    slots = slots or Slots(config.queue_limit)
    ChatRequest, CompletionRequest = schemas.bounded(config.max_tokens)
    app = FastAPI(
        title="Hearth",
        version=__version__,
        description="OpenAI-compatible API over the model loaded in Hearth. Requests queue first in, first out with the studio's own chats.",
        docs_url=None,  # the docs page loads its scripts from a CDN; Hearth makes no outside requests
        redoc_url=None,
    )
    errors.install(app)
    app.add_middleware(HostGuard, bound=config.host)  # inside the access log: a refused Host is logged too
    app.add_middleware(AccessMiddleware, log=log, max_body_bytes=config.max_body_bytes)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"])
    app.state.slots = slots

    async def authorized(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "This server needs an API key: send it as 'Authorization: Bearer <key>'.", code="invalid_api_key")

    guarded = [Depends(authorized)]

    @app.get("/health", response_model=schemas.Health)
    async def health() -> dict[str, Any]:
        # "working": API jobs the engine has not finished, also those whose client has gone
        return {"status": "ok", "queue": {"used": slots.used, "limit": slots.limit, "working": UNFINISHED.count}}

    async def library() -> list[dict[str, Any]]:
        return list((await run_in_threadpool(client.call, Method.MODELS_LIST, {"remote": False}))["models"])

    @app.get("/v1/models", response_model=schemas.ModelList, responses=ERRORS, dependencies=guarded)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_card(row) for row in await library()]}

    @app.get("/v1/models/{model_id:path}", response_model=schemas.ModelCard, responses=ERRORS, dependencies=guarded)
    async def model(model_id: str) -> dict[str, Any]:
        for row in await library():
            if row["id"] == model_id:
                return _card(row)
        raise ApiError(404, f"No model called {model_id!r} in the library. GET /v1/models lists them.", param="model", code="model_not_found")

    async def chat_completions(body: Any, request: Request) -> Any:
        return await _generate(request, body, chat_params(body, config), chat=True)

    async def completions(body: Any, request: Request) -> Any:
        return await _generate(request, body, completion_params(body, config), chat=False)

    # The body models are made per server (their max_tokens bound); FastAPI reads a handler's types
    # from its annotations, and string annotations cannot name a local class.
    chat_completions.__annotations__["body"] = ChatRequest
    completions.__annotations__["body"] = CompletionRequest
    app.post("/v1/chat/completions", response_model=schemas.ChatCompletion, responses=ERRORS, dependencies=guarded)(chat_completions)
    app.post("/v1/completions", response_model=schemas.Completion, responses=ERRORS, dependencies=guarded)(completions)

    app.include_router(embeddings.router(client, library=library, dependencies=guarded, responses=ERRORS))
    app.include_router(anthropic.router(client, config, log, slots))  # its own key header and error shape

    async def _generate(request: Request, body: Any, params: dict[str, Any], *, chat: bool) -> Any:
        entry: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("hearth_log", {})
        entry.update(seq=log.next_arrival(), model=body.model, stream=bool(body.stream))
        arrived = time.monotonic()
        slot = slots.try_acquire()
        if slot is None:
            raise ApiError(
                429,
                f"The server is busy: {slots.limit} requests are already waiting or running. Try again in a moment.",
                type="rate_limit_error",
                code="queue_full",
            )

        def started() -> None:
            entry["start_order"] = log.next_start()

        def ended(event: Event) -> None:
            if event.event is EventKind.RESULT:
                _note(entry, event.data)
            else:
                entry["error"] = str(event.data.get("message", ""))

        job = Job(client, params, on_start=started, on_end=ended)
        disconnected = asyncio.ensure_future(wait_disconnect(request))
        handed_over = False
        try:
            first: list[Any] = []
            while True:  # until the first token (streams) or the result
                event = await job.first_wait(disconnected, entry, arrived)
                if event is None:
                    return JSONResponse({}, status_code=499)
                if event.event is EventKind.ERROR:
                    failure = failure_from_event(event)
                    raise ApiError.from_failure(failure)
                if event.event is EventKind.RESULT:
                    if body.stream:
                        first.append(event)
                        break
                    return _answer(event.data, body, chat)
                if event.event is EventKind.TOKEN and body.stream:
                    first.append(event)
                    break
            disconnected.cancel()  # the stream watches for disconnects itself from here on
            handed_over = True
            return _Stream(_stream(job, slot, first, body, chat, entry), on_close=lambda: (job.cancel(), slot.release()))
        finally:
            if not handed_over:
                disconnected.cancel()
                job.cancel()
                slot.release()

    async def _stream(job: Job, slot: Any, first: list[Any], body: Any, chat: bool, entry: dict[str, Any]) -> AsyncIterator[bytes]:
        ident, created = _ident(chat), int(time.time())
        chunk = _chat_chunk if chat else _text_chunk
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        try:
            if chat:
                yield _sse(chunk(ident, created, body.model, {"role": "assistant", "content": ""}, None))
            pending = list(first)
            while True:
                event = pending.pop(0) if pending else await job.next()
                assert event is not None  # next() without a disconnect future always has one
                if event.event is EventKind.TOKEN:
                    yield _sse(chunk(ident, created, body.model, {"content": event.data["text"]}, None))
                elif event.event is EventKind.ERROR:
                    failure = failure_from_event(event)
                    yield _sse(ApiError.from_failure(failure).body())
                    break
                elif event.event is EventKind.RESULT:
                    data = event.data
                    model = data.get("model") or body.model
                    for delta in _tool_call_deltas(data):  # the calls arrive whole with the result (app.runtime.tools)
                        yield _sse(chunk(ident, created, model, delta, None))
                    yield _sse(chunk(ident, created, model, {}, _finish(data)))
                    if include_usage:
                        yield _sse({**chunk(ident, created, model, {}, None), "choices": [], "usage": _usage(data)})
                    break
            yield b"data: [DONE]\n\n"
        finally:  # also when the client goes away mid-stream: its place and the engine are freed at once
            job.cancel()
            slot.release()

    return app


class _Stream(StreamingResponse):
    """Server-sent events that free the request's place however the response ends, even when the
    client left before the first byte (then the body generator never runs, nor its cleanup)."""

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Any) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


# ---- response shapes ----------------------------------------------------------------------------


def _card(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "model", "created": 0, "owned_by": str(row.get("source") or "hearth")}


def _ident(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode("utf-8") + b"\n\n"


def _finish(data: dict[str, Any]) -> str:
    reason = str(data.get("finish_reason", "stop"))
    return reason if reason in ("stop", "length", "tool_calls") else "stop"


def _tool_call_deltas(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A streamed reply's calls as OpenAI's ``delta.tool_calls`` chunks: per call, its id, type and
    name first, then its arguments (the openai client joins the arguments pieces by index)."""
    deltas = []
    for index, call in enumerate(data.get("tool_calls") or []):
        fn = call["function"]
        deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function", "function": {"name": fn["name"], "arguments": ""}}]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": fn["arguments"]}}]})
    return deltas


def _usage(data: dict[str, Any]) -> dict[str, int]:
    usage = data.get("usage", {})
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _note(entry: dict[str, Any], data: dict[str, Any]) -> None:
    usage, timings = data.get("usage", {}), data.get("timings", {})
    entry.update(
        model=data.get("model") or entry.get("model"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        ttft_ms=timings.get("ttft_ms"),
        decode_tps=timings.get("decode_tps"),
        finish_reason=data.get("finish_reason"),
        kept_ms=data.get("kept"),  # what keeping the studio's conversation cache cost (save, restore)
    )


def _answer(data: dict[str, Any], body: Any, chat: bool) -> dict[str, Any]:
    created, model = int(time.time()), data.get("model") or body.model
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": data.get("text", "")}
        if data.get("tool_calls"):
            message.update(content=data.get("text") or None, tool_calls=data["tool_calls"])
        choice = {"index": 0, "message": message, "finish_reason": _finish(data), "logprobs": None}
        return {"id": _ident(True), "object": "chat.completion", "created": created, "model": model, "choices": [choice], "usage": _usage(data)}
    choice = {"index": 0, "text": data.get("text", ""), "finish_reason": _finish(data), "logprobs": None}
    return {"id": _ident(False), "object": "text_completion", "created": created, "model": model, "choices": [choice], "usage": _usage(data)}


def _chat_chunk(ident: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def _text_chunk(ident: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": [{"index": 0, "text": delta.get("content", ""), "finish_reason": finish, "logprobs": None}]}

