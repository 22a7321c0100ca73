"""KIVI quantized KV cache: append semantics, round-trip bounds, decode attention vs the reference.

Token counts are not multiples of the kernel's token block (16-64) nor of the group size; GQA ratios
include 3 (not a power of two, padded to 16 rows in the kernel) and head_dim 48 (padded channels).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from app.kernels.kv_cache import QuantizedKVCache, decode_attention, keys_values
from app.kernels.kv_cache import reference as kv_reference
from app.kernels.kv_cache import triton as kv_triton
from app.kernels.kv_cache.reference import dequantize_keys, dequantize_values

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _filled(
    *,
    batch: int,
    n_head_kv: int,
    head_dim: int,
    tokens: int,
    dtype: torch.dtype,
    bits: int,
    group_size: int,
    residual: int,
) -> tuple[QuantizedKVCache, torch.Tensor, torch.Tensor]:
    """A cache fed like a model would: a prefill of half the tokens, then one token at a time."""
    cache = QuantizedKVCache.empty(
        batch=batch,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        dtype=dtype,
        bits=bits,
        group_size=group_size,
        residual=residual,
    )
    k = torch.randn(batch, n_head_kv, tokens, head_dim).to(dtype)
    v = torch.randn(batch, n_head_kv, tokens, head_dim).to(dtype)
    k[:, :, :, 1] += 4.0  # an outlier channel, as real keys have
    half = tokens // 2
    cache.append(k[:, :, :half], v[:, :, :half])
    for t in range(half, tokens):
        cache.append(k[:, :, t : t + 1], v[:, :, t : t + 1])
    return cache, k, v


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("residual", [0, 8, 40])
def test_append_keeps_the_newest_tokens_in_full_precision(bits: int, residual: int) -> None:
    g = 16
    cache = QuantizedKVCache.empty(
        batch=1,
        n_head_kv=2,
        head_dim=32,
        dtype=torch.float16,
        bits=bits,
        group_size=g,
        residual=residual,
    )
    k = torch.randn(1, 2, 100, 32, dtype=torch.float16)
    seen = 0
    for step in (3, 1, 30, 1, 1, 50, 14):
        cache.append(k[:, :, seen : seen + step], k[:, :, seen : seen + step])
        seen += step
        assert cache.seq_len == seen
        assert cache.n_quantized % g == 0
        assert min(seen, residual) <= cache.n_tail < residual + g
        # the tail is exactly the newest tokens, untouched
        assert torch.equal(cache.k_tail[:, :, : cache.n_tail], k[:, :, cache.n_quantized : seen])
    assert cache.capacity >= cache.n_quantized


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_keys_and_values_within_half_a_step(bits: int) -> None:
    cache, k, v = _filled(
        batch=2,
        n_head_kv=2,
        head_dim=24,
        tokens=90,
        dtype=torch.float32,
        bits=bits,
        group_size=32,
        residual=16,
    )
    n, g = cache.n_quantized, cache.group_size
    assert n == 64
    k_err = (dequantize_keys(cache) - k[:, :, :n]).abs()  # [B, H, n, D]
    k_step = cache.k_scale[:, :, : n // g].repeat_interleave(g, dim=2)  # per channel, per group
    assert torch.all(k_err <= k_step * (0.5 + 1e-4))
    v_err = (dequantize_values(cache) - v[:, :, :n]).abs()
    assert torch.all(v_err <= cache.v_scale[:, :, :n, None] * (0.5 + 1e-4))
    keys, values = keys_values(cache)
    assert keys.shape == values.shape == (2, 2, 90, 24)
    assert torch.equal(keys[:, :, n:], k[:, :, n:])


def test_cache_validates_itself() -> None:
    with pytest.raises(ValueError, match="bits"):
        QuantizedKVCache.empty(batch=1, n_head_kv=1, head_dim=8, dtype=torch.float16, bits=2)
    with pytest.raises(ValueError, match="group_size"):
        QuantizedKVCache.empty(batch=1, n_head_kv=1, head_dim=8, dtype=torch.float16, group_size=24)
    with pytest.raises(ValueError, match="even"):
        QuantizedKVCache.empty(batch=1, n_head_kv=1, head_dim=7, dtype=torch.float16)
    cache = QuantizedKVCache.empty(batch=1, n_head_kv=2, head_dim=8, dtype=torch.float16)
    with pytest.raises(ValueError, match="must be"):
        cache.append(torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8))
    with pytest.raises(ValueError, match="empty"):
        decode_attention(torch.randn(1, 2, 8, dtype=torch.float16), cache)
    cache.append(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))
    with pytest.raises(ValueError, match="multiple"):
        decode_attention(torch.randn(1, 3, 8, dtype=torch.float16), cache)


def _torch_own(q: torch.Tensor, cache: QuantizedKVCache, scale: float | None) -> torch.Tensor:
    """Torch's ordinary attention in q's dtype on the dequantized cache."""
    k, v = keys_values(cache, q.dtype)  # [B, Hkv, T, D]
    out = F.scaled_dot_product_attention(q[:, :, None], k, v, scale=scale, enable_gqa=True)
    return out[:, :, 0]


CONFIGS = [
    # batch, n_head_kv, rep, head_dim, group, residual, tokens
    pytest.param(1, 2, 3, 48, 16, 8, 77, id="gqa3-d48-g16"),
    pytest.param(2, 1, 2, 64, 32, 32, 150, id="b2-gqa2-d64-g32"),
]


@pytest.mark.parametrize("split", [None, 40], ids=["auto-split", "split40"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(
    ("batch", "n_head_kv", "rep", "head_dim", "group", "residual", "tokens"), CONFIGS
)
def test_decode_attention_matches_reference(
    check_error, batch, n_head_kv, rep, head_dim, group, residual, tokens, bits, dtype, split
) -> None:
    cache, _, _ = _filled(
        batch=batch,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        tokens=tokens,
        dtype=dtype,
        bits=bits,
        group_size=group,
        residual=residual,
    )
    assert cache.n_quantized > 0 and cache.n_tail > 0
    q = torch.randn(batch, n_head_kv * rep, head_dim).to(dtype)
    out = kv_triton.decode_attention(q, cache, split_tokens=split)
    assert out.dtype == dtype
    truth = kv_reference.decode_attention(q.double(), cache)
    check_error(out, _torch_own(q, cache, None), truth)


@pytest.mark.parametrize(
    ("tokens", "residual", "scale"),
    [(5, 32, None), (48, 0, 0.3), (16, 0, None)],
    ids=["tail-only", "quantized-only-scale", "one-group"],
)
def test_decode_attention_edges(check_error, tokens: int, residual: int, scale) -> None:
    cache, _, _ = _filled(
        batch=1,
        n_head_kv=1,
        head_dim=32,
        tokens=tokens,
        dtype=torch.float16,
        bits=4,
        group_size=16,
        residual=residual,
    )
    q = torch.randn(1, 1, 32, dtype=torch.float16)
    out = kv_triton.decode_attention(q, cache, scale=scale, split_tokens=16)
    truth = kv_reference.decode_attention(q.double(), cache, scale=scale)
    check_error(out, _torch_own(q, cache, scale), truth)


def test_decode_attention_public_function_uses_the_reference_here() -> None:
    cache, _, _ = _filled(
        batch=1,
        n_head_kv=1,
        head_dim=16,
        tokens=20,
        dtype=torch.float32,
        bits=8,
        group_size=16,
        residual=0,
    )
    q = torch.randn(1, 2, 16)
    assert torch.equal(decode_attention(q, cache), kv_reference.decode_attention(q, cache))
