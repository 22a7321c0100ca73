"""Anthropic's Messages API at ``/v1/messages``, over the same `server.generate` job as the OpenAI API.

So clients written for Claude (the `anthropic` SDK, tools built on it) run against a local model.
What differs from the OpenAI routes lives here: the ``x-api-key`` header (the server's key; a
Bearer token works too), ``anthropic-version``, errors shaped ``{"type": "error", "error": {"type",
"message"}}`` with Anthropic's error types, and the streamed events (``message_start``,
``content_block_start/delta/stop`` with ``text_delta`` and ``input_json_delta``,
``message_delta``, ``message_stop``). The body is parsed here rather than by FastAPI, so that a
body that does not validate gets Anthropic's error shape too.

A stream starts once the first token exists, as the OpenAI routes do: a request that fails before
it (unknown model, prompt too long) gets its status code and error body. The stream's
``message_start`` cannot know the prompt's token count yet; ``message_delta`` carries it (the SDK
takes the counts there as cumulative totals).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from app.runtime.client import RuntimeClient, failure_from_event
from app.runtime.protocol import Event, EventKind, RuntimeFailure
from app.server import anthropic_convert as convert
from app.server import limits
from app.server.anthropic_schemas import ErrorResponse, MessageResponse, MessagesRequest
from app.server.config import ServerConfig
from app.server.errors import STATUS, ApiError
from app.server.jobs import Job, wait_disconnect
from app.server.queue import RequestLog, Slots

# The SDKs send their own date (anthropic 2.16 sends 2026-10-21); the shape Hearth serves is the
# 2023-06-01 one every later version keeps, so any well-formed date is accepted.
VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
# HTTP status -> Anthropic's error type
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}


class AnthropicError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": TYPES.get(self.status, "api_error"), "message": self.message}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)

    @classmethod
    def from_failure(cls, failure: RuntimeFailure) -> AnthropicError:
        return cls(STATUS.get(failure.kind, (500, ""))[0], failure.message)


def router(client: RuntimeClient, config: ServerConfig, log: RequestLog, slots: Slots) -> APIRouter:
    api = APIRouter()
    errors = {status: {"model": ErrorResponse, "description": kind} for status, kind in TYPES.items()}

    @api.post("/v1/messages", response_model=MessageResponse, responses=errors,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": MessagesRequest.model_json_schema()}}}})
    async def messages(request: Request) -> Any:
        try:
            _check_headers(request, config)
            body = await _body(request)
            _check_bounds(body, config)
            params = {"kind": "chat", "model": body.model, "messages": convert.engine_messages(body),
                      "sampling": convert.sampling(body, config.max_tokens), **convert.engine_tools(body)}
            return await _answer(request, body, params)
        except convert.BadRequest as exc:
            return AnthropicError(400, str(exc)).response()
        except AnthropicError as exc:
            return exc.response()

    async def _answer(request: Request, body: MessagesRequest, params: dict[str, Any]) -> Any:
        entry: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("hearth_log", {})
        entry.update(seq=log.next_arrival(), model=body.model, stream=body.stream)
        arrived = time.monotonic()
        slot = slots.try_acquire()
        if slot is None:
            raise AnthropicError(429, f"The server is busy: {slots.limit} requests are already waiting or running. Try again in a moment.")

        def ended(event: Event) -> None:
            if event.event is EventKind.RESULT:
                used = event.data.get("usage", {})
                entry.update(model=event.data.get("model") or body.model, prompt_tokens=used.get("prompt_tokens"),
                             completion_tokens=used.get("completion_tokens"), finish_reason=event.data.get("finish_reason"),
                             ttft_ms=event.data.get("timings", {}).get("ttft_ms"), decode_tps=event.data.get("timings", {}).get("decode_tps"))
            else:
                entry["error"] = str(event.data.get("message", ""))

        job = Job(client, params, on_start=lambda: entry.update(start_order=log.next_start()), on_end=ended)
        watch = convert.StopWatch(convert.stops(body))
        disconnected = asyncio.ensure_future(wait_disconnect(request))
        handed_over = False
        try:
            first: list[Event] = []
            while True:  # until the first token (streams) or the result
                event = await job.first_wait(disconnected, entry, arrived)
                if event is None:
                    return JSONResponse({}, status_code=499)
                if event.event is EventKind.ERROR:
                    raise AnthropicError.from_failure(failure_from_event(event))
                if event.event is EventKind.TOKEN:
                    if body.stream:
                        first.append(event)
                        break
                    watch.feed(event.data["text"])
                    if watch.matched is not None:
                        job.cancel()  # the reply is over for the client; the engine stops at its next token
                        event = await _result(job)
                if event.event is EventKind.RESULT:
                    if body.stream:
                        first.append(event)
                        break
                    watch.flush()
                    return convert.message(convert.message_id(), event.data.get("model") or body.model, watch.text, event.data, watch.matched)
            disconnected.cancel()  # the stream watches for disconnects itself from here on
            handed_over = True
            return _Stream(_events(job, first, body, watch), on_close=lambda: (job.cancel(), slot.release()))
        finally:
            if not handed_over:
                disconnected.cancel()
                job.cancel()
                slot.release()

    return api


async def _result(job: Job) -> Event:
    """The job's final event after it was cancelled for a stop sequence (a result, with the usage)."""
    while True:
        event = await job.next()
        assert event is not None
        if event.is_final:
            return event


def _check_bounds(body: MessagesRequest, config: ServerConfig) -> None:
    """The same bounds as the OpenAI routes (app.server.limits), before the engine sees anything."""
    schemas = [(f"tools.{i}.input_schema", tool.input_schema) for i, tool in enumerate(body.tools or [])]
    try:
        limits.check_request(body, config.limits, messages=body.messages, stop=body.stop_sequences,
                             stop_param="stop_sequences", schemas=schemas)
    except ApiError as exc:
        raise AnthropicError(exc.status, exc.message) from None


def _check_headers(request: Request, config: ServerConfig) -> None:
    """The server's key as ``x-api-key`` (or a Bearer token); ``anthropic-version``, when sent, a date."""
    if config.api_key is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        sent = request.headers.get("x-api-key") or (token.strip() if scheme.lower() == "bearer" else "")
        if not hmac.compare_digest(sent.encode(), config.api_key.encode()):
            raise AnthropicError(401, "This server needs an API key: send the server's key as the 'x-api-key' header.")
    version = request.headers.get("anthropic-version")
    if version is not None and not VERSION.fullmatch(version.strip()):
        raise AnthropicError(400, f"anthropic-version {version!r} is not a version: send a date such as 2023-06-01.")


async def _body(request: Request) -> MessagesRequest:
    raw = await request.body()
    try:
        return MessagesRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = exc.errors()
        first = max(problems, key=lambda e: len(e.get("loc", ()))) if problems else {}  # the deepest: the one that says most
        where = ".".join(str(part) for part in first.get("loc", ()) if not str(part).startswith(("function-", "tagged-union"))) or "body"
        raise AnthropicError(400, f"{where}: {first.get('msg', 'invalid value')}") from None


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **payload}, separators=(",", ":")).encode("utf-8") + b"\n\n"


async def _events(job: Job, first: list[Event], body: MessagesRequest, watch: convert.StopWatch) -> AsyncIterator[bytes]:
    ident = convert.message_id()
    start = {"id": ident, "type": "message", "role": "assistant", "model": body.model, "content": [], "stop_reason": None,
             "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
    yield _sse("message_start", {"message": start})
    index, text_open = 0, False
    pending = list(first)
    try:
        while True:
            event = pending.pop(0) if pending else await job.next()
            assert event is not None  # next() without a disconnect future always has one
            if event.event is EventKind.TOKEN:
                shown = watch.feed(event.data["text"])
                if shown:
                    if not text_open:
                        yield _sse("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                        text_open = True
                    yield _sse("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": shown}})
                if watch.matched is not None:
                    job.cancel()
                    pending.append(await _result(job))
            elif event.event is EventKind.ERROR:
                yield _sse("error", {"error": AnthropicError.from_failure(failure_from_event(event)).body()["error"]})
                break
            elif event.event is EventKind.RESULT:
                data = event.data
                tail = watch.flush()
                if tail:
                    if not text_open:
                        yield _sse("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                        text_open = True
                    yield _sse("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": tail}})
                if text_open:
                    yield _sse("content_block_stop", {"index": index})
                    index += 1
                for block in convert.tool_blocks(data):
                    yield _sse("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
                    yield _sse("content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
                    yield _sse("content_block_stop", {"index": index})
                    index += 1
                delta = {"stop_reason": convert.stop_reason(data, watch.matched), "stop_sequence": watch.matched}
                yield _sse("message_delta", {"delta": delta, "usage": convert.usage(data)})
                yield _sse("message_stop", {})
                break
    finally:  # also when the client goes away mid-stream: the engine is freed at once
        job.cancel()


class _Stream(StreamingResponse):
    """Server-sent events that free the request's place however the response ends (see app.server.app)."""

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Any) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
