"""One pure-ASGI middleware: bounds the request body (413) and logs every request with its timing.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which would buffer streams and hide client
disconnects from the handlers. The log entry is a dict in the request's scope state; handlers add
what they know (model, tokens, queue wait) and this finishes it when the response has been sent,
so a stream's time is the whole stream.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.server.errors import error_body
from app.server.queue import RequestLog

QUIET_PATHS = ("/health",)  # polled by monitors; not worth a line in the person's log


class AccessMiddleware:
    def __init__(self, app: ASGIApp, *, log: RequestLog, max_body_bytes: int) -> None:
        self.app = app
        self.log = log
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        entry: dict[str, Any] = scope.setdefault("state", {}).setdefault("hearth_log", {})
        client = scope.get("client")
        entry.update(time=time.time(), method=scope["method"], path=scope["path"], client=client[0] if client else "", status=0)

        logged = False

        def finish() -> None:
            nonlocal logged
            if not logged and scope["path"] not in QUIET_PATHS:
                logged = True
                entry["total_ms"] = round((time.monotonic() - started) * 1000, 1)
                self.log.add(entry)  # the same dict: a job that ends after its client left still says how

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finish()  # before the client can see the end: whoever reads the log next finds it
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                entry["status"] = 413
                await _too_large(sending, self.max_body_bytes)
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: waits for the client to go away

            await self.app(scope, replay, sending)
        finally:
            finish()  # a response that never completed (the client left, or an error)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it is larger than allowed (told by its header, or counted)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # the client left; the app will see an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


async def _too_large(send: Send, limit: int) -> None:
    payload = json.dumps(error_body(f"The request body is larger than this server accepts ({limit:,} bytes).", type="invalid_request_error", code="request_too_large")).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
