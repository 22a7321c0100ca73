"""The truth for the quantized linear: dequantize to fp32, then an fp32 matmul.

Everything is computed in ``promote(dtype, float32)``: fp16/bf16 inputs are computed in fp32, and
fp64 inputs in fp64, which is how the tests get a truth to measure fp32 paths against.

Also the CPU path (and the GPU path where Triton is missing). It re-dequantizes on every call,
which keeps it obviously right rather than fast; `hearth bench` shows what that costs next to
torch's own int8/int4 matmuls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .weights import Int4Weight, Int8Weight, unpack_int4


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def dequantize_int8(w: Int8Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[N, K] weight in ``dtype`` (computed in at least fp32, rounded once at the end)."""
    ct = _compute_dtype(dtype)
    return (w.qweight.to(ct) * w.scale.to(ct)[:, None]).to(dtype)


def dequantize_int4(w: Int4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[N, K] weight in ``dtype`` (computed in at least fp32, rounded once at the end)."""
    ct = _compute_dtype(dtype)
    n, g, gs = w.out_features, w.n_groups, w.group_size
    codes = unpack_int4(w.packed).to(ct).view(n, g, gs)  # [N, G, gs]
    zero = 8.0 if w.zero is None else w.zero.to(ct)[..., None]  # [N, G, 1]
    deq = (codes - zero) * w.scale.to(ct)[..., None]  # [N, G, gs]
    return deq.view(n, g * gs)[:, : w.in_features].to(dtype)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    ct = weight.dtype
    b = None if bias is None else bias.to(ct)
    return F.linear(x.to(ct), weight, b).to(x.dtype)


def linear_int8(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(w).T + bias`` in fp32; x is [..., K], the result [..., N] in x's dtype."""
    return _linear(x, dequantize_int8(w, _compute_dtype(x.dtype)), bias)


def linear_int4(x: torch.Tensor, w: Int4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(w).T + bias`` in fp32; x is [..., K], the result [..., N] in x's dtype."""
    return _linear(x, dequantize_int4(w, _compute_dtype(x.dtype)), bias)
