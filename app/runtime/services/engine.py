"""The engine service: owns the loaded model, loads on demand, streams chats.

One model is loaded at a time; the old one is closed before the next loads (llama.cpp frees its
memory in close(), and two models at once is how a desktop runs out of RAM).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from app.runtime import library
from app.runtime.backends.base import Backend, LoadOptions
from app.runtime.hardware import Hardware
from app.runtime.jobs import JobState
from app.runtime.library import ModelInfo
from app.runtime.protocol import ChatParams, ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

BACKENDS = ("llama.cpp",)  # the torch backend joins in its own issue
FOUNDATION_MAX_CTX = 4096


def choose_load_options(model: ModelInfo, hw: Hardware, *, n_ctx: int | None = None, n_threads: int | None = None) -> LoadOptions:
    """First-version choices with their reasons; the planner replaces this with measured plans."""
    reasons = {}
    if n_ctx is None:
        n_ctx = min(model.context_length or FOUNDATION_MAX_CTX, FOUNDATION_MAX_CTX)
        reasons["n_ctx"] = f"the model's trained context ({model.context_length}) capped at {FOUNDATION_MAX_CTX} until the planner sizes it from memory"
    else:
        reasons["n_ctx"] = "set by you"
    if n_threads is None:
        n_threads = max(1, hw.cpu_cores_physical)
        reasons["n_threads"] = f"one per physical core ({hw.cpu_cores_physical}); hyper-threads slow llama.cpp's decode"
    else:
        reasons["n_threads"] = "set by you"
    gpu_layers = -1 if hw.has_gpu else 0
    reasons["n_gpu_layers"] = "all layers on the GPU" if hw.has_gpu else "no GPU found: the CPU runs every layer"
    return LoadOptions(n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=gpu_layers, reasons=reasons)


class EngineService:
    def __init__(self, models: Any, hardware: Any) -> None:
        self._models = models  # callable returning the library's models
        self._hardware = hardware  # callable returning Hardware
        self._lock = threading.Lock()
        self._backend: Backend | None = None
        self._model: ModelInfo | None = None
        self._options: LoadOptions | None = None

    # ---- requests ---------------------------------------------------------------------------------

    def load(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        model_ref = params.get("model")
        backend = params.get("backend", "auto")
        n_ctx, n_threads = params.get("n_ctx"), params.get("n_threads")
        for name, value in (("n_ctx", n_ctx), ("n_threads", n_threads)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be a positive integer")
        if model_ref is not None and not isinstance(model_ref, str):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'model' must be a model id, name or path")
        self._ensure_loaded(model_ref, backend, state, n_ctx=n_ctx, n_threads=n_threads, force=bool(params.get("reload")))
        return self.status({}, state)

    def unload(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        with self._lock:
            self._close_current()
        return {"loaded": False}

    def status(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        model, options, backend = self._model, self._options, self._backend
        if model is None or backend is None or options is None:
            return {"loaded": False}
        return {"loaded": True, "model": model.to_dict(), "backend": backend.name, "options": options.to_dict()}

    def chat(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        request = ChatParams.from_dict(params)
        backend = self._ensure_loaded(request.model, request.backend, state)
        completion = backend.chat(request.messages, request.sampling, on_token=state.token, is_cancelled=lambda: state.cancelled)
        result = completion.to_dict()
        result["model"] = self._model.id if self._model else None
        return result

    def close(self) -> None:
        with self._lock:
            self._close_current()

    # ---- internals --------------------------------------------------------------------------------

    def _ensure_loaded(self, model_ref: str | None, backend: str, state: JobState, *, n_ctx: int | None = None, n_threads: int | None = None, force: bool = False) -> Backend:
        if backend not in ("auto", *BACKENDS):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown backend {backend!r}. Available: auto, {', '.join(BACKENDS)}.")
        with self._lock:
            current = self._backend
            if model_ref is None and current is not None and not force:
                return current  # no model named: keep talking to the loaded one
            model = library.resolve(model_ref, self._models())
            wanted = (n_ctx is None or self._options is not None and self._options.n_ctx == n_ctx) and (
                n_threads is None or self._options is not None and self._options.n_threads == n_threads
            )
            if current is not None and self._model is not None and self._model.path == model.path and wanted and not force:
                return current
            self._close_current()
            if model.format != "gguf":
                raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"{model.name} is a {model.format} model; only GGUF runs in this version.")
            options = choose_load_options(model, self._hardware(), n_ctx=n_ctx, n_threads=n_threads)
            state.progress("loading", message=f"Loading {model.name}", model=model.id)
            from app.runtime.backends.llama_cpp import LlamaCppBackend

            loaded = LlamaCppBackend(model.path, options)
            self._backend, self._model, self._options = loaded, model, options
            state.progress("loaded", fraction=1.0, message=f"Loaded {model.name}", model=model.id)
            return loaded

    def _close_current(self) -> None:
        backend, self._backend, self._model, self._options = self._backend, None, None, None
        if backend is not None:
            backend.close()
