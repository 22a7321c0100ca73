"""The two hooks a token loop offers the features built on it: a logits mask and a drafter.

- A **logits mask** constrains each step (a grammar for tool calls, issue 17): it sees the step's
  logits and the reply's tokens so far and returns what may come next, in whichever form its
  compiler gives: allowed token ids, a boolean mask over the vocabulary, or an additive bias.
- A **drafter** guesses the next tokens cheaply (prompt lookup, a draft model: issue 18); the loop
  verifies a guess in one batch of the target model and keeps the longest prefix the target agrees
  with, so the output is what plain decoding gives. Speculation is off while a mask or a grammar
  constrains the reply: the verify step would have to run the constraint on tokens it may reject.

Both are plain callables/objects with no llama.cpp in them, so they are testable alone and a
second backend can adopt them. `SpeculationReporter` is the one throttle both backends report a
reply's running speculation through (the studio's live acceptance rate).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Union

import numpy as np

# What a mask may return: None (no constraint this step), allowed token ids (a sequence or an
# integer array), a boolean array over the vocabulary (True = allowed) or a float array added to
# the logits (-inf forbids). An empty set of allowed tokens ends the reply ("stop").
Constraint = Union[None, Sequence[int], np.ndarray]


class LogitsMask(Protocol):
    def __call__(self, generated: Sequence[int], logits: np.ndarray) -> Constraint:
        """What may follow ``generated`` (the reply's tokens so far); ``logits`` is this step's
        row (float32, one per vocabulary entry), read-only by convention: return, do not edit."""
        ...


class Drafter(Protocol):
    def propose(self, tokens: Sequence[int], limit: int) -> Sequence[int]:
        """Up to ``limit`` tokens likely to follow ``tokens`` (the whole context so far, prompt and
        reply, its last token being the one the guess continues). Fewer, or none, is fine."""
        ...

    def observe(self, proposed: int, accepted: int) -> None:
        """How the last guess went: ``accepted`` of ``proposed`` tokens matched the target (to adapt k)."""
        ...

    # Optional: ``begin(kv) -> dict`` is called once per reply, before the prompt is evaluated, with
    # the target's `KvSequence` (to measure costs there); the dict says whether to speculate
    # (``on``), why (``reason``), and is reported as the reply's ``speculation.plan``.


@dataclass
class Speculation:
    """What speculation did in one reply: verify steps, tokens proposed, tokens the target accepted."""

    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    off: str | None = None  # why the drafter was not used, when it was not
    plan: dict[str, Any] | None = None  # what the drafter's ``begin`` decided (drafter, k, predicted speed-up, reason)

    @property
    def rejected(self) -> int:
        return self.drafted - self.accepted

    @property
    def acceptance(self) -> float | None:
        """Accepted / drafted tokens; None before any guess was verified."""
        return self.accepted / self.drafted if self.drafted else None

    def to_dict(self) -> dict[str, Any]:
        rate = self.acceptance
        return {"steps": self.steps, "drafted": self.drafted, "accepted": self.accepted,
                **({"acceptance": round(rate, 4)} if rate is not None else {}), **({"off": self.off} if self.off else {}),
                **({"plan": self.plan} if self.plan else {})}


SpeculationSink = Callable[[dict[str, Any]], None]  # a reply's speculation so far (`SpeculationReporter.step`)
REPORT_INTERVAL = 0.25  # seconds between live reports: the status bar reads it, a person cannot read faster


class SpeculationReporter:
    """Hands a reply's speculation so far to ``sink``, at most once per ``interval`` seconds.

    Both token loops call `step` after each verify step (the torch one after each shown piece, as
    SpecExec counts its steps inside its own generator); the sink gets `Speculation.to_dict()`
    without the plan (it does not change during a reply, and the final result carries it) plus
    ``tokens`` generated so far. The first verified guess is always reported, so even a short
    reply shows a rate before it ends; after that, at most one report per interval, never one per
    token: each report is a progress event that crosses the worker's pipe. ``clock`` is injected
    by tests.
    """

    def __init__(self, sink: SpeculationSink | None, *, interval: float = REPORT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._interval = interval
        self._clock = clock
        self._last: float | None = None  # when the last report went out; None before the first
        self._reported_steps = 0

    def step(self, spec: Speculation | None, *, tokens: int) -> None:
        """After a verify step: report ``spec`` when a new guess was verified and the interval has passed."""
        if self._sink is None or spec is None or spec.steps <= self._reported_steps:
            return  # no sink, nothing verified yet, or nothing new since the last report
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return
        self._last, self._reported_steps = now, spec.steps
        stats = spec.to_dict()
        stats.pop("plan", None)
        self._sink({**stats, "tokens": tokens})


def apply_constraint(logits: np.ndarray, constraint: Constraint) -> bool:
    """Apply a mask's answer to ``logits`` in place; False when it allows no token at all."""
    if constraint is None:
        return True
    arr = constraint if isinstance(constraint, np.ndarray) else np.asarray(list(constraint), dtype=np.int64)
    if arr.size == 0:
        return False
    if arr.dtype == np.bool_:
        _same_shape(arr, logits)
        if not arr.any():
            return False
        logits[~arr] = -np.inf
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() >= logits.shape[0]:
            raise ValueError(f"the logits mask allowed a token id outside the vocabulary (0..{logits.shape[0] - 1})")
        kept = logits[arr].copy()
        logits.fill(-np.inf)
        logits[arr] = kept
    elif np.issubdtype(arr.dtype, np.floating):
        _same_shape(arr, logits)
        logits += arr
        if not np.isfinite(logits).any():
            return False
    else:
        raise TypeError(f"a logits mask returned an array of {arr.dtype}; return token ids, a bool mask or a float bias")
    return True


def _same_shape(arr: np.ndarray, logits: np.ndarray) -> None:
    if arr.shape != logits.shape:
        raise ValueError(f"a logits mask returned shape {arr.shape}; the vocabulary has {logits.shape[0]} entries")
