"""``keydiff``: KeyDiff (Park et al., arXiv:2504.15364) — keep the most distinctive keys.

Each KV head keeps the keys least similar (cosine) to its anchor, the mean of its unit-normalised
keys: a key close to the mean adds little the others do not already say. It needs no attention
weights, so it runs with any attention implementation (SDPA, flash) at the price of one fused score
pass over the cached keys per eviction (``app.kernels.kv_evict.keydiff_scores``). The last
``recent`` tokens (default 8) are always kept: the score of a token that has not yet been attended
to says nothing about the next word's need for it.
"""

from __future__ import annotations

from typing import Any

import torch

from app.kernels.kv_evict import keydiff_scores
from app.runtime.kv.base import PolicyCache, PolicyLayer
from app.runtime.protocol import ErrorKind, RuntimeFailure


class KeyDiffLayer(PolicyLayer):
    def select(self, budget: int) -> torch.Tensor:
        recent = self.cache.recent
        older = self.keys[:, :, : self.stored - recent]
        return self.recent_and_top(budget, recent, keydiff_scores(older))


class KeyDiffCache(PolicyCache):
    name = "keydiff"
    layer_class = KeyDiffLayer

    def __init__(self, *, budget_tokens: int | None, config: Any, recent: int = 8, rerotate: bool = True):
        if isinstance(recent, bool) or not isinstance(recent, int) or recent < 0:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"recent must be a whole number >= 0, got {recent!r}.")
        self.recent = recent
        super().__init__(budget_tokens=budget_tokens, config=config, rerotate=rerotate)

    def min_budget(self) -> int:
        return self.recent + 1
