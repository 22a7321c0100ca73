"""Is the quantized model still good? Measured against its source on the same held-out tokens.

- Perplexity: the text is cut into windows of ``WINDOW`` tokens; the first ``CONTEXT`` tokens of a
  window only give context and the rest are scored (so no token is judged with almost nothing
  before it, at a quarter of the cost of llama.cpp's score-the-second-half rule). Figures are
  comparable between models measured here, not with other tools' numbers.
- KL divergence of the next-token distributions, source || quantized, at every scored position:
  the source's log-probabilities are kept in a float16 memory-mapped file (vocabulary x scored
  tokens x 2 bytes, 200 MB for 2,048 tokens of a 49k vocabulary) rather than in RAM, because
  llama.cpp with ``logits_all=True`` already holds a window x vocabulary float buffer.
  float16 rounding of log p is below 5e-4 where p > 1/e, far under the KL of any real quantization.
  Also reported: how often both models agree on the most likely token.
- Decode speed: greedy tokens per second after a short prompt, and the file size.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.runtime.jobs import JobStopped
from app.runtime.protocol import ErrorKind, JobStatus, RuntimeFailure

log = logging.getLogger(__name__)

WINDOW = 512
CONTEXT = 64
DEFAULT_TOKENS = 2048  # scored tokens: "a few thousand" is where KL and perplexity settle
DECODE_TOKENS = 32


@dataclass
class Scores:
    perplexity: float
    tokens: int  # scored tokens
    kl_mean: float | None = None
    kl_p99: float | None = None
    top1_agreement: float | None = None  # share of positions where both models' best token is the same
    decode_tps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def held_out_text() -> str:
    """The evaluation text: the shipped held-out book, or a licence text every Debian has."""
    try:
        from app.runtime.texts import held_out_text as shipped

        return shipped()
    except (ImportError, RuntimeFailure):
        log.exception("the shipped evaluation text is missing; using /usr/share/common-licenses/GPL-3")
        return Path("/usr/share/common-licenses/GPL-3").read_text(encoding="utf-8")


def windows(tokens: list[int], scored: int, *, window: int = WINDOW, context: int = CONTEXT) -> list[list[int]]:
    """Consecutive windows of ``tokens`` that together score about ``scored`` tokens."""
    per = window - context - 1
    n = max(1, math.ceil(scored / per))
    chunks = [tokens[i * window : (i + 1) * window] for i in range(n)]
    chunks = [c for c in chunks if len(c) > context + 1]
    if not chunks:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"The evaluation text is too short: {len(tokens)} tokens.")
    return chunks


class Scorer:
    """Accumulates perplexity and, against a reference, KL over the windows of one model.

    With ``store`` the scorer writes its own log-probabilities there (it is the reference); with
    ``reference`` it compares against one written before.
    """

    def __init__(self, *, store: np.memmap | None = None, reference: np.memmap | None = None, context: int = CONTEXT) -> None:
        self.store, self.reference, self.context = store, reference, context
        self.nll = 0.0
        self.count = 0
        self.kl: list[np.ndarray] = []
        self.agree = 0

    def add(self, logits: np.ndarray, chunk: list[int]) -> None:
        """``logits``: (len(chunk), vocab) float32, row i predicting chunk[i + 1]."""
        c = self.context
        rows = np.asarray(logits[c : len(chunk) - 1], dtype=np.float32)
        logp = rows - rows.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        nxt = np.asarray(chunk[c + 1 :], dtype=np.int64)
        self.nll -= float(logp[np.arange(len(nxt)), nxt].sum(dtype=np.float64))
        start, m = self.count, len(nxt)
        if self.store is not None:
            self.store[start : start + m] = logp.astype(np.float16)
        if self.reference is not None:
            ref = np.asarray(self.reference[start : start + m], dtype=np.float32)
            kl = (np.exp(ref) * (ref - logp)).sum(axis=1)
            self.kl.append(np.maximum(kl, 0.0))
            self.agree += int((ref.argmax(axis=1) == logp.argmax(axis=1)).sum())
        self.count += m

    def scores(self) -> Scores:
        result = Scores(perplexity=math.exp(self.nll / max(self.count, 1)), tokens=self.count)
        if self.reference is not None and self.kl:
            kl = np.concatenate(self.kl)
            result.kl_mean = float(kl.mean())
            result.kl_p99 = float(np.quantile(kl, 0.99))
            result.top1_agreement = self.agree / max(self.count, 1)
        return result


def reference_store(path: Path, n_tokens: int, vocab: int) -> np.memmap:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n_tokens, vocab))


def open_reference(path: Path) -> np.memmap:
    return np.load(path, mmap_mode="r")


def tokenize_gguf(path: Path, text: str, max_tokens: int) -> tuple[list[int], int]:
    """The text as the model's own tokenizer splits it (a vocabulary-only load), and the vocabulary size."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        # about 4 characters per token in English; take enough text and cut the tokens after
        return llm.tokenize(text[: max_tokens * 8].encode("utf-8"), add_bos=False, special=False)[:max_tokens], llm.n_vocab()
    finally:
        llm.close()


def evaluate_gguf(
    path: Path,
    chunks: list[list[int]],
    *,
    store: np.memmap | None = None,
    reference: np.memmap | None = None,
    state: Any = None,
    label: str = "",
    threads: int | None = None,
) -> Scores:
    """Perplexity (and KL against ``reference``) of a GGUF model over ``chunks``, then its decode speed."""
    import llama_cpp

    n_ctx = max(len(c) for c in chunks)
    try:
        threads = threads or _threads()
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False)
    except ValueError as exc:
        raise RuntimeFailure(ErrorKind.LOAD_FAILED, f"llama.cpp could not load {path.name} to evaluate it: {exc}") from exc
    scorer = Scorer(store=store, reference=reference)
    started = time.monotonic()
    try:
        for i, chunk in enumerate(chunks):
            _check_cancel(state)
            llm.reset()
            llm.eval(chunk)
            scorer.add(llm.scores[: len(chunk)], chunk)
            if state is not None:
                done = (i + 1) / len(chunks)
                spent = time.monotonic() - started
                state.progress("evaluate", fraction=done, message=f"Measuring {label or path.name}: window {i + 1}/{len(chunks)}", eta_s=spent * (1 - done) / done)
        result = scorer.scores()
        _check_cancel(state)
        result.decode_tps = _decode_speed(llm, chunks[0][:32])
    finally:
        llm.close()
    return result


def _decode_speed(llm: Any, prompt: list[int]) -> float:
    """Greedy tokens per second, timed from the first generated token (the prompt excluded)."""
    llm.reset()
    first = None
    n = 0
    for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if first is None:
            first = time.perf_counter()
        else:
            n += 1
        if n >= DECODE_TOKENS:
            break
    assert first is not None
    return n / max(time.perf_counter() - first, 1e-9)


def _check_cancel(state: Any) -> None:
    """A cancel (or pause: an evaluation keeps nothing to resume from) ends the run as cancelled."""
    if state is not None and state.cancelled:
        raise JobStopped(JobStatus.CANCELLED, "Cancelled during the evaluation; nothing was added to the library.")


def _threads() -> int:
    """Physical cores that are idle now. llama.cpp's threads wait for each other at every op, so a
    thread more than the machine has free makes decoding many times slower, not faster (measured
    here: 24 tok/s with one thread, 1-3 tok/s with two, on a busy two-core machine)."""
    import os

    import psutil

    cores = max(psutil.cpu_count(logical=False) or 1, 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))
