"""Triton weight-only quantized linear: dequantization fused into a GEMV (M == 1) and a
small-batch GEMM (M <= 16). Larger M (prefill) dequantizes once and uses torch's matmul, where the
weight read is amortised over many rows and cuBLAS/rocBLAS win.

Both kernels keep the weight in its integer form through the inner product and apply the scales
after it (per row for int8, per group for int4), so fp16/bf16 ``tl.dot`` operands are small exact
integers: the only rounding is in ``x`` itself and in the fp32 accumulator.

Block sizes are fixed, not autotuned: they were chosen for SmolLM2-like shapes (K = 576,
N = 576..49152) and checked for register spills with ptxas (tests/kernels/test_kernels_compile.py),
but not yet timed on a GPU (`hearth bench` does that where one exists).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._triton_util import dot_dtype, mma, on_device, store_dtype
from .reference import dequantize_int4, dequantize_int8
from .weights import Int4Weight, Int8Weight

MAX_FUSED_M = 16  # rows handled by the fused kernels; more rows take the dequantize + matmul path
_BLOCK_M = 16  # rows per program of the GEMM (tl.dot needs >= 16)
_INT8_BLOCK_K = 128  # GEMV
# GEMM: a [16, 128] tile of x next to the weight tile spilled registers (ptxas -v: 255 registers and
# ~500 bytes spilled for fp32 on sm_86/sm_90, and for fp16/bf16 on sm_70/sm_75), so the GEMM steps
# through K in 64s, and fp32 (exact FMA dots, no tensor cores) in 32s.
_INT8_GEMM_BLOCK_K = 64
_INT8_GEMM_BLOCK_K_FP32 = 32


def _int8_block_k(use_dot: bool, dtype: torch.dtype) -> int:
    if not use_dot:
        return _INT8_BLOCK_K
    return _INT8_GEMM_BLOCK_K_FP32 if dtype == torch.float32 else _INT8_GEMM_BLOCK_K


def _block_n(n: int) -> int:
    # Small N: short tiles so that a 576-wide layer still spreads over a few dozen programs.
    return 16 if n <= 4096 else 64


@triton.jit
def _int8_linear_kernel(
    x_ptr, q_ptr, s_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_qn, stride_ym,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    rk = tl.arange(0, BLOCK_K)  # [BK]
    n_mask = rn < N
    if USE_DOT:
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
        m_mask = rm < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            k_mask = kk < K
            w = tl.load(q_ptr + rn[:, None] * stride_qn + kk[None, :],
                        mask=n_mask[:, None] & k_mask[None, :], other=0)  # int8 [BN, BK]
            x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
                        mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # [BM, BK]
            acc += mma(x, tl.trans(w), DOT_DTYPE)
        scale = tl.load(s_ptr + rn, mask=n_mask, other=0.0)  # [BN]
        y = acc * scale[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & n_mask[None, :])
    else:
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            k_mask = kk < K
            w = tl.load(q_ptr + rn[:, None] * stride_qn + kk[None, :],
                        mask=n_mask[:, None] & k_mask[None, :], other=0)  # int8 [BN, BK]
            x = tl.load(x_ptr + pid_m * stride_xm + kk * stride_xk, mask=k_mask, other=0.0)  # [BK]
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
        y = acc * tl.load(s_ptr + rn, mask=n_mask, other=0.0)
        if HAS_BIAS:
            y += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + pid_m * stride_ym + rn, y.to(y_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _int4_linear_kernel(
    x_ptr, p_ptr, s_ptr, z_ptr, b_ptr, y_ptr,
    M, N, K, n_groups,
    stride_xm, stride_xk, stride_pn, stride_sn, stride_ym,
    GROUP: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_BIAS: tl.constexpr,
    USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One loop step = one quantization group. A byte holds columns 2j (low nibble) and 2j+1 (high
    # nibble), so x is read as its even and odd columns and no interleave is needed.
    HALF: tl.constexpr = GROUP // 2
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    rj = tl.arange(0, HALF)  # [HALF]
    n_mask = rn < N
    if USE_DOT:
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = rm < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for g in range(0, n_groups):
        packed = tl.load(p_ptr + rn[:, None] * stride_pn + (g * HALF + rj)[None, :],
                         mask=n_mask[:, None], other=0)  # uint8 [BN, HALF]
        lo = (packed & 0xF).to(tl.float32)
        hi = (packed >> 4).to(tl.float32)
        if SYMMETRIC:
            lo = lo - 8.0
            hi = hi - 8.0
        else:
            z = tl.load(z_ptr + rn * stride_sn + g, mask=n_mask, other=0).to(tl.float32)  # [BN]
            lo = lo - z[:, None]
            hi = hi - z[:, None]
        scale = tl.load(s_ptr + rn * stride_sn + g, mask=n_mask, other=0.0)  # [BN]
        k_even = g * GROUP + 2 * rj  # [HALF]
        k_odd = k_even + 1
        if USE_DOT:
            xe = tl.load(x_ptr + rm[:, None] * stride_xm + k_even[None, :] * stride_xk,
                         mask=m_mask[:, None] & (k_even < K)[None, :], other=0.0)  # [BM, HALF]
            xo = tl.load(x_ptr + rm[:, None] * stride_xm + k_odd[None, :] * stride_xk,
                         mask=m_mask[:, None] & (k_odd < K)[None, :], other=0.0)
            part = mma(xe, tl.trans(lo), DOT_DTYPE)
            part += mma(xo, tl.trans(hi), DOT_DTYPE)
            acc += part * scale[None, :]
        else:
            xe = tl.load(x_ptr + pid_m * stride_xm + k_even * stride_xk, mask=k_even < K,
                         other=0.0).to(tl.float32)  # [HALF]
            xo = tl.load(x_ptr + pid_m * stride_xm + k_odd * stride_xk, mask=k_odd < K,
                         other=0.0).to(tl.float32)
            part = tl.sum(lo * xe[None, :], axis=1) + tl.sum(hi * xo[None, :], axis=1)
            acc += part * scale
    if USE_DOT:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & n_mask[None, :])
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + pid_m * stride_ym + rn, acc.to(y_ptr.dtype.element_ty), mask=n_mask)


def _check_inputs(x: torch.Tensor, k: int, bias: torch.Tensor | None, n: int) -> None:
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} input features, the weight expects {k}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def linear_int8(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(w).T + bias``; x is [..., K], the result [..., N] in x's dtype."""
    n, k = w.out_features, w.in_features
    _check_inputs(x, k, bias, n)
    x2 = x.reshape(-1, k)  # [M, K], a view when it can be
    m = x2.shape[0]
    if m > MAX_FUSED_M:
        return F.linear(x, dequantize_int8(w, x.dtype), bias)
    y = torch.empty((m, n), device=x.device, dtype=store_dtype(x.dtype))  # [M, N]
    if m == 0:
        return y.to(x.dtype).reshape(*x.shape[:-1], n)
    use_dot = m > 1
    block_m = _BLOCK_M if use_dot else 1
    block_n = _block_n(n)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    with on_device(x):
        _int8_linear_kernel[grid](
            x2, w.qweight, w.scale, bias if bias is not None else w.scale, y,
            m, n, k,
            x2.stride(0), x2.stride(1), w.qweight.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, USE_DOT=use_dot, DOT_DTYPE=dot_dtype(x.dtype),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=_int8_block_k(use_dot, x.dtype),
        )
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def linear_int4(x: torch.Tensor, w: Int4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(w).T + bias``; x is [..., K], the result [..., N] in x's dtype."""
    n, k = w.out_features, w.in_features
    _check_inputs(x, k, bias, n)
    x2 = x.reshape(-1, k)  # [M, K]
    m = x2.shape[0]
    if m > MAX_FUSED_M:
        return F.linear(x, dequantize_int4(w, x.dtype), bias)
    y = torch.empty((m, n), device=x.device, dtype=store_dtype(x.dtype))  # [M, N]
    if m == 0:
        return y.to(x.dtype).reshape(*x.shape[:-1], n)
    use_dot = m > 1
    block_m = _BLOCK_M if use_dot else 1
    block_n = _block_n(n)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    zero = w.zero if w.zero is not None else w.scale  # unread when symmetric
    with on_device(x):
        _int4_linear_kernel[grid](
            x2, w.packed, w.scale, zero, bias if bias is not None else w.scale, y,
            m, n, k, w.n_groups,
            x2.stride(0), x2.stride(1), w.packed.stride(0), w.scale.stride(0), y.stride(0),
            GROUP=w.group_size, SYMMETRIC=w.symmetric, HAS_BIAS=bias is not None,
            USE_DOT=use_dot, DOT_DTYPE=dot_dtype(x.dtype),
            BLOCK_M=block_m, BLOCK_N=block_n,
        )
    return y.to(x.dtype).reshape(*x.shape[:-1], n)
