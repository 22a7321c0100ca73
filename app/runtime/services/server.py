"""The API server as a runtime service: start, stop, status, the request log, and its generation job.

The server lives in the process that owns the engine (the worker for the GUI, the CLI process
for `hearth serve`). Its HTTP handlers submit `server.generate` jobs to this process's dispatcher
(see `attach`), so they queue first in, first out with the GUI's chats on the one engine thread.

`generate` is the ENGINE-mode job: it loads the named model on demand (or uses the loaded one as
it is), then generates on the llama.cpp context with the GUI conversation's KV saved and restored
around it (app.runtime.server.keep). Remote models stream from their endpoint instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from app.runtime import library
from app.runtime.jobs import JobState
from app.runtime.protocol import ErrorKind, RuntimeFailure, Sampling
from app.runtime.server.local import LocalClient, Submit
from app.runtime.server.queue import RequestLog
from app.runtime.services.engine import EngineService

log = logging.getLogger(__name__)


class ServerService:
    def __init__(self, *, engine: EngineService, models: Callable[[], list[library.ModelInfo]]) -> None:
        self._engine = engine
        self._models = models
        self._submit: Submit | None = None
        self._client: LocalClient | None = None
        self._running: Any = None  # app.runtime.server.runner.RunningServer
        self._lock = threading.Lock()
        self.log = RequestLog()

    def attach(self, submit: Submit) -> None:
        """The dispatcher's submit, given by the dispatcher itself when it starts."""
        self._submit = submit

    # ---- control (start/stop: BACKGROUND; status/log: QUICK) ----------------------------------------

    def start(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        from app.runtime.server.config import ServerConfig
        from app.runtime.server.runner import RunningServer

        if self._submit is None:
            raise RuntimeFailure(ErrorKind.INTERNAL, "The server service is not attached to a dispatcher.")
        config = ServerConfig.from_settings(params)  # refuses a non-loopback address without a key
        with self._lock:
            if self._running is not None:
                raise RuntimeFailure(ErrorKind.BUSY, f"The server is already running at {self._running.url}. Stop it first.")
            self._client = LocalClient(self._submit)
            if config.model is not None:
                state.progress("loading", message=f"Loading {config.model}")
                self._client.call("engine.load", {"model": config.model})
            try:
                self._running = RunningServer(self._client, config, self.log)
            except RuntimeFailure:
                self._client.close()
                self._client = None
                raise
        return self.status({}, state)

    def stop(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        with self._lock:
            running, client, self._running, self._client = self._running, self._client, None, None
        if running is not None:
            running.stop()
        if client is not None:
            client.close()
        return {"running": False}

    def status(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        running = self._running
        if running is None:
            return {"running": False}
        return {**running.status(), "config": running.config.public()}

    def requests(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        since = params.get("since", 0)
        if isinstance(since, bool) or not isinstance(since, int):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'since' must be the log_seq of the last entry seen (0 for all)")
        return {"entries": self.log.since(since), **self.status({}, state)}

    def close(self) -> None:
        self.stop({}, JobState("close", lambda event: None))

    # ---- the generation job (ENGINE) --------------------------------------------------------------

    def generate(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        state.progress("started")  # the server's queue-wait timing and first-in-first-out order
        kind = params.get("kind")
        if kind not in ("chat", "completion"):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'kind' must be chat or completion")
        sampling = Sampling.from_dict(params.get("sampling"))
        model_ref = params.get("model")
        if model_ref is not None and not isinstance(model_ref, str):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'model' must be a model id")
        messages, prompt = params.get("messages"), params.get("prompt")
        if kind == "chat" and (not isinstance(messages, list) or not messages):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "a chat needs 'messages'")
        if kind == "completion" and not isinstance(prompt, str):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "a completion needs a string 'prompt'")
        response_format = params.get("response_format")
        from app.runtime.backends import remote

        if remote.is_remote(model_ref):
            return self._remote(model_ref, kind, messages, prompt, sampling, response_format, state)  # type: ignore[arg-type]
        backend, model_id = self._backend_for(model_ref, state)
        if backend.name != "llama.cpp":
            if kind != "chat" or response_format:
                raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"The {backend.name} backend serves chat completions without response_format; load a GGUF model for the rest.")
            completion = backend.chat(messages, sampling, on_token=state.token, is_cancelled=lambda: state.cancelled)  # type: ignore[arg-type]
            return {**completion.to_dict(), "model": model_id}
        from app.runtime.server.generate import generate, grammar_for, prompt_tokens

        grammar = grammar_for(response_format, backend.llama._model.vocab)
        tokens = prompt_tokens(backend, messages=messages if kind == "chat" else None, prompt=prompt)
        completion, kept = generate(backend, tokens, sampling, grammar=grammar, on_token=state.token, is_cancelled=lambda: state.cancelled)
        return {**completion.to_dict(), "model": model_id, "kept": {k: round(v * 1000, 2) for k, v in kept.items()}}

    def _backend_for(self, model_ref: str | None, state: JobState) -> tuple[Any, str]:
        """The loaded backend when the request names it (or nothing); else load the named model."""
        status = self._engine.status({}, state)
        backend = self._engine.backend
        if status["loaded"] and backend is not None:
            loaded = status["model"]
            if model_ref is None or model_ref in (loaded["id"], loaded["path"]) or model_ref.lower() == loaded["name"].lower():
                return backend, loaded["id"]
        model = library.resolve(model_ref, self._models())
        self._engine.load({"model": model.path}, state)
        backend = self._engine.backend
        if backend is None:
            raise RuntimeFailure(ErrorKind.LOAD_FAILED, f"{model.name} did not load.")
        return backend, model.id

    @staticmethod
    def _remote(model_ref: str, kind: str, messages: Any, prompt: Any, sampling: Sampling, response_format: Any, state: JobState) -> dict[str, Any]:
        if response_format:
            raise RuntimeFailure(ErrorKind.UNSUPPORTED, "response_format is not forwarded to remote engines by this version.")
        from app.runtime.backends import remote

        backend = remote.resolve(model_ref)
        cancelled = lambda: state.cancelled  # noqa: E731
        if kind == "chat":
            completion = backend.chat(messages, sampling, on_token=state.token, is_cancelled=cancelled)
        else:
            completion = backend.complete(prompt, sampling, on_token=state.token, is_cancelled=cancelled)
        return {**completion.to_dict(), "model": model_ref}
