"""KV-cache policies for the torch backend: a registry of transformers ``Cache`` subclasses by name.

``make_cache(name, budget_tokens=..., config=model.config, **options)`` builds one of ``POLICIES``:

=============  =================================================================================
``full``       no eviction (``budget_tokens`` may be None); the reference every policy is held to
``sink_window`` StreamingLLM: ``sinks`` first tokens (default 4) + the most recent tokens
``h2o``        heavy hitters (accumulated attention) + a recent window (default half the budget)
``snapkv``     after each prefill, keeps the prefix keys most attended by the last ``window``
               queries (pooled), plus that window; between prefills it behaves as a window
``keydiff``    keeps the keys least similar (cosine) to the mean key, plus a few recent tokens
=============  =================================================================================

Every evicting cache holds at most ``budget_tokens`` tokens per layer *between* forwards (the
sinks and windows count inside the budget); during one forward of ``n`` new tokens the attention
sees the kept tokens plus those ``n`` (so a chunk's queries still see the whole budget).

The decode-loop contract (transformers 5.23; batch size 1, no padding)
----------------------------------------------------------------------
1. ``cache = make_cache(name, budget_tokens=B, config=model.config)``.
2. If ``cache.attn_implementation`` is not None (``h2o`` always; ``snapkv``), the model must run
   with that attention implementation: ``model.set_attn_implementation(cache.attn_implementation)``.
   Importing this package registers it (``"hearth_observed"``, see ``observe.py``); without an
   observer it is plain SDPA, so a backend may switch a model to it once, at load. A cache that
   needed attention weights and did not get them raises instead of silently evicting blindly.
3. Each forward of the next ``n`` tokens (prefill chunk or one decoded token)::

       out = model(input_ids=ids,                       # [1, n]
                   past_key_values=cache,
                   position_ids=cache.next_positions(n),  # [1, n] RoPE positions, see below
                   use_cache=True,
                   **cache.forward_kwargs())            # {} or {"kv_observer": cache}

   * ``attention_mask``: leave it None. (If given, it must cover ``cache.get_seq_length() + n``
     slots, never every token seen so far.) There is no ``cache_position`` in 5.23: the causal mask
     is built in *slot* space from ``cache.get_query_offset()`` (= ``get_seq_length()``, the tokens
     kept) and ``cache.get_mask_sizes(n, layer)`` = ``(get_seq_length() + n, 0)``.
   * ``next_positions(n)``: with ``rerotate=True`` (every policy's default) the RoPE position of a
     token is its slot in the cache, as in StreamingLLM: kept keys are re-rotated to contiguous
     positions when they are read, so positions never exceed the budget and a model can run past
     its trained context. ``next_positions(n)`` is then ``get_seq_length() + arange(n)`` — the very
     positions transformers uses when ``position_ids`` is omitted. With ``rerotate=False`` keys keep
     their original positions and ``next_positions(n)`` is ``seen_tokens + arange(n)``; passing
     ``position_ids`` is then mandatory. Always passing it is correct for both.
   * ``model.generate()`` is not supported with an evicting cache: it derives positions from its own
     growing attention mask.
4. ``cache.seen_tokens``: tokens fed so far; ``cache.get_seq_length()``: tokens kept (<= budget).
   Eviction is lazy (at the next ``update``, or at ``cache.trim()``); ``cache.kv_bytes()`` is the
   memory held now (call ``trim()`` first to see the steady state).
"""

from __future__ import annotations

import inspect
from typing import Any

from app.runtime.kv.base import PolicyCache
from app.runtime.kv.full import FullCache
from app.runtime.kv.h2o import H2OCache
from app.runtime.kv.keydiff import KeyDiffCache
from app.runtime.kv.observe import OBSERVED_ATTENTION
from app.runtime.kv.quantized import KV_CACHES
from app.runtime.kv.sink_window import SinkWindowCache
from app.runtime.kv.snapkv import SnapKVCache
from app.runtime.protocol import ErrorKind, RuntimeFailure

POLICIES: dict[str, type[PolicyCache]] = {
    "full": FullCache,
    "sink_window": SinkWindowCache,
    "h2o": H2OCache,
    "snapkv": SnapKVCache,
    "keydiff": KeyDiffCache,
}
# Caches that keep every token but store it in int8/int4 (app/kernels/kv_cache): another axis than
# eviction, selectable by the same names so the planner and the chat settings treat them alike.
QUANTIZED: dict[str, type[Any]] = dict(KV_CACHES)


def make_cache(name: str, *, budget_tokens: int | None, config: Any, **options: Any) -> PolicyCache:
    """A fresh cache of policy ``name`` holding at most ``budget_tokens`` tokens per layer.

    ``options`` are the policy's own keyword arguments (e.g. ``sinks=4`` for ``sink_window``).
    Raises RuntimeFailure(INVALID_PARAMS) for an unknown name, a budget that is not a positive
    integer large enough for the policy's fixed part, or an unknown option.
    """
    cls = POLICIES.get(name) or QUANTIZED.get(name)
    if cls is None:
        raise RuntimeFailure(
            ErrorKind.INVALID_PARAMS,
            f"Unknown KV-cache policy {name!r}; choose one of: {', '.join([*POLICIES, *QUANTIZED])}.",
        )
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "budget_tokens", "config"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise RuntimeFailure(
            ErrorKind.INVALID_PARAMS,
            f"KV policy {name!r} has no option {', '.join(unknown)}; its options are: {', '.join(sorted(accepted))}.",
        )
    return cls(budget_tokens=budget_tokens, config=config, **options)


__all__ = ["OBSERVED_ATTENTION", "POLICIES", "QUANTIZED", "PolicyCache", "make_cache"]
