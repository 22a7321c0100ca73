"""The CPU half-precision path (torch's own int8/int4 weight-only matmuls) and QuantizedLinear.

Same tolerance as every kernel (conftest): no worse than twice torch's own error in the same dtype.
These tests skip only where this torch build lacks the ops (``cpu.missing_ops``), never on the
dispatcher's probe: an op that runs but disagrees with its reference is what they must catch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from app.kernels import dispatch, linear
from app.kernels.quant_linear import cpu, dequantize, quantize_int4, quantize_int8, reference
from app.kernels.quant_linear.module import SMALL_BATCH_ROWS, QuantizedLinear

HALF = [torch.bfloat16]
MISSING = cpu.missing_ops()
needs_the_ops = pytest.mark.skipif(bool(MISSING), reason=f"this torch build cannot take the CPU path: {'; '.join(MISSING)}")


def _weight(n: int, k: int) -> torch.Tensor:
    return torch.randn(n, k) / k**0.5


def _check(check_error, fast, x: torch.Tensor, q, bias: torch.Tensor | None) -> None:
    ref = reference.linear_int8 if hasattr(q, "qweight") else reference.linear_int4
    out = fast(x, q, bias)
    assert out.dtype == x.dtype and out.shape == (*x.shape[:-1], q.out_features)
    truth = ref(x.double(), q, None if bias is None else bias.double())
    torch_own = F.linear(x, dequantize(q, x.dtype), bias)
    check_error(out, torch_own, truth)


@needs_the_ops
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("m", [1, 3, 20])
@pytest.mark.parametrize("k", [96, 100])  # 100: not a multiple of 16, which torch's op would misread
def test_cpu_int8_matches_reference(check_error, dtype, m: int, k: int) -> None:
    q = quantize_int8(_weight(37, k))
    _check(check_error, cpu.linear_int8, torch.randn(m, k).to(dtype), q, torch.randn(37).to(dtype))


@needs_the_ops
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("group_size", "k", "n"), [(32, 96, 48), (64, 100, 32), (128, 576, 40)])
def test_cpu_int4_matches_reference(check_error, dtype, symmetric: bool, group_size: int, k: int, n: int) -> None:
    # k=100 and k=576 are not multiples of 64 / 128: x is zero-padded to the codes' padded width;
    # n=40 is not a multiple of 16, which torch's packer refuses: the reference answers
    q = quantize_int4(_weight(n, k), group_size, symmetric)
    x = torch.randn(2, 3, k).to(dtype)  # batched [B, T, K]
    _check(check_error, cpu.linear_int4, x, q, None)
    _check(check_error, cpu.linear_int4, x[:, :1], q, torch.randn(n).to(dtype))  # cached layout


@needs_the_ops
def test_the_probe_accepts_the_ops_where_torch_has_them() -> None:
    # The dispatcher's probe is the gate to this path: where the ops exist it must pass them, and
    # where it does not, the op disagrees with its reference here, which is a failure, not a skip.
    assert cpu.probe() == dict.fromkeys(cpu.HALF_DTYPES)


def test_dispatcher_sends_only_half_cpu_inputs_to_torch_ops(
    monkeypatch: pytest.MonkeyPatch, fresh_dispatch: None
) -> None:
    monkeypatch.delenv("HEARTH_KERNELS", raising=False)
    dispatch.reset()
    cpu_dev = torch.device("cpu")
    usable = dispatch.cpu_half_status()[torch.bfloat16] is None
    want = "quant_linear.cpu" if usable else "quant_linear.reference"
    assert dispatch.resolve("int8_linear", cpu_dev, torch.bfloat16).__module__.endswith(want)
    assert dispatch.resolve("int4_linear", cpu_dev, torch.float32).__module__.endswith("reference")
    assert dispatch.resolve("int4_linear", cpu_dev, torch.float16).__module__.endswith("reference")
    assert "cpu_half" in dispatch.describe()["ops"]["int8_linear"]
    monkeypatch.setenv("HEARTH_KERNELS", "torch")
    dispatch.reset()
    assert dispatch.resolve("int8_linear", cpu_dev, torch.bfloat16).__module__.endswith("reference")


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_linear_module(kind: str, fresh_dispatch: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEARTH_KERNELS", raising=False)
    dispatch.reset()
    w, bias = _weight(32, 96), torch.randn(32)
    q = quantize_int8(w) if kind == "int8" else quantize_int4(w, 32, symmetric=False)
    exact = QuantizedLinear(q, bias)
    half = QuantizedLinear(q, bias, cpu_compute_dtype=torch.bfloat16)
    small = torch.randn(1, 2, 96)  # decode-sized: bf16 activations on the half module
    large = torch.randn(SMALL_BATCH_ROWS + 1, 96)  # prefill-sized: fp32 reference on both
    want_small = linear(small, q, bias)
    torch.testing.assert_close(exact(small), want_small, rtol=0, atol=0)
    assert half(small).dtype == torch.float32
    torch.testing.assert_close(half(small), want_small, rtol=0.02, atol=0.03)  # bf16 rounding
    torch.testing.assert_close(half(large), linear(large, q, bias), rtol=0, atol=0)
    # state_dict round trip into an empty module of the same shapes rebuilds the weight
    blank = (
        quantize_int8(torch.zeros(32, 96))
        if kind == "int8"
        else quantize_int4(torch.randn(32, 96), 32, symmetric=False)
    )
    other = QuantizedLinear(blank, torch.zeros(32))
    other.load_state_dict(exact.state_dict())
    torch.testing.assert_close(other(large), exact(large), rtol=0, atol=0)
    moved = exact.to(torch.device("cpu"))  # _apply rebuilds over the (same) buffers
    assert moved.weight_q.scale is moved.scale
    assert kind in repr(exact)
