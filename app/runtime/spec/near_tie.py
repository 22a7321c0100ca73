"""Greedy output with and without speculation on GGUF types whose batched logits round differently.

On the embedded Q4_1 model llama.cpp's CPU kernels give bitwise the same logits for a token decoded
alone or inside a verify batch, so a speculated greedy reply equals the plain one (the test in
tests/runtime/spec/test_spec_decoding.py). On F16 and K-quant files they do not: measured here, the
gap between the top two logits moves by up to about 0.02 (F16) and 0.8 (the Q4_K_M copy) between
the two paths. A speculated reply may then split from the plain one where the plain path's top two
tokens are nearly tied; everything before the split must be identical. `compare` runs both replies
and reports the first split with its margin; ``hearth bench spec``'s near_tie case
(`bench.near_tie_case`) runs it with the bench's own load and run helpers, which it is given (this
module does not import the bench, which imports it).

Both paths are watched without changing what they compute:
- plain: a logits mask that constrains nothing (it returns None) sees each step's row, which is
  exactly what plain decoding samples from (the prompt in a batch, then one token at a time), so
  the plain margin needs no second evaluation;
- speculated: a wrapper around the drafter reads the verify batch's rows in ``observe`` (the loop
  calls it right after sampling them), and a plain step's row at the next ``propose`` (the logits
  buffer still holds it). Its ``rounding`` figure is how far the two paths' gap between the plain
  path's top two tokens moved, over the positions before the split: the noise that makes a near
  tie flip.

A reply's token ids are read from the context after it (the run helper's ``held``): the prompt and
every reply token but the last one drawn, so a run asks for one token more than it compares.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.runtime.protocol import Sampling

LOOKUP_K = 5  # fixed k: every step that finds a match verifies a batch, the path whose rounding differs
DRAFT_K = 3  # as tests/runtime/spec/test_spec_decoding.py runs the model drafting for itself


@dataclass(frozen=True)
class Top2:
    """The two best tokens of one logits row, with what turns them into probabilities."""

    ids: tuple[int, int]
    logits: tuple[float, float]
    logsumexp: float

    @classmethod
    def of(cls, logits: np.ndarray) -> Top2:
        """Ties go to the lower id, as llama.cpp's greedy sampler takes the first maximum."""
        row = np.asarray(logits, dtype=np.float64)  # [n_vocab]
        best = np.argpartition(-row, 1)[:2]
        first, second = sorted((int(i) for i in best), key=lambda i: (-row[i], i))
        peak = float(row[first])
        lse = peak + float(np.log(np.exp(row - peak).sum()))
        return cls((first, second), (float(row[first]), float(row[second])), lse)

    @property
    def gap(self) -> float:
        return self.logits[0] - self.logits[1]

    def to_dict(self, text: Callable[[int], str] = str) -> dict[str, Any]:
        return {"logit_gap": round(self.gap, 6),
                "top": [[i, text(i), round(float(np.exp(v - self.logsumexp)), 6)] for i, v in zip(self.ids, self.logits)]}


def margin(logits: np.ndarray, text: Callable[[int], str] = str) -> dict[str, Any]:
    """``{"logit_gap": top-1 minus top-2 logit, "top": [[id, text, p], [id, text, p]]}`` of one row."""
    return Top2.of(logits).to_dict(text)


class PlainWatch:
    """A logits mask that allows everything and keeps each step's top two (by reply index)."""

    def __init__(self) -> None:
        self.rows: dict[int, Top2] = {}

    def __call__(self, generated: Sequence[int], logits: np.ndarray) -> None:
        self.rows[len(generated)] = Top2.of(logits)
        return None


class SpecWatch:
    """Wraps a drafter; keeps the top two of every row the speculated path sampled a token from,
    and that row's gap between the plain path's top two tokens (the rounding figure)."""

    def __init__(self, inner: Any, *, prompt_len: int, plain: dict[int, Top2]) -> None:
        self.inner, self.prompt_len, self.plain = inner, prompt_len, plain
        self.kv: Any = None
        self.rows: dict[int, Top2] = {}
        self.plain_gap: dict[int, float] = {}  # reply index -> logit[plain top-1] - logit[plain top-2] on this path
        self._at = 0  # the reply index the next decode's first row predicts

    def begin(self, kv: Any) -> dict[str, Any]:
        self.kv = kv
        begin = getattr(self.inner, "begin", None)
        return dict(begin(kv)) if begin is not None else {}

    def propose(self, tokens: Sequence[int], limit: int) -> Sequence[int]:
        self._at = len(tokens) - self.prompt_len  # tokens: the prompt and the reply so far
        if self._at - 1 not in self.rows and self._at >= 1:
            self._keep(self._at - 1, self.kv.logits(-1))  # the last step decoded one token alone (or was the prompt)
        return self.inner.propose(tokens, limit)

    def observe(self, proposed: int, accepted: int) -> None:
        for j in range(accepted + 1):  # the rows the loop drew this step's tokens from
            self._keep(self._at + j, self.kv.logits(j))
        self.inner.observe(proposed, accepted)

    def _keep(self, index: int, logits: np.ndarray) -> None:
        self.rows[index] = Top2.of(logits)
        base = self.plain.get(index)
        if base is not None:
            self.plain_gap[index] = float(logits[base.ids[0]]) - float(logits[base.ids[1]])


def first_split(plain: Sequence[int], spec: Sequence[int]) -> int | None:
    """The first index where two replies differ (one ending where the other goes on counts); None when equal."""
    for i, (a, b) in enumerate(zip(plain, spec)):
        if a != b:
            return i
    return None if len(plain) == len(spec) else min(len(plain), len(spec))


def compare(path: Path, messages: list[dict[str, str]], *, load: Callable[..., Any], run: Callable[..., dict[str, Any]],
            mode: str = "lookup", tokens: int = 128, threads: int | None = None, label: str | None = None) -> dict[str, Any]:
    """Greedy plain and speculated replies of the GGUF at ``path``, compared token by token.
    ``load(threads, path)`` gives the backend (as the planner sets it up) and ``run(backend,
    messages, sampling, drafter, mask=...)`` one reply with the context's ``held`` tokens after it:
    `bench._load` and `bench._run`. ``mode``: "lookup" (prompt lookup, k fixed) or "draft" (the
    same file drafting for itself)."""
    from app.runtime.library import read_gguf

    info = read_gguf(Path(path), source="folder")
    backend = load(threads, Path(path))
    owner: Any = None
    try:
        prompt = backend.tokenize_chat(messages)
        sampling = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=tokens + 1)  # greedy = argmax of the raw row
        watch = PlainWatch()
        plain = run(backend, messages, sampling, None, mask=watch)
        drafter, owner = _drafter(mode, Path(path), info, n_ctx=backend.n_ctx, threads=threads)
        spied = SpecWatch(drafter, prompt_len=len(prompt), plain=watch.rows)
        spec = run(backend, messages, sampling, spied)
        ids = [_reply(run["held"], prompt)[:tokens] for run in (plain, spec)]
        split = first_split(*ids)
        found = _margin_at(split, watch.rows, spied.rows, lambda token: backend._kv.piece(token).decode("utf-8", "replace"))
    finally:
        if owner is not None:
            owner.close()
        backend.close()
    noise = [abs(watch.rows[i].gap - gap) for i, gap in spied.plain_gap.items() if i in watch.rows and (split is None or i < split)]
    speculation = spec["speculation"] or {}
    return {
        "type": label or info.quantization, "mode": mode, "identical": ids[0] == ids[1], "tokens": len(ids[0]),
        "first_split": split, "margin": found,
        "rounding": {"max_gap_change": round(max(noise), 6) if noise else None,
                     "median_gap_change": round(statistics.median(noise), 6) if noise else None, "positions": len(noise)},
        "speculation": {k: speculation.get(k) for k in ("steps", "drafted", "accepted")},
        "tensor_types": tensor_types(Path(path)),
        "plain_ids": ids[0], "speculated_ids": ids[1],
    }


def _margin_at(split: int | None, plain: dict[int, Top2], spec: dict[int, Top2], text: Callable[[int], str]) -> dict[str, Any] | None:
    """The plain path's margin at the split, with the speculated path's top two there when it was seen."""
    if split is None or split not in plain:
        return None
    return {**plain[split].to_dict(text), "speculated": spec[split].to_dict(text) if split in spec else None}


def _reply(held: list[int], prompt: list[int]) -> list[int]:
    if held[: len(prompt)] != prompt:
        raise RuntimeError("the context no longer starts with the prompt (it was shifted): use a shorter reply")
    return held[len(prompt):]


def _drafter(mode: str, path: Path, info: Any, *, n_ctx: int, threads: int | None) -> tuple[Any, Any]:
    """The speculated run's drafter and what must be closed after it (the draft model's owner)."""
    from app.runtime.spec.adaptive import AdaptiveDrafter
    from app.runtime.spec.lookup import PromptLookup
    from app.runtime.spec.setup import Speculators

    if mode == "lookup":
        return AdaptiveDrafter(PromptLookup(), mode="lookup", kind="lookup", fixed_k=LOOKUP_K), None
    if mode == "draft":
        owner = Speculators(None)
        drafter = owner.drafter(f"draft:{path}", backend="llama.cpp", target=info, n_ctx=n_ctx, threads=threads)
        drafter.fixed_k = DRAFT_K
        return drafter, owner
    raise ValueError(f"unknown mode {mode!r}: lookup or draft")


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGUF type the file holds (a Q4_K_M copy of SmolLM2 is mostly Q5_0:
    its 576-column tensors do not fit K-quant blocks of 256; only the 1536-column ffn_down ones are
    K-quants, Q4_K and Q6_K)."""
    from app.runtime.library import open_gguf

    return dict(Counter(t.tensor_type.name for t in open_gguf(path).tensors).most_common())  # the header parsed once (read_gguf's)


def requantize(source: Path, folder: Path, name: str, *, threads: int | None = None) -> Path:
    """``source`` converted to GGUF type ``name`` in ``folder`` by llama.cpp's quantizer, as the
    quantize wizard's child does; its per-tensor log goes to a file, shown only if it fails."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    from app.runtime.quantize import targets
    from app.runtime.quantize.child import quantize

    out = folder / f"{source.stem}.{name}.gguf"
    log = folder / f"{name}.log"
    saved = os.dup(2)
    sys.stderr.flush()
    try:
        with open(log, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            rc = quantize(str(source), str(out), targets.get(name).ftype, max(threads or os.cpu_count() or 1, 1), None, True)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))  # quantize left its own logger set
    if rc != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"llama.cpp could not make the {name} copy of {source.name}:\n{tail}")
    return out


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """The bench's ``figures.near_tie``: per type, whether the replies were identical, else where
    they split and the plain path's margin there."""
    keys = ("type", "identical", "tokens", "first_split", "margin")
    return {name: {key: result.get(key) for key in keys} for name, result in report.items()}
