"""Triton decode attention reading a KIVI-quantized KV cache directly (split-K, flash-decoding).

One program handles one (batch, KV head) pair for one slice of the sequence, with all the query
heads that share that KV head (GQA) as the rows of its ``tl.dot``s, so K and V are read once per
KV head. It dequantizes codes in registers, runs an online softmax, and either writes the
normalised output (one slice) or a partial (max, sum, accumulator) that a small second kernel
merges; the split keeps a GPU busy when batch x KV heads is small (SmolLM2 has 3 KV heads).

Token blocks never straddle the quantized/tail boundary (the quantized length is a multiple of the
group size, which the block size divides), so each block is read from one store only. Channels
are processed as an even and an odd half, which is how 4-bit codes are packed; int8 uses the same
split to share the code. All arithmetic is fp32 (``input_precision="ieee"``): decode attention is
bandwidth-bound, so exact fp32 math should cost little (not yet measured on a GPU) and keeps the
result at the fp32 reference.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._triton_util import next_pow2, on_device, store_dtype
from .cache import QuantizedKVCache
from .reference import check_query

_LOG2E = 1.4426950408889634
_MAX_SPLITS = 64
_MIN_SPLIT_TOKENS = 128


@triton.jit
def _decode_partial_kernel(
    q_ptr, kc_ptr, ks_ptr, km_ptr, vc_ptr, vs_ptr, vm_ptr, kt_ptr, vt_ptr,
    o_ptr, m_ptr, l_ptr, out_ptr,
    n_q, n_total, split_len, n_splits, qk_scale,
    H_KV, HALF,
    s_qb, s_qh, s_cb, s_ch, s_ct, s_kb, s_kh, s_kg, s_vb, s_vh, s_tb, s_th, s_tt, s_outb, s_outh,
    REP: tl.constexpr, R_PAD: tl.constexpr, HALF_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
    GROUP: tl.constexpr, BITS: tl.constexpr, SINGLE: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = pid_bh // H_KV
    hk = pid_bh % H_KV
    rr = tl.arange(0, R_PAD)  # query heads of this KV head (padded to >= 16 rows for tl.dot)
    rj = tl.arange(0, HALF_PAD)  # channel pairs: channels 2j and 2j+1
    rt = tl.arange(0, BLOCK_T)
    r_mask = rr < REP
    j_mask = rj < HALF
    heads = hk * REP + rr  # [R]
    qm = r_mask[:, None] & j_mask[None, :]
    q_base = q_ptr + b * s_qb + heads[:, None] * s_qh
    # Softmax scale and log2(e) folded into q once, so scores feed exp2 directly.
    q_e = tl.load(q_base + 2 * rj[None, :], mask=qm, other=0.0).to(tl.float32) * qk_scale  # [R, J]
    q_o = tl.load(q_base + 2 * rj[None, :] + 1, mask=qm, other=0.0).to(tl.float32) * qk_scale

    m_i = tl.full((R_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((R_PAD,), dtype=tl.float32)
    acc_e = tl.zeros((R_PAD, HALF_PAD), dtype=tl.float32)
    acc_o = tl.zeros((R_PAD, HALF_PAD), dtype=tl.float32)

    start = pid_s * split_len
    end = tl.minimum(start + split_len, n_total)
    for t0 in range(start, end, BLOCK_T):
        t = t0 + rt  # [T]
        t_mask = t < end
        tj_mask = t_mask[:, None] & j_mask[None, :]
        if t0 < n_q:
            c_off = b * s_cb + hk * s_ch + t[:, None] * s_ct  # [T, 1]
            if BITS == 8:
                even = c_off + 2 * rj[None, :]  # [T, J]
                kce = tl.load(kc_ptr + even, mask=tj_mask, other=0).to(tl.float32)
                kco = tl.load(kc_ptr + even + 1, mask=tj_mask, other=0).to(tl.float32)
                vce = tl.load(vc_ptr + even, mask=tj_mask, other=0).to(tl.float32)
                vco = tl.load(vc_ptr + even + 1, mask=tj_mask, other=0).to(tl.float32)
            else:
                kb = tl.load(kc_ptr + c_off + rj[None, :], mask=tj_mask, other=0)  # uint8 [T, J]
                vb = tl.load(vc_ptr + c_off + rj[None, :], mask=tj_mask, other=0)
                kce = (kb & 0xF).to(tl.float32)
                kco = (kb >> 4).to(tl.float32)
                vce = (vb & 0xF).to(tl.float32)
                vco = (vb >> 4).to(tl.float32)
            # Keys: one scale/min per channel for the whole block (it lies inside one group).
            s_off = b * s_kb + hk * s_kh + (t0 // GROUP) * s_kg
            kse = tl.load(ks_ptr + s_off + 2 * rj, mask=j_mask, other=0.0)  # [J]
            kso = tl.load(ks_ptr + s_off + 2 * rj + 1, mask=j_mask, other=0.0)
            kme = tl.load(km_ptr + s_off + 2 * rj, mask=j_mask, other=0.0)
            kmo = tl.load(km_ptr + s_off + 2 * rj + 1, mask=j_mask, other=0.0)
            k_e = kce * kse[None, :] + kme[None, :]  # [T, J]
            k_o = kco * kso[None, :] + kmo[None, :]
            # Values: one scale/min per token.
            v_off = b * s_vb + hk * s_vh + t
            vsc = tl.load(vs_ptr + v_off, mask=t_mask, other=0.0)  # [T]
            vmn = tl.load(vm_ptr + v_off, mask=t_mask, other=0.0)
            v_e = vce * vsc[:, None] + vmn[:, None]
            v_o = vco * vsc[:, None] + vmn[:, None]
        else:
            even = b * s_tb + hk * s_th + (t - n_q)[:, None] * s_tt + 2 * rj[None, :]  # [T, J]
            k_e = tl.load(kt_ptr + even, mask=tj_mask, other=0.0).to(tl.float32)
            k_o = tl.load(kt_ptr + even + 1, mask=tj_mask, other=0.0).to(tl.float32)
            v_e = tl.load(vt_ptr + even, mask=tj_mask, other=0.0).to(tl.float32)
            v_o = tl.load(vt_ptr + even + 1, mask=tj_mask, other=0.0).to(tl.float32)
        s = tl.dot(q_e, tl.trans(k_e), input_precision="ieee")  # [R, T]
        s += tl.dot(q_o, tl.trans(k_o), input_precision="ieee")
        s = tl.where(t_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every block has a real token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])  # [R, T]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc_e = acc_e * alpha[:, None] + tl.dot(p, v_e, input_precision="ieee")
        acc_o = acc_o * alpha[:, None] + tl.dot(p, v_o, input_precision="ieee")
        m_i = m_new

    if SINGLE:
        o_base = out_ptr + b * s_outb + heads[:, None] * s_outh
        ty = out_ptr.dtype.element_ty
        tl.store(o_base + 2 * rj[None, :], (acc_e / l_i[:, None]).to(ty), mask=qm)
        tl.store(o_base + 2 * rj[None, :] + 1, (acc_o / l_i[:, None]).to(ty), mask=qm)
    else:
        row = (b * H_KV * REP + heads) * n_splits + pid_s  # [R] index into [B*H, S]
        o_base = o_ptr + row[:, None] * (2 * HALF)
        tl.store(o_base + 2 * rj[None, :], acc_e, mask=qm)
        tl.store(o_base + 2 * rj[None, :] + 1, acc_o, mask=qm)
        tl.store(m_ptr + row, m_i, mask=r_mask)
        tl.store(l_ptr + row, l_i, mask=r_mask)


@triton.jit
def _decode_combine_kernel(
    o_ptr, m_ptr, l_ptr, out_ptr, n_splits, H, D, s_outb, s_outh,
    S_PAD: tl.constexpr, D_PAD: tl.constexpr,
):
    pid = tl.program_id(0)  # b * H + h
    b = pid // H
    h = pid % H
    rs = tl.arange(0, S_PAD)
    rd = tl.arange(0, D_PAD)
    s_mask = rs < n_splits
    d_mask = rd < D
    m = tl.load(m_ptr + pid * n_splits + rs, mask=s_mask, other=float("-inf"))  # [S]
    l_part = tl.load(l_ptr + pid * n_splits + rs, mask=s_mask, other=0.0)
    w = tl.exp2(m - tl.max(m, axis=0))  # 0 for padding slices
    o = tl.load(o_ptr + (pid * n_splits + rs[:, None]) * D + rd[None, :],
                mask=s_mask[:, None] & d_mask[None, :], other=0.0)  # [S, D]
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(l_part * w, axis=0)
    tl.store(out_ptr + b * s_outb + h * s_outh + rd, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def _split_tokens(n_total: int, n_programs: int, device: torch.device, block_t: int) -> int:
    """Tokens per slice: enough slices for ~2 programs per SM, none shorter than 128 tokens."""
    n_sm = 1
    if device.type == "cuda":
        n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, min(_MAX_SPLITS, -(-2 * n_sm // n_programs)))
    split = max(_MIN_SPLIT_TOKENS, -(-n_total // want))
    split = max(split, -(-n_total // _MAX_SPLITS))
    return -(-split // block_t) * block_t


def decode_attention(
    q: torch.Tensor,
    cache: QuantizedKVCache,
    *,
    scale: float | None = None,
    split_tokens: int | None = None,
) -> torch.Tensor:
    """softmax(q K^T * scale) V for one query token; q [B, H, D] -> [B, H, D] in q's dtype.

    ``split_tokens`` (rounded up to the token block) overrides the slice length; tests use it to
    exercise the split-and-merge path on small caches.
    """
    check_query(q, cache)
    b, h, d = q.shape
    hkv = cache.n_head_kv
    rep = h // hkv
    q = q.contiguous()
    out = torch.empty(q.shape, device=q.device, dtype=store_dtype(q.dtype))  # [B, H, D]
    n_total = cache.seq_len
    block_t = min(cache.group_size, 64)
    if split_tokens is None:
        split = _split_tokens(n_total, b * hkv, q.device, block_t)
    else:
        split = -(-max(split_tokens, 1) // block_t) * block_t
    n_splits = triton.cdiv(n_total, split)
    if n_splits > _MAX_SPLITS:
        split = -(-triton.cdiv(n_total, _MAX_SPLITS) // block_t) * block_t
        n_splits = triton.cdiv(n_total, split)
    single = n_splits == 1
    qk_scale = (1.0 / math.sqrt(d) if scale is None else float(scale)) * _LOG2E
    if single:
        o_part = m_part = l_part = out  # unused
    else:
        o_part = torch.empty((b * h, n_splits, d), device=q.device, dtype=torch.float32)
        m_part = torch.empty((b * h, n_splits), device=q.device, dtype=torch.float32)
        l_part = torch.empty((b * h, n_splits), device=q.device, dtype=torch.float32)
    kc, vc, kt = cache.k_codes, cache.v_codes, cache.k_tail
    with on_device(q):
        _decode_partial_kernel[(b * hkv, n_splits)](
            q, kc, cache.k_scale, cache.k_min, vc, cache.v_scale, cache.v_min, kt, cache.v_tail,
            o_part, m_part, l_part, out,
            cache.n_quantized, n_total, split, n_splits, qk_scale,
            hkv, d // 2,
            q.stride(0), q.stride(1), kc.stride(0), kc.stride(1), kc.stride(2),
            cache.k_scale.stride(0), cache.k_scale.stride(1), cache.k_scale.stride(2),
            cache.v_scale.stride(0), cache.v_scale.stride(1),
            kt.stride(0), kt.stride(1), kt.stride(2), out.stride(0), out.stride(1),
            REP=rep, R_PAD=max(16, next_pow2(rep)), HALF_PAD=max(16, next_pow2(d // 2)),
            BLOCK_T=block_t, GROUP=cache.group_size, BITS=cache.bits, SINGLE=single,
        )
        if not single:
            _decode_combine_kernel[(b * h,)](
                o_part, m_part, l_part, out, n_splits, h, d, out.stride(0), out.stride(1),
                S_PAD=next_pow2(n_splits), D_PAD=next_pow2(d),
            )
    return out.to(q.dtype)
