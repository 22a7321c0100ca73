"""Triton kernels for KV eviction: in-place per-head compaction and the fused KeyDiff score.

Compaction is in place, so its ordering is the whole trick. Kept positions are sorted and distinct,
hence ``keep[i] >= i``: output slot ``i`` is only ever filled from slot ``i`` or a later one. One
program walks one head's slots front to back (programs split the head dimension, which touches
disjoint memory); each block is loaded whole, then a barrier, then stored, so no thread overwrites a
slot that another thread of the same block has yet to read, and later blocks only read slots past
every slot written so far.

KeyDiff is two passes over one head's keys in one program: the anchor (mean of unit keys, fp32),
then each key's cosine distance to it. One launch replaces the ~8 torch ops of the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .._triton_util import next_pow2, on_device
from .reference import COS_EPS, check_compact_args, check_keydiff_inputs

_COMPACT_BLOCK_T = 16  # 32 x 64 fp16 slots spilled 16 bytes on sm_86 (64-bit addresses per element)
_KEYDIFF_BLOCK_T = 32


@triton.jit
def _compact_kernel(
    x_ptr, keep_ptr, n_keep, H, D,
    s_xb, s_xh, s_xt, s_xd, s_kb, s_kh,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    d_mask = rd < D
    base = x_ptr + b * s_xb + h * s_xh
    for i0 in range(0, n_keep, BLOCK_T):
        i = i0 + tl.arange(0, BLOCK_T)  # [BT] destination slots
        i_mask = i < n_keep
        src = tl.load(keep_ptr + b * s_kb + h * s_kh + i, mask=i_mask, other=0).to(tl.int64)  # [BT]
        m = i_mask[:, None] & d_mask[None, :]
        vals = tl.load(base + src[:, None] * s_xt + rd[None, :] * s_xd, mask=m)  # [BT, BD]
        tl.debug_barrier()  # every read of this block happens before any write of it
        tl.store(base + i[:, None].to(tl.int64) * s_xt + rd[None, :] * s_xd, vals, mask=m)


@triton.jit
def _keydiff_kernel(
    k_ptr, mask_ptr, out_ptr, T, D, H, eps,
    s_kb, s_kh, s_kt, s_kd, s_mb, s_ob, s_oh,
    HAS_MASK: tl.constexpr, NORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, D_PAD: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // H).to(tl.int64)
    h = (pid % H).to(tl.int64)
    rd = tl.arange(0, D_PAD)
    rt = tl.arange(0, BLOCK_T)
    d_mask = rd < D
    base = k_ptr + b * s_kb + h * s_kh
    total = tl.zeros((D_PAD,), dtype=tl.float32)
    count = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):  # pass 1: the anchor
        t = t0 + rt
        valid = t < T
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + b * s_mb + t, mask=valid, other=0) != 0)
        k = tl.load(base + t[:, None] * s_kt + rd[None, :] * s_kd,
                    mask=valid[:, None] & d_mask[None, :], other=0.0).to(tl.float32)  # [BT, D]
        if NORMALIZE:
            norm = tl.sqrt_rn(tl.sum(k * k, axis=1))  # [BT]
            k = k / tl.maximum(norm, eps)[:, None]
        total += tl.sum(k, axis=0)
        count += valid.to(tl.float32)
    anchor = total / tl.maximum(tl.sum(count, axis=0), 1.0)  # [D]
    anchor_norm = tl.sqrt_rn(tl.sum(anchor * anchor, axis=0))
    for t0 in range(0, T, BLOCK_T):  # pass 2: cosine distance to the anchor
        t = t0 + rt
        t_mask = t < T
        valid = t_mask
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + b * s_mb + t, mask=t_mask, other=0) != 0)
        k = tl.load(base + t[:, None] * s_kt + rd[None, :] * s_kd,
                    mask=t_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        norm = tl.sqrt_rn(tl.sum(k * k, axis=1))
        cos = tl.sum(k * anchor[None, :], axis=1) / tl.maximum(norm * anchor_norm, eps)
        score = tl.where(valid, 1.0 - cos, float("-inf"))
        tl.store(out_ptr + b * s_ob + h * s_oh + t, score, mask=t_mask)


def compact_(tensors: Sequence[torch.Tensor], keep: torch.Tensor) -> int:
    """Move positions ``keep[b, h, :]`` of each [B, H, T, D] tensor to the front, in place.

    Same contract as the reference: distinct positions per head, any order; returns ``n_keep``.
    """
    check_compact_args(tensors, keep)
    idx = keep.sort(dim=-1).values.contiguous()  # [B, H, n]
    b, h, n = idx.shape
    if n == 0:
        return 0
    with on_device(idx):
        for x in tensors:
            d = x.shape[3]
            block_d = min(next_pow2(d), 128)
            _compact_kernel[(b * h, triton.cdiv(d, block_d))](
                x, idx, n, h, d,
                x.stride(0), x.stride(1), x.stride(2), x.stride(3), idx.stride(0), idx.stride(1),
                BLOCK_T=_COMPACT_BLOCK_T, BLOCK_D=block_d,
            )
    return n


def keydiff_scores(
    keys: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    normalized_anchor: bool = True,
) -> torch.Tensor:
    """KeyDiff scores for keys [B, H, T, D] -> fp32 [B, H, T]; ``mask`` [B, T] marks real tokens."""
    b, h, t, d = check_keydiff_inputs(keys, mask)
    out = torch.empty((b, h, t), device=keys.device, dtype=torch.float32)
    if t == 0 or b * h == 0:
        return out
    m = keys if mask is None else mask.to(torch.uint8).contiguous()  # [B, T]; unread without mask
    with on_device(keys):
        _keydiff_kernel[(b * h,)](
            keys, m, out, t, d, h, COS_EPS,
            keys.stride(0), keys.stride(1), keys.stride(2), keys.stride(3),
            m.stride(0), out.stride(0), out.stride(1),
            HAS_MASK=mask is not None, NORMALIZE=normalized_anchor,
            BLOCK_T=_KEYDIFF_BLOCK_T, D_PAD=next_pow2(d),
        )
    return out
