"""The truth for quantized-KV decode attention: dequantize everything, then softmax attention.

Computed in ``promote(q.dtype, float32)`` (fp32 for fp16/bf16/fp32 queries, fp64 for fp64 ones,
which the tests use as the truth that fp32 results are measured against).
"""

from __future__ import annotations

import math

import torch

from .cache import QuantizedKVCache, unpack_nibbles


def _codes(cache: QuantizedKVCache, packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    codes = packed[:, :, : cache.n_quantized]
    if cache.bits == 4:
        codes = unpack_nibbles(codes)
    return codes.to(dtype)  # [B, H, n_q, D]


def dequantize_keys(cache: QuantizedKVCache, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The quantized keys as [B, Hkv, n_quantized, D] in ``dtype``."""
    b, h, d, g = cache.batch, cache.n_head_kv, cache.head_dim, cache.group_size
    n_groups = cache.n_quantized // g
    codes = _codes(cache, cache.k_codes, dtype).view(b, h, n_groups, g, d)
    scale = cache.k_scale[:, :, :n_groups, None].to(dtype)  # [B, H, n, 1, D]
    lo = cache.k_min[:, :, :n_groups, None].to(dtype)
    return (codes * scale + lo).view(b, h, n_groups * g, d)


def dequantize_values(cache: QuantizedKVCache, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The quantized values as [B, Hkv, n_quantized, D] in ``dtype``."""
    n = cache.n_quantized
    codes = _codes(cache, cache.v_codes, dtype)
    return codes * cache.v_scale[:, :, :n, None].to(dtype) + cache.v_min[:, :, :n, None].to(dtype)


def keys_values(
    cache: QuantizedKVCache, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """All keys and values (quantized part dequantized, then the tail), each [B, Hkv, T, D]."""
    t = cache.n_tail
    k = torch.cat((dequantize_keys(cache, dtype), cache.k_tail[:, :, :t].to(dtype)), dim=2)
    v = torch.cat((dequantize_values(cache, dtype), cache.v_tail[:, :, :t].to(dtype)), dim=2)
    return k, v


def check_query(q: torch.Tensor, cache: QuantizedKVCache) -> None:
    if q.dim() != 3 or q.shape[0] != cache.batch or q.shape[2] != cache.head_dim:
        raise ValueError(
            f"q must be [B={cache.batch}, H, D={cache.head_dim}] (one token), got {tuple(q.shape)}"
        )
    if q.shape[1] % cache.n_head_kv:
        raise ValueError(
            f"{q.shape[1]} query heads are not a multiple of {cache.n_head_kv} KV heads"
        )
    if cache.seq_len == 0:
        raise ValueError("decode attention over an empty KV cache")


def decode_attention(
    q: torch.Tensor, cache: QuantizedKVCache, *, scale: float | None = None
) -> torch.Tensor:
    """softmax(q K^T * scale) V for one query token, GQA; q [B, H, D] -> [B, H, D] in q's dtype."""
    check_query(q, cache)
    ct = torch.promote_types(q.dtype, torch.float32)
    b, h, d = q.shape
    hkv = cache.n_head_kv
    sm_scale = 1.0 / math.sqrt(d) if scale is None else scale
    k, v = keys_values(cache, ct)  # [B, Hkv, T, D]
    qg = q.to(ct).view(b, hkv, h // hkv, d)  # [B, Hkv, rep, D]; head i uses KV head i // rep
    scores = torch.einsum("bgrd,bgtd->bgrt", qg, k) * sm_scale  # [B, Hkv, rep, T]
    p = torch.softmax(scores, dim=-1)
    out = torch.einsum("bgrt,bgtd->bgrd", p, v)  # [B, Hkv, rep, D]
    return out.reshape(b, h, d).to(q.dtype)
