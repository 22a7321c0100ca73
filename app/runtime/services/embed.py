"""The embedding service: `engine.embed` turns texts into vectors with a library model.

It runs beside the chat engine, not through it: a second llama.cpp context in embedding mode
(`backends.llama_embed`), cached for the next request and freed with the engine's unload, so the
studio's conversation and its cached prompt are never touched. It runs on a thread of its own (an
API client's embeddings do not wait behind a long chat) and one request at a time.

Without a named model the library's first embedding model is used; a chat model is never chosen
by default (its vectors are poor), though one can be named explicitly and is then mean-pooled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.runtime import library
from app.runtime.jobs import JobContext, MethodSpec, Mode
from app.runtime.library import ModelInfo
from app.runtime.protocol import ErrorKind, Method, RuntimeFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedParams:
    input: list[str]
    model: str | None = None  # a library id, name or path; None = the library's first embedding model
    normalize: bool = True  # unit-length vectors (what OpenAI's API returns, and what cosine search wants)


@dataclass(frozen=True)
class EmbedResult:
    model: str  # the library id that made the vectors
    dimensions: int
    embeddings: list[list[float]]  # one per input, in order
    tokens: int  # tokens read over all inputs (the API's usage)


class LibraryEmbedder:
    """The document index's `Embedder` (app.runtime.docs.index) over this service: the vectors of
    one library model, named by its id so that vectors of two models are never compared."""

    def __init__(self, service: EmbedService, model_id: str) -> None:
        self._service = service
        self.name = model_id

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._service.embed(EmbedParams(input=list(texts), model=self.name), JobContext.detached("docs-embed")).embeddings


class EmbedService:
    def __init__(self, *, models: Callable[[], list[ModelInfo]], threads: Callable[[], int | None] = lambda: None) -> None:
        self._models = models
        self._threads = threads
        self._lock = threading.Lock()  # guards the cached embedder: load, use, close
        self._embedder: Any = None  # backends.llama_embed.LlamaEmbedder
        self._model: ModelInfo | None = None

    def methods(self) -> list[MethodSpec[Any, Any]]:
        return [MethodSpec(Method.ENGINE_EMBED.value, EmbedParams, EmbedResult, Mode.BACKGROUND, self.embed,
                           doc="vectors from an embedding model in a context of its own; the chat model is untouched")]

    def embed(self, params: EmbedParams, ctx: JobContext) -> EmbedResult:
        if not params.input:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "Nothing to embed: `input` is empty.")
        model = self.choose(params.model)
        total = len(params.input)

        def check(done: int) -> None:
            ctx.check()
            ctx.progress("embedding", done=done, total=total, unit="inputs")

        with self._lock:
            embedder = self._ensure(model, ctx)
            vectors, tokens = embedder.embed(params.input, normalize=params.normalize, check=check)
        return EmbedResult(model=model.id, dimensions=embedder.dimensions, embeddings=vectors, tokens=tokens)

    def for_documents(self, named: str | None) -> LibraryEmbedder | None:
        """What documents are embedded with: the named model, else the library's first embedding
        model, else none (keyword search only). A chat model embeds only when it is named."""
        try:
            model = self.choose(named or None)
        except RuntimeFailure as exc:
            if named or exc.kind is not ErrorKind.MODEL_NOT_FOUND:
                raise
            return None
        return LibraryEmbedder(self, model.id)

    def choose(self, name: str | None) -> ModelInfo:
        """The named model, or the library's first embedding model; it must be a GGUF (llama.cpp)."""
        models = self._models()
        if name is None:
            found = next((m for m in models if m.embedding and m.format == "gguf"), None)
            if found is None:
                raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND,
                                     "There is no embedding model in the library. Download one in GGUF format (for example "
                                     "nomic-embed-text or bge-small), or name a model to embed with.")
            return found
        if name.startswith("remote:"):
            raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"{name} is a remote model; Hearth embeds only with local GGUF models.")
        model = library.resolve(name, models)
        if model.format != "gguf":
            raise RuntimeFailure(ErrorKind.UNSUPPORTED,
                                 f"{model.name} is a Hugging Face folder; embeddings run through llama.cpp and need a GGUF file of the model.")
        return model

    def _ensure(self, model: ModelInfo, ctx: JobContext) -> Any:
        if self._embedder is not None and self._model is not None and self._model.path == model.path:
            return self._embedder
        self._close()
        from app.runtime.backends.llama_embed import LlamaEmbedder

        ctx.progress("loading", message=f"Loading {model.name} for embeddings", model=model.id)
        pooled = model.embedding  # an embedding model's file says how to pool; a chat model is mean-pooled
        self._embedder = LlamaEmbedder(model.path, context_length=model.context_length, pooled_in_file=pooled, n_threads=self._threads())
        self._model = model
        return self._embedder

    @property
    def loaded(self) -> str | None:
        """The path of the cached embedding model, if any."""
        return self._model.path if self._model is not None else None

    def close(self, path: str | None = None) -> None:
        """Free the embedding context (only when it holds ``path``, if given)."""
        with self._lock:
            if path is None or (self._model is not None and self._model.path == path):
                self._close()

    def _close(self) -> None:
        embedder, self._embedder, self._model = self._embedder, None, None
        if embedder is not None:
            embedder.close()
            log.info("embedding context freed")
