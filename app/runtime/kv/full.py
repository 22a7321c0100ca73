"""``full``: no eviction, the reference every policy is measured against."""

from __future__ import annotations

from typing import Any

from app.runtime.kv.base import PolicyCache, PolicyLayer
from app.runtime.protocol import ErrorKind, RuntimeFailure


class FullCache(PolicyCache):
    """Keeps every token. ``budget_tokens`` may be None (unbounded) or a cap that must not be hit:
    with a cap, the cache refuses to grow past it rather than evict."""

    name = "full"
    needs_budget = False

    def __init__(self, *, budget_tokens: int | None = None, config: Any, rerotate: bool = True):
        super().__init__(budget_tokens=budget_tokens, config=config, rerotate=rerotate)
        self.cap, self.budget = self.budget, None  # never evict; `cap` is only checked
        self.inv_freq = None

    class Layer(PolicyLayer):
        def on_append(self, n: int) -> None:
            cap = self.cache.cap
            if cap is not None and self.stored > cap:
                raise RuntimeFailure(
                    ErrorKind.INVALID_PARAMS,
                    f"The context ({self.stored} tokens) is longer than the full cache's {cap}-token "
                    "budget; choose an evicting KV policy or a larger context.",
                )

    layer_class = Layer
