"""The drafter the loop is given: a guesser (prompt lookup, a draft model) plus the choice of k
before every step, from the running acceptance rate and the measured verify-cost curve.

At the start of a reply (`begin`, called by the loop with the target's context) the curve is read
from the measurement store or measured, and the planner (`planner.speculation.choose`) says
whether this reply speculates at all. Then before each step, k is the planner's `best_k` for the
current acceptance estimate; k = 0 (no guess: a plain step) whenever guessing is predicted to lose,
so a reply that does not repeat anything runs at plain speed.

The acceptance estimate: each verified guess adds its accepted tokens as successes and a rejection
as one failure (the geometric model's estimate), with a prior of a few pseudo-steps, decayed so
that the recent part of the reply counts most. A free guesser (prompt lookup) is scored every step
against what the target really produced, guessing or not, so the estimate follows the reply even
while k is 0; a draft model's guesses cost time, so only the verified ones count and the estimate
drifts back to the prior while it is off, which makes it try again now and then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from app.runtime.measurements import MeasurementStore
from app.runtime.planner import speculation as plan
from app.runtime.planner.speculation import VerifyCurve
from app.runtime.spec import costs

PRIOR_WEIGHT = 4.0  # pseudo-steps of prior
DECAY = 0.97  # per step: about the last 30 steps count


class AdaptiveDrafter:
    """Implements `backends.hooks.Drafter` (plus the optional ``begin`` the loop calls first)."""

    def __init__(self, inner: Any, *, mode: str, kind: str, store: MeasurementStore | None = None,
                 curve: VerifyCurve | None = None, draft_cost: Callable[[AdaptiveDrafter], float] | float | None = None,
                 fixed_k: int | None = None, report: dict[str, Any] | None = None) -> None:
        self.inner, self.mode, self.kind = inner, mode, kind  # kind: "lookup" | "draft"
        self.store, self.curve = store, curve
        self._draft_cost_source = draft_cost
        self.draft_cost = 0.0 if draft_cost is None or callable(draft_cost) else float(draft_cost)
        self.fixed_k = fixed_k  # tests and benches: always this k (no planner)
        self.report = dict(report or {})  # added to what `begin` reports (the draft's placement)
        self.free = bool(getattr(inner, "free", False))
        self.prior = plan.PRIOR_ACCEPTANCE[kind]
        self.successes, self.failures = 0.0, 0.0
        self.choice: plan.SpecChoice | None = None
        self.curve_source = "given" if curve is not None else "none"
        self.k_used: list[int] = []  # per step: the k chosen
        self.drafted_sizes: list[int] = []  # per step: the tokens really proposed (lookup may find fewer)
        self._shadow: tuple[int, int, list[int]] | None = None  # (history length, last token, guess) scored at the next call

    # ---- the loop's hooks -------------------------------------------------------------------

    def begin(self, kv: Any) -> dict[str, Any]:
        """Called once per reply before the prompt is evaluated: read or measure the costs and decide."""
        started = time.perf_counter()
        if self.curve is None:
            self.curve, self.curve_source = costs.stored_or_measured(kv, self.store)
        if callable(self._draft_cost_source):
            self.draft_cost = float(self._draft_cost_source(self))
        if self.fixed_k is not None:
            self.choice = plan.SpecChoice(self.mode, self.fixed_k, 1.0, f"fixed k={self.fixed_k}")
        else:
            self.choice = plan.choose(self.mode, curve=self.curve, draft_cost=self.draft_cost if self.kind == "draft" else None,
                                      acceptance={self.kind: self.rate})
        out = {**self.report, **self.choice.to_dict(), "on": self.choice.on, "curve_source": self.curve_source,
               "setup_ms": round((time.perf_counter() - started) * 1000, 1)}
        if self.curve is not None:
            out["verify_cost"] = {str(n): round(self.curve.relative(n), 3) for n in sorted(self.curve.seconds)}
        if self.kind == "draft":
            out["draft_cost"] = round(self.draft_cost, 3)
        return out

    @property
    def rate(self) -> float:
        """The running acceptance estimate (per drafted token)."""
        return (self.successes + self.prior * PRIOR_WEIGHT) / (self.successes + self.failures + PRIOR_WEIGHT)

    def next_k(self, limit: int) -> int:
        if self.fixed_k is not None:
            return min(self.fixed_k, limit)
        if self.curve is None or self.choice is None or not self.choice.on:
            return 0
        k, _ = plan.best_k(self.rate, self.curve, draft_cost=self.draft_cost if self.kind == "draft" else 0.0,
                           k_max=min(plan.K_MAX, limit))
        return k

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        if self.free:
            self._score_shadow(tokens)
        k = self.next_k(limit)
        self.k_used.append(k)
        if self.free:
            guess = list(self.inner.propose(tokens, max(k, plan.K_MAX)))  # scored next time, used or not
            self._shadow = (len(tokens), int(tokens[-1]), guess) if guess else None
            out = guess[:k]
        else:
            self._decay()
            out = list(self.inner.propose(tokens, k)) if k > 0 else []
        self.drafted_sizes.append(len(out))
        return out

    def observe(self, proposed: int, accepted: int) -> None:
        self.inner.observe(proposed, accepted)
        if not self.free:
            self._count(accepted, rejected=accepted < proposed)

    # ---- the estimate -----------------------------------------------------------------------

    def _decay(self) -> None:
        self.successes *= DECAY
        self.failures *= DECAY

    def _count(self, accepted: int, *, rejected: bool) -> None:
        self.successes += accepted
        self.failures += 1.0 if rejected else 0.0

    def _score_shadow(self, tokens: Sequence[int]) -> None:
        """Compare the last guess with the tokens that really followed it."""
        shadow, self._shadow = self._shadow, None
        if shadow is None:
            return
        at, last, guess = shadow
        if len(tokens) <= at or int(tokens[at - 1]) != last:
            return  # the context was shifted or replaced: nothing to score
        real = tokens[at : at + len(guess)]
        matched = 0
        while matched < len(real) and int(real[matched]) == guess[matched]:
            matched += 1
        self._decay()
        self._count(matched, rejected=matched < len(real))
