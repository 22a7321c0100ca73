"""Errors in OpenAI's format, ``{"error": {"message", "type", "param", "code"}}``, with its status codes.

Clients (the openai package, LangChain, editors) branch on the status: 400 bad request, 401 no
or wrong key, 404 unknown model or path, 413 body too big, 429 queue full, 503 the engine cannot
take it now. FastAPI's 422 for a body that does not validate becomes OpenAI's 400.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

# ErrorKind -> (HTTP status, OpenAI error type)
STATUS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_PARAMS: (400, "invalid_request_error"),
    ErrorKind.BAD_MESSAGE: (400, "invalid_request_error"),
    ErrorKind.UNSUPPORTED: (400, "invalid_request_error"),
    ErrorKind.MODEL_NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.MODEL_INVALID: (500, "server_error"),  # a damaged file: not the client's fault
    ErrorKind.LOAD_FAILED: (503, "server_error"),
    ErrorKind.OUT_OF_MEMORY: (503, "server_error"),
    ErrorKind.BUSY: (503, "server_error"),
    ErrorKind.CANCELLED: (503, "server_error"),
    ErrorKind.WORKER_DIED: (503, "server_error"),
    ErrorKind.REMOTE_FAILED: (502, "server_error"),
    ErrorKind.PROTOCOL_MISMATCH: (500, "server_error"),
    ErrorKind.UNKNOWN_METHOD: (500, "server_error"),
    ErrorKind.INTERNAL: (500, "server_error"),
}
CODES = {ErrorKind.MODEL_NOT_FOUND: "model_not_found", ErrorKind.UNSUPPORTED: "unsupported"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)

    @classmethod
    def from_failure(cls, failure: RuntimeFailure) -> ApiError:
        status, kind = STATUS.get(failure.kind, (500, "server_error"))
        code = CODES.get(failure.kind) or ("context_length_exceeded" if "context_length_exceeded" in failure.message else failure.kind.value)
        return cls(status, failure.message, type=kind, code=code)


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return exc.response(headers)

    @app.exception_handler(RuntimeFailure)
    async def runtime_failure(request: Request, exc: RuntimeFailure) -> JSONResponse:
        return ApiError.from_failure(exc).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(where) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "The request body is not valid JSON for this endpoint."))
        code = "invalid_text" if first.get("type") == "string_unicode" else "invalid_value"  # a lone surrogate, as app.server.limits words it
        if code == "invalid_text":
            message = f"{param or 'The request'} is not valid text: it holds a lone surrogate. Send UTF-8 text."
        return ApiError(400, message, param=param, code=code).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = f"Unknown path {request.url.path}." if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(error_body(message, type=kind, code=str(exc.status_code)), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API request %s %s failed unexpectedly", request.method, request.url.path)
        return JSONResponse(error_body(f"Internal error: {exc}", type="server_error", code="internal"), status_code=500)
