"""``snapkv``: SnapKV (Li et al., arXiv:2404.14469) — compress each prefill with an observation window.

After a prefill (any forward of more than one token: a prompt, a chat turn, a bench chunk), the last
``window`` queries (default 32, or a quarter of a budget under 128) vote for the earlier keys: their attention, summed over the window
and over the query heads of each KV head, smoothed by an average pool of ``kernel`` slots (default
7, so a kept token brings its neighbours), becomes each slot's score. On eviction a head keeps the
last ``window`` tokens and the ``budget - window`` best-voted earlier ones. Single decoded tokens
cast no vote (score 0), so between prefills the decoded tokens slide through as a window while the
compressed prompt stays.

What it costs: the ``hearth_observed`` attention (observe.py) on prefill forwards only — decode
steps keep SDPA — and 4 bytes of score per token per KV head per layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from app.runtime.kv.observe import ObservedCache, ObservedLayer
from app.runtime.protocol import ErrorKind, RuntimeFailure


DEFAULT_WINDOW = 32


class SnapKVLayer(ObservedLayer):
    def observe(self, probs: torch.Tensor, q_start: int, q_len: int) -> None:
        window = self.cache.window
        first = max(0, q_len - window - q_start)  # rows of this block inside the observation window
        kv = probs.shape[-1]
        if q_start == 0:
            self.scores[..., :kv] = 0.0  # a new prefill's vote replaces the old one
        if first < probs.shape[2]:
            self.scores[..., :kv] += self.per_kv_head(probs[:, :, first:].sum(dim=2))
        if q_start + probs.shape[2] >= q_len:  # the last block: smooth the finished vote
            k = self.cache.kernel
            b, h, _ = self.scores.shape
            vote = self.scores[..., :kv].reshape(b * h, 1, kv)
            pooled = F.avg_pool1d(vote, k, stride=1, padding=k // 2, count_include_pad=False)
            self.scores[..., :kv] = pooled[..., :kv].reshape(b, h, kv)

    def select(self, budget: int) -> torch.Tensor:
        window = self.cache.window
        return self.recent_and_top(budget, window, self.scores[..., : self.stored - window])


class SnapKVCache(ObservedCache):
    name = "snapkv"
    layer_class = SnapKVLayer

    def __init__(
        self, *, budget_tokens: int | None, config: Any, window: int | None = None, kernel: int = 7, rerotate: bool = True
    ):
        if window is None:  # 32 as in the paper, shrunk for small budgets so the vote still counts
            window = min(DEFAULT_WINDOW, budget_tokens // 4) if isinstance(budget_tokens, int) and budget_tokens >= 8 else DEFAULT_WINDOW
        for label, v in (("window", window), ("kernel", kernel)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"snapkv's {label} must be a whole number >= 1, got {v!r}.")
        if kernel % 2 == 0:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"snapkv's pooling kernel must be odd, got {kernel}.")
        self.window, self.kernel = window, kernel
        super().__init__(budget_tokens=budget_tokens, config=config, rerotate=rerotate)

    def min_budget(self) -> int:
        return self.window + 1

    def wants_attention(self, layer_idx: int, q_len: int) -> bool:
        return q_len > 1
