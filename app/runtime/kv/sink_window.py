"""``sink_window``: StreamingLLM (Xiao et al., arXiv:2309.17453) — attention sinks + a recent window.

The first ``sinks`` tokens (default 4) take a large share of every query's attention whatever they
say ("attention sinks"); dropping them is what makes a plain sliding window collapse. Keeping them
plus the ``budget - sinks`` most recent tokens, with positions counted inside the cache (keys
re-rotated to their slots, see base.py), keeps perplexity flat over any length. ``sinks=0`` is the
plain window that the bench shows collapsing.
"""

from __future__ import annotations

from typing import Any

import torch

from app.runtime.kv.base import PolicyCache, PolicyLayer
from app.runtime.protocol import ErrorKind, RuntimeFailure


class SinkWindowLayer(PolicyLayer):
    def select(self, budget: int) -> torch.Tensor:
        sinks = self.cache.sinks
        t = self.stored
        b, h = self.keys.shape[:2]
        dev = self.keys.device
        idx = torch.cat([torch.arange(sinks, device=dev), torch.arange(t - (budget - sinks), t, device=dev)])
        return idx.expand(b, h, budget)


class SinkWindowCache(PolicyCache):
    name = "sink_window"
    layer_class = SinkWindowLayer

    def __init__(self, *, budget_tokens: int | None, config: Any, sinks: int = 4, rerotate: bool = True):
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"sinks must be a whole number >= 0, got {sinks!r}.")
        self.sinks = sinks
        super().__init__(budget_tokens=budget_tokens, config=config, rerotate=rerotate)

    def min_budget(self) -> int:
        return self.sinks + 1
