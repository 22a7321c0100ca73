"""KIVI-style quantized KV cache (int8/int4) and one-token decode attention that reads it as is."""

from __future__ import annotations

import torch

from .. import dispatch
from .cache import KV_BITS, KV_GROUP_SIZES, QuantizedKVCache
from .reference import keys_values


def decode_attention(
    q: torch.Tensor, cache: QuantizedKVCache, *, scale: float | None = None
) -> torch.Tensor:
    """softmax(q K^T * scale) V for one query token; q [B, H, D] -> [B, H, D], H a multiple of Hkv.

    ``scale`` defaults to 1/sqrt(D). Reads the quantized store and the full-precision tail.
    """
    return dispatch.resolve("kv_decode_attention", q.device)(q, cache, scale=scale)


__all__ = ["KV_BITS", "KV_GROUP_SIZES", "QuantizedKVCache", "decode_attention", "keys_values"]
