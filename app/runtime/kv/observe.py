"""Attention weights for the policies that need them (H2O, SnapKV), through transformers' own hook.

transformers 5.23 passes a cache only keys and values (``past_key_values.update(k, v, layer_idx)``):
no query, no attention weights. What it does offer is the attention registry
(``AttentionInterface.register``): a model set to an implementation by name calls that function with
the module (its ``layer_idx``), the rotated queries, the cached keys and values, the mask, and every
extra keyword argument given to the model's forward. So ``"hearth_observed"`` is SDPA, unless the
forward carries ``kv_observer=<cache>`` and that cache wants this layer's weights: then it computes
attention explicitly (softmax(QK^T) V, in query blocks of ``BLOCK``), hands each block's probabilities
to the cache, and returns the same output. The mask for this name is transformers' eager (additive)
mask, which SDPA also accepts.

Cost when observing: an explicit attention instead of SDPA's fused one, about twice the attention
time (small next to the weights in decode; noticeable in a long prefill), plus a transient fp32
[B, heads, min(q, BLOCK), kv] probability block per layer (9 x 256 x 8,192 x 4 B = 75 MB for SmolLM2
at 8k context); the per-slot scores the cache keeps are 4 bytes per token per KV head per layer.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from app.runtime.kv.base import PolicyCache, PolicyLayer
from app.runtime.protocol import ErrorKind, RuntimeFailure

OBSERVED_ATTENTION = "hearth_observed"
OBSERVER_KWARG = "kv_observer"
BLOCK = 256  # queries per explicit-attention block


class AttentionObserver(Protocol):
    def wants_attention(self, layer_idx: int, q_len: int) -> bool: ...

    def observe_attention(self, layer_idx: int, probs: torch.Tensor, q_start: int, q_len: int) -> None:
        """``probs`` [B, heads, block, kv]: softmax rows of queries ``q_start..`` out of ``q_len``."""


def observed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, Hq, q, D]
    key: torch.Tensor,  # [B, Hkv, kv, D]
    value: torch.Tensor,  # [B, Hkv, kv, Dv]
    attention_mask: torch.Tensor | None,  # additive [B, 1, q, kv] or None
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    observer: AttentionObserver | None = kwargs.pop(OBSERVER_KWARG, None)
    layer_idx = getattr(module, "layer_idx", None)
    q_len = query.shape[2]
    if observer is None or layer_idx is None or not observer.wants_attention(layer_idx, q_len):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1) if groups > 1 else key  # [B, Hq, kv, D]
    v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    kv = k.shape[2]
    outs = []
    for s in range(0, q_len, BLOCK):
        qb = query[:, :, s : s + BLOCK]
        logits = torch.matmul(qb, k.transpose(2, 3)).to(torch.float32) * scale  # [B, Hq, b, kv]
        if attention_mask is not None:
            logits = logits + attention_mask[:, :, s : s + BLOCK, :kv].to(torch.float32)
        probs = torch.softmax(logits, dim=-1)
        observer.observe_attention(layer_idx, probs, s, q_len)
        outs.append(torch.matmul(probs.to(v.dtype), v))
    out = torch.cat(outs, dim=2).transpose(1, 2).contiguous()  # [B, q, Hq, Dv]
    return out, None


AttentionInterface.register(OBSERVED_ATTENTION, observed_attention)
AttentionMaskInterface.register(OBSERVED_ATTENTION, eager_mask)


class ObservedLayer(PolicyLayer):
    """A layer whose policy scores slots from attention weights: ``scores`` [B, H_kv, T] fp32."""

    def __init__(self, cache: PolicyCache, layer_idx: int):
        super().__init__(cache, layer_idx)
        self.scores: torch.Tensor | None = None
        self.expects_observation = False  # the last forward should have reported its weights
        self.observed = False

    def on_append(self, n: int) -> None:
        b, h = self.keys.shape[:2]
        fresh = torch.zeros((b, h, n), dtype=torch.float32, device=self.keys.device)
        self.scores = fresh if self.scores is None else torch.cat([self.scores, fresh], dim=-1)
        self.expects_observation = self.cache.wants_attention(self.layer_idx, n)
        self.observed = False

    def on_compact(self, keep: torch.Tensor) -> None:
        self.scores = torch.gather(self.scores, 2, keep)

    def reset(self) -> None:
        super().reset()
        self.scores = None
        self.expects_observation = self.observed = False

    def observe(self, probs: torch.Tensor, q_start: int, q_len: int) -> None:
        raise NotImplementedError

    def per_kv_head(self, weights: torch.Tensor) -> torch.Tensor:
        """[B, Hq, kv] summed over each KV head's query group -> [B, H_kv, kv]."""
        b, hq, kv = weights.shape
        h = self.keys.shape[1]
        return weights.view(b, h, hq // h, kv).sum(dim=2)


class ObservedCache(PolicyCache):
    """A policy that needs attention weights: the model runs ``hearth_observed`` with this observer."""

    attn_implementation = OBSERVED_ATTENTION

    def forward_kwargs(self) -> dict[str, Any]:
        return {OBSERVER_KWARG: self}

    def wants_attention(self, layer_idx: int, q_len: int) -> bool:
        return True

    def observe_attention(self, layer_idx: int, probs: torch.Tensor, q_start: int, q_len: int) -> None:
        layer = self.layers[layer_idx]
        layer.observed = True
        layer.observe(probs, q_start, q_len)

    def check_observed(self, layer: PolicyLayer) -> None:
        if isinstance(layer, ObservedLayer) and layer.expects_observation and not layer.observed:
            raise RuntimeFailure(
                ErrorKind.UNSUPPORTED,
                f"The {self.name!r} KV policy needs attention weights: run the model with "
                f"model.set_attn_implementation({OBSERVED_ATTENTION!r}) and pass **cache.forward_kwargs() "
                "to its forward.",
            )
