"""``h2o``: Heavy-Hitter Oracle (Zhang et al., arXiv:2306.14048) — heavy hitters + a recent window.

Each slot accumulates the attention it receives from every query of every forward (summed over the
query heads that share its KV head); on eviction a head keeps its last ``recent`` tokens (default
half the budget) and the ``budget - recent`` slots with the largest accumulated attention.

What it costs: attention weights, which SDPA and flash attention never materialise. The model runs
the ``hearth_observed`` attention (observe.py): an explicit softmax(QK^T)V on every forward, about
twice the attention time of SDPA, plus a transient fp32 block of [heads, <=256 queries, kv] per layer
while it runs, and 4 bytes of score per token per KV head per layer (for SmolLM2: 360 B per token,
next to 23 KiB of fp32 keys and values).
"""

from __future__ import annotations

from typing import Any

import torch

from app.runtime.kv.observe import ObservedCache, ObservedLayer
from app.runtime.protocol import ErrorKind, RuntimeFailure


class H2OLayer(ObservedLayer):
    def observe(self, probs: torch.Tensor, q_start: int, q_len: int) -> None:
        kv = probs.shape[-1]
        self.scores[..., :kv] += self.per_kv_head(probs.sum(dim=2))

    def select(self, budget: int) -> torch.Tensor:
        recent = self.cache.recent
        return self.recent_and_top(budget, recent, self.scores[..., : self.stored - recent])


class H2OCache(ObservedCache):
    name = "h2o"
    layer_class = H2OLayer

    def __init__(
        self, *, budget_tokens: int | None, config: Any, recent: int | None = None, rerotate: bool = True
    ):
        super().__init__(budget_tokens=budget_tokens, config=config, rerotate=rerotate)
        if recent is None:
            recent = self.budget // 2
        if isinstance(recent, bool) or not isinstance(recent, int) or not 0 <= recent < self.budget:
            raise RuntimeFailure(
                ErrorKind.INVALID_PARAMS,
                f"h2o's recent window must be a whole number from 0 to {self.budget - 1}; got {recent!r}.",
            )
        self.recent = recent

    def min_budget(self) -> int:
        return 2
