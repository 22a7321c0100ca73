"""The shared machinery of every KV policy: a transformers ``Cache`` whose layers evict to a budget.

A policy is a ``PolicyCache`` subclass plus a ``PolicyLayer`` subclass that answers one question,
``select(budget) -> keep`` (which slots of each KV head to keep), and optionally keeps a per-slot
score (H2O, SnapKV). Everything else lives here, once:

* **Lazy eviction.** ``update`` first brings the stored part down to the budget, then appends the new
  tokens and returns kept + new. The attention of a forward of ``n`` tokens therefore sees the budget
  plus those ``n`` (each chunk's queries see everything the policy kept), and eviction uses the
  scores that this forward produced. ``get_seq_length()`` reports the length *after* the pending
  eviction, which is what the causal mask (``get_query_offset`` / ``get_mask_sizes``, in slot space)
  and the next positions need. ``trim()`` evicts now.
* **Positions (StreamingLLM).** Each stored key remembers the RoPE position it was rotated with
  (``positions`` [B, H, T]). With ``rerotate=True`` a token's position is its slot: after an
  eviction the kept keys are rotated by ``slot - position`` when read (one rotation from the stored
  key, in fp32, so bf16 caches do not accumulate rounding step after step; the cost is one
  elementwise pass over the kept keys per layer and forward, nothing when nothing was evicted).
  Positions then never exceed the budget, which is what lets a model read past its trained
  context. With ``rerotate=False`` keys keep their original positions (``next_positions`` counts
  every token seen).
* **Compaction** goes through ``app.kernels.kv_evict.compact_`` (in place; Triton on a GPU).

Batch size 1 (or rows of equal length without padding) is what the decode loop uses and what is
tested; beam search, ``crop`` and ``generate()`` are not supported by evicting caches.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from app.kernels.kv_evict import compact_
from app.runtime.protocol import ErrorKind, RuntimeFailure


def rope_inv_freq(config: Any) -> torch.Tensor:
    """The model's RoPE inverse frequencies [head_dim / 2], the same way its rotary module makes them."""
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if rope_type == "default":
        base = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    elif rope_type == "dynamic" or rope_type not in ROPE_INIT_FUNCTIONS:
        # dynamic NTK changes its frequencies with the sequence length: a stored key cannot be
        # re-rotated by a fixed angle.
        raise RuntimeFailure(
            ErrorKind.UNSUPPORTED,
            f"Re-rotating cached keys needs position-independent RoPE; this model uses {rope_type!r}. "
            "Use rerotate=False or the full cache.",
        )
    else:
        inv, _ = ROPE_INIT_FUNCTIONS[rope_type](config, None)
    if inv.numel() * 2 != head_dim:
        raise RuntimeFailure(
            ErrorKind.UNSUPPORTED,
            "Re-rotating cached keys needs RoPE over the whole head (no partial rotary); "
            "use rerotate=False or the full cache.",
        )
    return inv.float()


def rotate(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys [B, H, T, D] rotated by ``delta`` [B, H, T] positions (rotate_half convention), fp32 math."""
    ang = delta[..., None].to(torch.float32) * inv_freq.to(keys.device)  # [B, H, T, D/2]
    emb = torch.cat((ang, ang), dim=-1)  # [B, H, T, D]
    k = keys.to(torch.float32)
    half = k.shape[-1] // 2
    k_half = torch.cat((-k[..., half:], k[..., :half]), dim=-1)
    return (k * emb.cos() + k_half * emb.sin()).to(keys.dtype)


class PolicyLayer(DynamicLayer):
    """One layer's cache: keys/values [B, H, T, D], their RoPE positions [B, H, T], lazy eviction."""

    is_croppable = False  # an eviction cannot be undone
    is_compileable = False

    def __init__(self, cache: PolicyCache, layer_idx: int):
        super().__init__()
        self.cache = cache
        self.layer_idx = layer_idx
        self.positions: torch.Tensor | None = None  # [B, H, T] int64
        self.seen = 0  # tokens ever appended
        self.shifted = False  # some key's slot differs from its stored position

    # -- what a policy provides -------------------------------------------------------------
    def select(self, budget: int) -> torch.Tensor:
        """Slots to keep [B, H, budget] (distinct per head, any order) out of ``self.stored``."""
        raise NotImplementedError

    def on_append(self, n: int) -> None:
        """Hook: ``n`` new slots were appended at the end."""

    def on_compact(self, keep: torch.Tensor) -> None:
        """Hook: the slots ``keep`` [B, H, n] (sorted) now sit at the front."""

    # -- transformers' layer interface -------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        b, h = key_states.shape[:2]
        d = key_states.shape[-1]
        self.keys = key_states.new_empty((b, h, 0, d))
        self.values = value_states.new_empty((b, h, 0, value_states.shape[-1]))
        self.positions = torch.empty((b, h, 0), dtype=torch.long, device=key_states.device)

    @property
    def stored(self) -> int:
        """Slots physically held now (the budget plus the last forward's tokens until evicted)."""
        return 0 if not self.is_initialized else self.keys.shape[-2]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.evict()
        b, h, n = key_states.shape[:3]
        start = self.stored if self.cache.rerotate else self.seen  # what next_positions() gave
        new_pos = torch.arange(start, start + n, device=key_states.device).expand(b, h, n)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.positions = torch.cat([self.positions, new_pos], dim=-1)
        self.seen += n
        self.on_append(n)
        return self.read_keys(), self.values

    def read_keys(self) -> torch.Tensor:
        """The stored keys as the attention must see them: rotated to their slots if re-rotating."""
        if not (self.cache.rerotate and self.shifted):
            return self.keys
        slots = torch.arange(self.stored, device=self.keys.device)
        return rotate(self.keys, slots - self.positions, self.cache.inv_freq)

    def evict(self) -> None:
        budget = self.cache.budget
        if budget is None or not self.is_initialized or self.stored <= budget:
            return
        self.cache.check_observed(self)
        keep = self.select(budget).sort(dim=-1).values  # [B, H, budget]
        compact_([self.keys, self.values], keep)
        self.keys = self.keys[:, :, :budget]
        self.values = self.values[:, :, :budget]
        self.positions = torch.gather(self.positions, 2, keep)
        self.on_compact(keep)
        if self.cache.rerotate:
            self.shifted = True

    def get_seq_length(self) -> int:
        """Tokens kept, after the pending eviction: the slot the next token goes to."""
        budget = self.cache.budget
        return self.stored if budget is None else min(self.stored, budget)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1 if self.cache.budget is None else self.cache.budget

    def reset(self) -> None:
        super().reset()
        self.positions = None
        self.seen = 0
        self.shifted = False

    def crop(self, tokens_to_remove: int) -> None:
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, "An evicting KV cache cannot be cropped.")

    # -- helpers for policies ----------------------------------------------------------------
    def recent_and_top(self, budget: int, recent: int, scores: torch.Tensor) -> torch.Tensor:
        """Keep the last ``recent`` slots and the ``budget - recent`` best ``scores`` [B, H, T-recent]."""
        t = self.stored
        b, h = self.keys.shape[:2]
        dev = self.keys.device
        tail = torch.arange(t - recent, t, device=dev).expand(b, h, recent)
        top = scores.topk(budget - recent, dim=-1).indices  # [B, H, budget - recent]
        return torch.cat([top, tail], dim=-1)


class PolicyCache(Cache):
    """A transformers ``Cache`` with a token budget; see the package docstring for the contract."""

    name: ClassVar[str] = ""
    layer_class: ClassVar[type[PolicyLayer]] = PolicyLayer
    attn_implementation: ClassVar[str | None] = None  # what the model must run with, if anything
    needs_budget: ClassVar[bool] = True

    def __init__(self, *, budget_tokens: int | None, config: Any, rerotate: bool = True):
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        layer_types = getattr(text, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise RuntimeFailure(
                ErrorKind.UNSUPPORTED,
                f"KV policy {self.name!r} supports models whose layers all use full attention; "
                f"this one has {sorted(set(layer_types))}.",
            )
        self.budget = self.check_budget(budget_tokens)
        self.rerotate = bool(rerotate)
        self.inv_freq = rope_inv_freq(text) if self.rerotate and self.budget is not None else None
        layers = [self.layer_class(self, i) for i in range(text.num_hidden_layers)]
        super().__init__(layers=layers)

    def min_budget(self) -> int:
        """The smallest budget this policy can keep (its fixed part plus one token)."""
        return 1

    def check_budget(self, budget: int | None) -> int | None:
        if budget is None and not self.needs_budget:
            return None
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < self.min_budget():
            raise RuntimeFailure(
                ErrorKind.INVALID_PARAMS,
                f"KV policy {self.name!r} needs a budget of at least {self.min_budget()} tokens "
                f"(a whole number); got {budget!r}.",
            )
        return budget

    # -- the decode loop's side --------------------------------------------------------------
    @property
    def seen_tokens(self) -> int:
        return self.layers[0].seen

    def next_positions(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """RoPE ``position_ids`` [1, n] for the next ``n`` tokens (see the package docstring)."""
        start = self.get_seq_length() if self.rerotate else self.seen_tokens
        return torch.arange(start, start + n, device=device)[None, :]

    def forward_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the model's forward (the attention observer, if needed)."""
        return {}

    def trim(self) -> None:
        """Evict now, so that every layer holds at most its budget."""
        for layer in self.layers:
            layer.evict()

    def kv_bytes(self) -> int:
        """Bytes of keys, values and per-slot state held now."""
        total = 0
        for layer in self.layers:
            if layer.is_initialized:
                for t in (layer.keys, layer.values, layer.positions, *layer_state(layer)):
                    total += t.numel() * t.element_size()
        return total

    def check_observed(self, layer: PolicyLayer) -> None:
        """Raise if this policy needed attention weights for ``layer`` and did not get them."""


def layer_state(layer: PolicyLayer) -> list[torch.Tensor]:
    """Per-slot state a policy keeps besides keys, values and positions (for memory accounting)."""
    state = getattr(layer, "scores", None)
    return [state] if isinstance(state, torch.Tensor) else []
