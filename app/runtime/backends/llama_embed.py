"""Embeddings through a second llama.cpp context in embedding mode.

The studio's chat model keeps its own context (and its cached conversation) untouched: an
embedding request loads the named model again as an embedder (`llama_cpp.Llama(embedding=True)`),
which for the same file shares the mapped weights and adds only a small context. An embedding
model's GGUF says how to pool its tokens into one vector; a chat model named explicitly (the tests
use SmolLM2) has no pooling type and is mean-pooled.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

MAX_CONTEXT = 2048  # tokens per input: the compute buffer grows with the square of it (non-causal attention)
CHUNK = 32  # inputs per llama.cpp call; cancel is checked between chunks


class LlamaEmbedder:
    """One embedding context for one GGUF file; `close()` frees it (llama-cpp-python's habit)."""

    def __init__(self, model_path: str | Path, *, context_length: int, pooled_in_file: bool, n_threads: int | None = None) -> None:
        import llama_cpp

        from app.runtime.backends.llama_cpp import _load

        self.path = str(model_path)
        n_ctx = min(context_length or MAX_CONTEXT, MAX_CONTEXT)
        pooling = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if pooled_in_file else llama_cpp.LLAMA_POOLING_TYPE_MEAN
        settings: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": n_ctx, "n_ubatch": n_ctx, "n_gpu_layers": 0,
                                    "embedding": True, "pooling_type": pooling}
        if n_threads:
            settings.update(n_threads=n_threads, n_threads_batch=n_threads)
        started = time.perf_counter()
        self._llm = _load(llama_cpp, Path(model_path), settings)  # llama.cpp's refusals in words, as for chat
        self.load_seconds = time.perf_counter() - started
        self.n_ctx = n_ctx
        self.dimensions = int(self._llm.n_embd())
        self._lock = threading.Lock()  # one llama.cpp context: one request at a time
        log.info("embedder %s loaded in %.2f s (n_ctx %d, %s pooling)", Path(model_path).name, self.load_seconds, n_ctx,
                 "the file's" if pooled_in_file else "mean")

    def count(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=True))

    def embed(self, texts: Sequence[str], *, normalize: bool = True,
              check: Callable[[int], None] = lambda done: None) -> tuple[list[list[float]], int]:
        """One vector per text (unit length when ``normalize``, as OpenAI's are) and the tokens read.

        A text longer than the context is refused, never silently cut (llama-cpp-python's default
        would embed its first ``n_batch`` tokens only). ``check(done)`` runs between chunks: it may
        raise to stop, and reports progress.
        """
        counts = [self.count(text) for text in texts]
        for index, n in enumerate(counts):
            if n > self.n_ctx:
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS,
                                     f"Input {index} has {n:,} tokens; this embedding model reads at most {self.n_ctx:,} per input. Split it into shorter pieces.")
        vectors: list[list[float]] = []
        with self._lock:
            for start in range(0, len(texts), CHUNK):
                check(start)
                got = self._llm.embed(list(texts[start:start + CHUNK]), normalize=False, truncate=False)
                vectors += [_unit(v) if normalize else list(v) for v in got]
        check(len(texts))
        return vectors, sum(counts)

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()


def _unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)
