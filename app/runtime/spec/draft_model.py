"""A draft model: a smaller model with the same vocabulary, in its own llama.cpp context, guessing
greedily what the target will say.

The vocabularies must be the same token for token (ids, texts, BOS/EOS): a draft's token id is
handed to the target as is. `vocabulary_mismatch` compares them after loading only the
vocabularies (no weights), and says how they differ; the engine refuses a draft model for which it
answers anything.

The draft keeps its own KV cache in step with the conversation the cheap way: before a guess it
keeps the longest prefix it holds of the target's tokens, evaluates the rest, then decodes its k
guesses one at a time (argmax). Accepted guesses stay in its cache for the next step.
Greedy guesses make the draft's distribution one-hot, for which the loop's "draw from the target,
accept when equal" is exactly the speculative-sampling rule (see `rejection`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.runtime.backends.context import common_prefix
from app.runtime.backends.llama_kv import KvSequence

log = logging.getLogger(__name__)


def vocabulary(path: str | Path) -> dict[str, Any]:
    """A model file's vocabulary as a comparable fingerprint (type, size, BOS/EOS, digest of every token's text)."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
    if not model:
        raise ValueError(f"llama.cpp could not read the vocabulary of {Path(path).name}")
    try:
        return _fingerprint(llama_cpp, llama_cpp.llama_model_get_vocab(model))
    finally:
        llama_cpp.llama_model_free(model)


def loaded_vocabulary(llm: Any) -> dict[str, Any]:
    """The fingerprint of an already loaded `llama_cpp.Llama`."""
    import llama_cpp

    return _fingerprint(llama_cpp, llama_cpp.llama_model_get_vocab(llm.model))


def _fingerprint(lib: Any, vocab: Any) -> dict[str, Any]:
    n = int(lib.llama_vocab_n_tokens(vocab))
    digest = hashlib.sha256()
    for i in range(n):
        digest.update(bytes(lib.llama_vocab_get_text(vocab, i) or b""))
        digest.update(b"\0")
    return {"type": int(lib.llama_vocab_type(vocab)), "n_tokens": n, "bos": int(lib.llama_vocab_bos(vocab)),
            "eos": int(lib.llama_vocab_eos(vocab)), "digest": digest.hexdigest()}


def vocabulary_mismatch(target: dict[str, Any], draft: dict[str, Any]) -> str | None:
    """None when the draft's token ids mean what the target's do; else how they differ, in words."""
    if target["n_tokens"] != draft["n_tokens"]:
        return f"its vocabulary has {draft['n_tokens']:,} tokens and the model's has {target['n_tokens']:,}"
    if target["type"] != draft["type"]:
        return "its tokenizer is of another kind"
    if (target["bos"], target["eos"]) != (draft["bos"], draft["eos"]):
        return "its begin/end-of-text tokens differ"
    if target["digest"] != draft["digest"]:
        return "the same number of tokens, but different token texts"
    return None


class DraftModel:
    """The `Drafter` over a second llama.cpp context; `close` frees it."""

    free = False  # every guess costs k draft decodes

    def __init__(self, path: str | Path, *, n_ctx: int, n_gpu_layers: int = 0, n_threads: int | None = None) -> None:
        import llama_cpp

        self.path = Path(path)
        # as asked: llama.cpp pads the context, and llama-cpp-python stores n_gpu_layers -1 (all) as 0x7FFFFFFF
        self.n_ctx, self.n_gpu_layers = n_ctx, n_gpu_layers
        started = time.perf_counter()
        self.llm = llama_cpp.Llama(str(self.path), n_ctx=n_ctx, n_batch=min(512, n_ctx), n_gpu_layers=n_gpu_layers,
                                   n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
        self.kv = KvSequence(self.llm)
        self.load_seconds = time.perf_counter() - started
        self.token_seconds: float | None = None  # one draft token, measured at first use

    @property
    def settings(self) -> tuple[Any, ...]:
        """(file, context, n_gpu_layers as asked, threads): equal settings mean the loaded draft can be kept."""
        return (str(self.path), self.n_ctx, self.n_gpu_layers, int(self.llm.context_params.n_threads))

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        kv = self.kv
        if limit <= 0 or not tokens:
            return []
        window = list(tokens[-(kv.n_ctx - limit - 1):])  # a long conversation: the draft sees its tail
        keep = kv.cut(min(common_prefix(kv.held(), window), len(window) - 1))
        for start in range(keep, len(window), kv.n_batch):
            kv.decode(window[start : start + kv.n_batch])
        out: list[int] = []
        started = time.perf_counter()
        for _ in range(limit):
            token = int(np.argmax(kv.logits(-1)))
            if kv.is_eog(token):
                break
            out.append(token)
            if len(out) < limit:
                kv.decode([token])
        if out:
            took = (time.perf_counter() - started) / len(out)
            self.token_seconds = took if self.token_seconds is None else 0.8 * self.token_seconds + 0.2 * took
        return out

    def observe(self, proposed: int, accepted: int) -> None:
        """The cache already holds the guesses; the next `propose` keeps the accepted prefix."""

    def cost_per_token(self) -> float:
        """Seconds for one draft token (measured now when no guess has timed it yet)."""
        if self.token_seconds is None:
            kv, base = self.kv, self.kv.n
            if base + 2 > kv.n_ctx:
                kv.cut(0)
                base = 0
            kv.decode([0])
            started = time.perf_counter()
            kv.decode([0])
            self.token_seconds = time.perf_counter() - started
            kv.cut(base)
        return self.token_seconds

    def close(self) -> None:
        kv, llm = getattr(self, "kv", None), getattr(self, "llm", None)
        self.kv, self.llm = None, None  # type: ignore[assignment]
        if kv is not None:
            kv.close()
        if llm is not None:
            llm.close()
