"""Weight-only quantized linear layers: make the quantized state once, then run ``linear``.

qw = quantize_int4(layer.weight, group_size=64, symmetric=False)
y = linear(x, qw, layer.bias)   # Triton on a GPU; on the CPU torch's own int8/int4 matmuls for
                                # bf16 x, the torch reference for fp32 x
"""

from __future__ import annotations

import torch

from .. import dispatch
from .reference import dequantize_int4, dequantize_int8
from .weights import INT4_GROUP_SIZES, Int4Weight, Int8Weight, quantize_int4, quantize_int8

QuantizedWeight = Int8Weight | Int4Weight

_OP_FOR: dict[type, str] = {Int8Weight: "int8_linear", Int4Weight: "int4_linear"}


def linear(
    x: torch.Tensor, qweight: QuantizedWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + bias``, W the dequantized ``qweight``; x [..., K] -> [..., N] in x's dtype."""
    op = _OP_FOR.get(type(qweight))
    if op is None:
        raise TypeError(f"linear() takes an Int8Weight or Int4Weight, got {type(qweight).__name__}")
    weight_device = qweight.scale.device
    if x.device != weight_device:
        raise ValueError(f"x is on {x.device} but the quantized weight is on {weight_device}")
    return dispatch.resolve(op, x.device, x.dtype)(x, qweight, bias)


def dequantize(qweight: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [N, K] weight that ``qweight`` stands for, in ``dtype``."""
    if isinstance(qweight, Int8Weight):
        return dequantize_int8(qweight, dtype)
    if isinstance(qweight, Int4Weight):
        return dequantize_int4(qweight, dtype)
    raise TypeError(f"dequantize() takes an Int8Weight or Int4Weight, got {type(qweight).__name__}")


__all__ = [
    "INT4_GROUP_SIZES",
    "Int4Weight",
    "Int8Weight",
    "QuantizedWeight",
    "dequantize",
    "linear",
    "quantize_int4",
    "quantize_int8",
]
