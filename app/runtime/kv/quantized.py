"""Quantized KV caches for the torch backend: ``int8_kv`` and ``int4_kv`` (KIVI, arXiv:2402.02750).

Each layer keeps an :class:`app.kernels.kv_cache.QuantizedKVCache`: keys quantized per channel in
groups of ``group_size`` tokens, values per token, both asymmetric, and the newest ``residual`` to
``residual + group_size`` tokens in full precision. Stored cost at int8: 1 byte per element plus
8 bytes (scale and minimum) per key channel per group and per value token — about 1.1 bytes per
element for SmolLM2's 64-wide heads, against 4 (fp32) or 2 (bf16); half the codes at int4.

Why not transformers' ``QuantizedLayer``: in 5.23 it re-quantizes the *whole* cache each time its
residual fills (each round trip adds error again), and its backends are quanto/HQQ. The store here
appends: a token is quantized exactly once, when its key group forms. So the layer subclasses
``DynamicLayer`` (as transformers' own FP8 layer does for the same reason) and implements
``update`` over the kernel's store.

What the attention sees:

* A forward of ``n`` tokens gets back every cached token, the quantized part dequantized
  (``app.kernels.kv_cache.keys_values``), with its own ``n`` new tokens exact: a prefill attends to
  itself in full precision, as in KIVI; later tokens read the quantized past.
* Decode (one token) can skip that dequantized copy: run the model with
  ``attn_implementation = "hearth_quantized_kv"`` (registered on import; SDPA otherwise) and pass
  ``**cache.forward_kwargs()``; the one-token attention then calls
  ``app.kernels.kv_cache.decode_attention`` on the quantized store itself (Triton on a GPU reads the
  int8/int4 codes directly; on the CPU the reference dequantizes). Until that attention function
  has served a layer, ``update`` returns the full dequantized keys and values, so a model left on
  plain SDPA still computes the right thing, just without the fused read.

The decode-loop contract is that of ``app.runtime.kv`` (``seen_tokens``, ``next_positions``,
``forward_kwargs``, ``trim``, ``kv_bytes``); there is no eviction: ``budget_tokens`` is None or a cap
that must not be exceeded. Batch of equal-length rows; beam search and ``crop`` are not supported.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from app.kernels.kv_cache import QuantizedKVCache, decode_attention, keys_values
from app.runtime.protocol import ErrorKind, RuntimeFailure

QUANTIZED_ATTENTION = "hearth_quantized_kv"
CACHE_KWARG = "quantized_kv"


class QuantizedKVLayer(DynamicLayer):
    """One layer's KIVI store; ``update`` appends and returns what the attention needs."""

    is_croppable = False
    is_compileable = False

    def __init__(self, *, bits: int, group_size: int, residual: int) -> None:
        super().__init__()
        self.bits, self.group_size, self.residual = bits, group_size, residual
        self.store: QuantizedKVCache | None = None
        self.fused = False  # the quantized-KV attention function has served this layer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, t, d = key_states.shape
        self.store = QuantizedKVCache.empty(
            batch=b, n_head_kv=h, head_dim=d, dtype=key_states.dtype, device=key_states.device,
            bits=self.bits, group_size=self.group_size, residual=self.residual, capacity=t,
        )
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k/v [B, Hkv, n, D]; return [B, Hkv, T, D] each (or only the new token, fused)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.store is not None
        self.store.append(key_states, value_states)
        n = key_states.shape[2]
        if self.fused and n == 1:
            return key_states, value_states  # the attention reads the store (decode_attention)
        keys, values = keys_values(self.store, self.dtype)  # [B, Hkv, T, D]
        keys[:, :, -n:] = key_states  # the forward's own tokens, exact
        values[:, :, -n:] = value_states
        return keys, values

    def get_seq_length(self) -> int:
        return 0 if self.store is None else self.store.seq_len

    def reset(self) -> None:
        self.store = None
        self.fused = False
        self.is_initialized = False

    def nbytes(self) -> int:
        return 0 if self.store is None else self.store.nbytes_used()

    def crop(self, tokens_to_remove: int) -> None:
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, "A quantized KV cache cannot be cropped.")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, "Beam search is not supported with a quantized KV cache.")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, "A quantized KV cache cannot be expanded in batch.")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, "A quantized KV cache cannot be re-batched.")

    def offload(self) -> None:
        """Nothing to offload: the store is already small (see the module doc)."""

    def prefetch(self) -> None:
        """Nothing to prefetch."""


class QuantizedKV(Cache):
    """KIVI-quantized KV cache for every layer; subclasses fix the bits (``int8_kv``, ``int4_kv``).

    ``QuantizedKV(budget_tokens=None, config=model.config, bits=8, group_size=32, residual=32)``
    """

    name: ClassVar[str] = "quantized_kv"
    default_bits: ClassVar[int] = 8
    needs_budget: ClassVar[bool] = False
    attn_implementation: ClassVar[str | None] = QUANTIZED_ATTENTION  # optional, see the module doc

    def __init__(
        self,
        *,
        budget_tokens: int | None = None,
        config: Any,
        bits: int | None = None,
        group_size: int = 32,
        residual: int = 32,
    ) -> None:
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        layer_types = getattr(text, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise RuntimeFailure(
                ErrorKind.UNSUPPORTED,
                f"The {self.name} cache supports models whose layers all use full attention; "
                f"this one has {sorted(set(layer_types))}.",
            )
        if budget_tokens is not None and (isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int) or budget_tokens < 1):
            raise RuntimeFailure(
                ErrorKind.INVALID_PARAMS, f"budget_tokens must be None or a positive whole number; got {budget_tokens!r}."
            )
        self.cap = budget_tokens
        self.bits = self.default_bits if bits is None else bits
        try:  # validate once, here, with the kernel's own checks
            QuantizedKVCache.empty(batch=1, n_head_kv=1, head_dim=2, dtype=torch.float32,
                                   bits=self.bits, group_size=group_size, residual=residual)
        except ValueError as exc:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Quantized KV cache: {exc}") from exc
        layers = [
            QuantizedKVLayer(bits=self.bits, group_size=group_size, residual=residual)
            for _ in range(text.num_hidden_layers)
        ]
        super().__init__(layers=layers)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cap is not None and self.layers[layer_idx].get_seq_length() + key_states.shape[2] > self.cap:
            raise RuntimeFailure(
                ErrorKind.INVALID_PARAMS,
                f"The context would exceed the {self.cap}-token cap of the {self.name} cache; "
                "choose a larger context or an evicting KV policy.",
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    # -- the decode loop's side (same as app.runtime.kv's policies) -----------------------------
    @property
    def seen_tokens(self) -> int:
        return self.get_seq_length()

    def next_positions(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        start = self.get_seq_length()
        return torch.arange(start, start + n, device=device)[None, :]

    def forward_kwargs(self) -> dict[str, Any]:
        return {CACHE_KWARG: self}

    def trim(self) -> None:
        """Nothing to evict."""

    def kv_bytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)  # type: ignore[attr-defined]


class Int8KVCache(QuantizedKV):
    name = "int8_kv"
    default_bits = 8


class Int4KVCache(QuantizedKV):
    name = "int4_kv"
    default_bits = 4


def quantized_kv_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, Hq, q, D]
    key: torch.Tensor,  # [B, Hkv, kv, D] (only the new token when fused)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA, except one-token decode over a quantized cache: the kernel reads the store as is."""
    cache: QuantizedKV | None = kwargs.pop(CACHE_KWARG, None)
    layer_idx = getattr(module, "layer_idx", None)
    layer = cache.layers[layer_idx] if cache is not None and layer_idx is not None else None
    if not isinstance(layer, QuantizedKVLayer) or layer.store is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[2] == 1 and layer.fused:
        out = decode_attention(query[:, :, 0], layer.store, scale=scaling)  # [B, Hq, D]
        return out[:, None].contiguous(), None  # [B, 1, Hq, D]
    layer.fused = True  # from the next one-token update on, update() may skip the dequantized copy
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


AttentionInterface.register(QUANTIZED_ATTENTION, quantized_kv_attention)
AttentionMaskInterface.register(QUANTIZED_ATTENTION, sdpa_mask)

KV_CACHES: dict[str, type[QuantizedKV]] = {c.name: c for c in (Int8KVCache, Int4KVCache)}
