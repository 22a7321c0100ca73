"""Weight-only quantized linear: quantizers' error bounds, the Triton kernels against the reference.

Shapes are deliberately not multiples of the kernels' blocks (BLOCK_N 16, int8 BLOCK_K 128, int4
one group per step) and in_features is not a multiple of any int4 group size.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from app.kernels import linear
from app.kernels.quant_linear import (
    Int4Weight,
    Int8Weight,
    dequantize,
    quantize_int4,
    quantize_int8,
    reference,
)
from app.kernels.quant_linear import triton as qtriton
from app.kernels.quant_linear.weights import pack_int4, unpack_int4

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
N, K = 37, 100  # out, in


def _weight(n: int = N, k: int = K) -> torch.Tensor:
    return torch.randn(n, k) / k**0.5  # outputs stay O(1) for O(1) inputs


# --- quantizers ---------------------------------------------------------------------------------


def test_int8_round_trip_within_half_a_step() -> None:
    w = _weight(53, 131)
    w[3] = 0.0  # an all-zero row must come back as zeros
    q = quantize_int8(w)
    err = (dequantize(q) - w).abs()  # [N, K]
    assert torch.all(err <= q.scale[:, None] * (0.5 + 1e-5))
    assert torch.all(dequantize(q)[3] == 0)
    assert int(q.qweight.abs().max()) <= 127


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_round_trip_within_half_a_step(group_size: int, symmetric: bool) -> None:
    k = 200  # not a multiple of any group size: the last group is padded
    w = _weight(29, k)
    w[5, :] = torch.rand(k) + 0.5  # all-positive row: the asymmetric range must still hold 0
    w[6, :] = 0.0
    q = quantize_int4(w, group_size, symmetric)
    assert q.in_features == k and q.symmetric == symmetric
    step = q.scale.repeat_interleave(group_size, dim=1)[:, :k]  # [N, K] scale of each element
    err = (dequantize(q) - w).abs()
    assert torch.all(err <= step * (0.5 + 1e-4)), float((err / step).max())
    assert torch.all(dequantize(q)[6] == 0)


def test_int4_pack_unpack_round_trip() -> None:
    codes = torch.randint(0, 16, (7, 64), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (7, 32)
    assert torch.equal(unpack_int4(packed), codes)
    assert torch.equal(packed[:, 0], codes[:, 0] | (codes[:, 1] << 4))  # even column: low nibble


def test_quantized_weights_validate_themselves() -> None:
    q = quantize_int8(_weight())
    with pytest.raises(ValueError, match="int8"):
        Int8Weight(q.qweight.to(torch.int16), q.scale)
    with pytest.raises(ValueError, match="scale must have shape"):
        Int8Weight(q.qweight, q.scale[:-1].contiguous())
    q4 = quantize_int4(_weight(), 32, symmetric=False)
    with pytest.raises(ValueError, match="group_size"):
        quantize_int4(_weight(), 48)
    with pytest.raises(ValueError, match="in_features"):
        Int4Weight(q4.packed, q4.scale, q4.zero, 32, in_features=10)
    with pytest.raises(ValueError, match="zero must have shape"):
        Int4Weight(q4.packed, q4.scale, q4.zero[:, :1].contiguous(), 32, K)
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8(torch.randn(3, 4, 5))


# --- kernels against the reference ----------------------------------------------------------


def _check_linear(check_error, x: torch.Tensor, q, bias: torch.Tensor | None) -> None:
    kernel = qtriton.linear_int8 if isinstance(q, Int8Weight) else qtriton.linear_int4
    ref = reference.linear_int8 if isinstance(q, Int8Weight) else reference.linear_int4
    out = kernel(x, q, bias)
    assert out.dtype == x.dtype and out.shape == (*x.shape[:-1], q.out_features)
    truth = ref(x.double(), q, None if bias is None else bias.double())
    torch_own = F.linear(x, dequantize(q, x.dtype), bias)  # torch, in x's dtype
    check_error(out, torch_own, truth)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 5, 16, 20])  # GEMV, GEMM (partial and full block), dequant path
@pytest.mark.parametrize("shape", [(37, 100), (70, 300)])
def test_int8_linear_matches_reference(check_error, dtype, m: int, shape) -> None:
    n, k = shape
    q = quantize_int8(_weight(n, k))
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype) if m != 16 else None
    _check_linear(check_error, x, q, bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_linear_matches_reference(
    check_error, dtype, m: int, symmetric: bool, group_size: int
) -> None:
    q = quantize_int4(_weight(), group_size, symmetric)
    x = torch.randn(m, K).to(dtype)
    bias = torch.randn(N).to(dtype) if symmetric else None
    _check_linear(check_error, x, q, bias)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_linear_takes_strided_and_batched_inputs(check_error, kind: str) -> None:
    q = quantize_int8(_weight()) if kind == "int8" else quantize_int4(_weight(), 64, False)
    x = torch.randn(3, 2 * K)[:, ::2]  # non-contiguous rows: stride 2 along K
    assert not x.is_contiguous()
    _check_linear(check_error, x, q, None)
    x3 = torch.randn(2, 3, K, dtype=torch.float16)  # [B, T, K] -> [B, T, N]
    _check_linear(check_error, x3, q, None)
    _check_linear(check_error, torch.randn(20, K).to(torch.bfloat16), q, None)  # M > 16


def test_int4_linear_at_a_smollm2_width(check_error) -> None:
    # K = 576 is 4.5 groups of 128: the padded last group must not leak into the result.
    q = quantize_int4(_weight(24, 576), 128, symmetric=False)
    _check_linear(check_error, torch.randn(1, 576, dtype=torch.float16), q, None)


def test_public_linear_runs_the_reference_here_and_checks_its_inputs() -> None:
    q = quantize_int8(_weight())
    x = torch.randn(2, K)
    torch.testing.assert_close(linear(x, q), reference.linear_int8(x, q), rtol=0, atol=0)
    with pytest.raises(ValueError, match="input features"):
        qtriton.linear_int8(torch.randn(2, K + 1), q)
    with pytest.raises(TypeError, match="Int8Weight or Int4Weight"):
        linear(x, _weight())  # type: ignore[arg-type]
