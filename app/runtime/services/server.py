"""The API server as a runtime service: start, stop, status, the request log, and its generation job.

The HTTP server itself is `app.server`, a client of the runtime like the studio and the CLI: it
turns each API request into a `server.generate` job and knows nothing else of the runtime. It
runs in the process that owns the engine (the worker for the GUI, the CLI process for `hearth
serve`), as this process's *front*: the process's entry point hands one over with `fronts.use_front`
(`app.server.front.HttpFront`), so the runtime never imports the server. Its requests reach this
process's dispatcher through a `LocalClient` (see `attach`), so they queue first in, first out
with the GUI's chats on the one engine thread.

`generate` is the ENGINE-mode job: it loads the named model on demand (or uses the loaded one as
it is), then generates on the llama.cpp context with the GUI conversation's KV saved and restored
around it by the backend (app.runtime.backends.llama_keep). Remote models stream from their endpoint instead.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.runtime import library
from app.runtime.jobs import JobContext, MethodSpec, Mode
from app.runtime.protocol import ErrorKind, Method, NoParams, RuntimeFailure, Sampling, omitted_when_none
from app.runtime import fronts
from app.runtime.fronts import Front, RunningFront
from app.runtime.local_client import LocalClient, Submit
from app.runtime.services.engine import ChatResult, EngineLoadParams, EngineService

log = logging.getLogger(__name__)


# ---- declared params and results ----------------------------------------------------------------


@dataclass(frozen=True)
class ServerStartParams:
    """This start's own options over the saved server settings (None = the saved value)."""

    host: str | None = None
    port: int | None = None
    api_key: str | None = None
    cors_origins: list[str] | str | None = None
    queue_limit: int | None = None
    max_tokens: int | None = None
    max_body_bytes: int | None = None
    model: str | None = None  # loaded before the server answers
    limits: dict[str, int] | None = None  # bounds on one request's work, over the defaults (app.server.limits)


@dataclass(frozen=True)
class ServerStatus:
    """A stopped server says only ``{"running": false}``."""

    running: bool
    url: str | None = omitted_when_none()
    port: int | None = omitted_when_none()
    queue: dict[str, Any] | None = omitted_when_none()  # {"used", "limit"}
    config: dict[str, Any] | None = omitted_when_none()  # the settings it runs with, without the key


@dataclass(frozen=True)
class ServerLogParams:
    since: int = 0  # the log_seq of the last entry seen (0 for all)


@dataclass(frozen=True)
class ServerLogResult(ServerStatus):
    entries: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ServerGenerateParams:
    """One API request's generation (built by app.server.params)."""

    kind: Literal["chat", "completion"]
    model: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    response_format: dict[str, Any] | None = None
    # Tool calling, as ChatParams has it (app.runtime.tools; the contract in ChatResult.tool_calls)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True


def library_model(model_ref: str | None, models: list[library.ModelInfo]) -> library.ModelInfo:
    """A model of the library by id or name (case-insensitive); None is the embedded one. Anything
    else, a path on this machine included, is MODEL_NOT_FOUND in the same words."""
    if model_ref is None:
        return library.resolve(None, models)
    wanted = model_ref.strip()
    for model in models:
        if wanted == model.id or wanted.lower() == model.name.lower():
            return model
    raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"No model called {model_ref!r} in the library. GET /v1/models lists them.")


class ServerService:
    def __init__(self, *, engine: EngineService, models: Callable[[], list[library.ModelInfo]]) -> None:
        self._engine = engine
        self._models = models
        self._submit: Submit | None = None
        self._client: LocalClient | None = None
        self._running: RunningFront | None = None
        self._lock = threading.Lock()
        self._front: Front | None = None

    @property
    def front(self) -> Front:
        if self._front is None:
            self._front = fronts.make()
        return self._front

    def attach(self, submit: Submit) -> None:
        """The dispatcher's submit, given by the dispatcher itself when it starts."""
        self._submit = submit

    def methods(self) -> list[MethodSpec[Any, Any]]:
        """Binding and stopping wait on sockets; its generations queue with the chats on the engine thread."""
        return [
            MethodSpec(Method.SERVER_START.value, ServerStartParams, ServerStatus, Mode.BACKGROUND, self.start),
            MethodSpec(Method.SERVER_STOP.value, NoParams, ServerStatus, Mode.BACKGROUND, self.stop),
            MethodSpec(Method.SERVER_STATUS.value, NoParams, ServerStatus, Mode.QUICK, self.status),
            MethodSpec(Method.SERVER_LOG.value, ServerLogParams, ServerLogResult, Mode.QUICK, self.requests),
            MethodSpec(Method.SERVER_GENERATE.value, ServerGenerateParams, ChatResult, Mode.ENGINE, self.generate),
        ]

    # ---- control (start/stop: BACKGROUND; status/log: QUICK) ----------------------------------------

    def start(self, params: ServerStartParams, state: JobContext) -> ServerStatus:
        if self._submit is None:
            raise RuntimeFailure(ErrorKind.INTERNAL, "The server service is not attached to a dispatcher.")
        front = self.front
        config = front.check(dataclasses.asdict(params))  # refuses a non-loopback address without a key
        with self._lock:
            if self._running is not None:
                raise RuntimeFailure(ErrorKind.BUSY, f"The server is already running at {self._running.url}. Stop it first.")
            self._client = LocalClient(self._submit)
            if config.get("model") is not None:
                state.progress("loading", message=f"Loading {config['model']}")
                self._client.call("engine.load", {"model": config["model"]})
            try:
                self._running = front.start(self._client, config)
            except RuntimeFailure:
                self._client.close()
                self._client = None
                raise
        return self.status(NoParams(), state)

    def stop(self, params: NoParams, state: JobContext) -> ServerStatus:
        with self._lock:
            running, client, self._running, self._client = self._running, self._client, None, None
        if running is not None:
            running.stop()
        if client is not None:
            client.close()
        return ServerStatus(running=False)

    def status(self, params: NoParams, state: JobContext) -> ServerStatus:
        running = self._running
        if running is None:
            return ServerStatus(running=False)
        return ServerStatus(**running.status(), config=running.public_config())

    def requests(self, params: ServerLogParams, state: JobContext) -> ServerLogResult:
        entries = self._front.log_since(params.since) if self._front is not None else []
        return ServerLogResult(**dataclasses.asdict(self.status(NoParams(), state)), entries=entries)

    def close(self) -> None:
        self.stop(NoParams(), JobContext.detached("close"))

    # ---- the generation job (ENGINE) --------------------------------------------------------------

    def generate(self, params: ServerGenerateParams, state: JobContext) -> ChatResult:
        with self._engine.in_use():  # a model serving the API is not idle
            return self._generate(params, state)

    def _generate(self, params: ServerGenerateParams, state: JobContext) -> ChatResult:
        state.progress("started")  # the server's queue-wait timing and first-in-first-out order
        kind, sampling, model_ref = params.kind, params.sampling, params.model
        messages, prompt = params.messages, params.prompt
        if kind == "chat" and not messages:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "a chat needs 'messages'")
        if kind == "completion" and prompt is None:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "a completion needs a string 'prompt'")
        response_format = params.response_format
        from app.runtime.backends import remote

        if remote.is_remote(model_ref):
            return self._remote(model_ref, kind, messages, prompt, sampling, response_format, state, params.tools)  # type: ignore[arg-type]
        state.check("Cancelled before it started (the client went away).")  # a request abandoned in the queue costs nothing more
        backend, model_id = self._backend_for(model_ref, state)
        if kind == "chat" and (params.tools or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages or [])):
            from app.runtime.services.api_generate import generate_with_tools

            if response_format:
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "Send either tools or response_format, not both: tool calls have their own grammar.")
            completion, extra = generate_with_tools(backend, params, on_token=state.token, is_cancelled=lambda: state.cancelled)
            return ChatResult.of(completion, model_id, **extra)
        if backend.name != "llama.cpp":
            if kind != "chat" or response_format:
                raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"The {backend.name} backend serves chat completions without response_format; load a GGUF model for the rest.")
            completion = backend.chat(messages, sampling, on_token=state.token, is_cancelled=lambda: state.cancelled)  # type: ignore[arg-type]
            return ChatResult.of(completion, model_id)
        from app.runtime.services.api_generate import generate

        completion = generate(  # the backend keeps the GUI conversation's KV around it; the result says what that cost
            backend, messages=messages if kind == "chat" else None, prompt=prompt, sampling=sampling,
            response_format=response_format, on_token=state.token, is_cancelled=lambda: state.cancelled,
            drafter=self._engine.drafter(None, backend).get("drafter"),  # the saved speculation setting (app.runtime.spec)
        )
        return ChatResult.of(completion, model_id)

    def _backend_for(self, model_ref: str | None, state: JobContext) -> tuple[Any, str]:
        """The loaded backend when the request names it (or nothing); else load the named model.

        Over the API a model is a library id or name, never a path: the same 404 for a path that
        exists and one that does not, so that no client can probe the disk or load a file that
        is not in the library."""
        status = self._engine.status(NoParams(), state)
        backend = self._engine.backend
        if status.loaded and status.model is not None and backend is not None:
            loaded = status.model
            if model_ref is None or model_ref == loaded["id"] or model_ref.lower() == loaded["name"].lower():
                return backend, loaded["id"]
        model = library_model(model_ref, self._models())
        self._engine.load(EngineLoadParams(model=model.path), state)
        backend = self._engine.backend
        if backend is None:
            raise RuntimeFailure(ErrorKind.LOAD_FAILED, f"{model.name} did not load.")
        return backend, model.id

    @staticmethod
    def _remote(model_ref: str, kind: str, messages: Any, prompt: Any, sampling: Sampling, response_format: Any, state: JobContext,
                tools: Any = None) -> ChatResult:
        if tools:
            raise RuntimeFailure(ErrorKind.UNSUPPORTED, "Tools are not forwarded to remote engines by this version.")
        if response_format:
            raise RuntimeFailure(ErrorKind.UNSUPPORTED, "response_format is not forwarded to remote engines by this version.")
        from app.runtime.backends import remote

        backend = remote.resolve(model_ref)
        cancelled = lambda: state.cancelled  # noqa: E731
        if kind == "chat":
            completion = backend.chat(messages, sampling, on_token=state.token, is_cancelled=cancelled)
        else:
            completion = backend.complete(prompt, sampling, on_token=state.token, is_cancelled=cancelled)
        return ChatResult.of(completion, model_ref)
