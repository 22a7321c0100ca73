"""``QuantizedLinear``: an ``nn.Linear`` stand-in that keeps an int8/int4 weight and calls ``linear``.

The quantized state lives in buffers (``qweight``/``scale`` for int8; ``packed``/``scale`` and,
when asymmetric, ``zero`` for int4), so ``state_dict``, ``.to(device)`` and safetensors treat it
like any module; the ``Int8Weight``/``Int4Weight`` that the kernels read is rebuilt from them
whenever they move.

Activation precision on the CPU: torch's CPU weight-only kernels are vectorized for bf16 only
(`hearth bench kernels` measures it), so a layer may be built with ``cpu_compute_dtype=bfloat16``:
then a small batch of rows (decode: one token) is computed with bf16 activations — rounding the
input and output to bf16, the same error as running that layer in bf16 — while a large batch
(prefill) keeps fp32 activations and the reference, where one dequantization is shared by many
rows and the fp32 GEMM is the fast path. On a GPU the activations keep their dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from . import linear
from .weights import Int4Weight, Int8Weight

QuantizedWeight = Int8Weight | Int4Weight
SMALL_BATCH_ROWS = 16  # rows up to which the CPU half-precision path is used (decode, not prefill)


class QuantizedLinear(nn.Module):
    """Weight-only quantized linear layer; ``forward`` is ``linear(x, weight, bias)``."""

    def __init__(
        self,
        weight: QuantizedWeight,
        bias: torch.Tensor | None = None,
        *,
        cpu_compute_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.cpu_compute_dtype = cpu_compute_dtype
        if isinstance(weight, Int8Weight):
            self.kind = "int8"
            self.group_size = 0
            self.register_buffer("qweight", weight.qweight)
        elif isinstance(weight, Int4Weight):
            self.kind = "int4"
            self.group_size = weight.group_size
            self.register_buffer("packed", weight.packed)
            if weight.zero is not None:
                self.register_buffer("zero", weight.zero)
        else:
            raise TypeError(f"QuantizedLinear takes an Int8Weight or Int4Weight, got {type(weight)}")
        self.register_buffer("scale", weight.scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._weight: QuantizedWeight = weight

    @property
    def weight_q(self) -> QuantizedWeight:
        """The quantized weight over this module's current buffers."""
        return self._weight

    def _rebuild(self) -> None:
        if self.kind == "int8":
            self._weight = Int8Weight(self.qweight, self.scale)
        else:
            zero = getattr(self, "zero", None)
            self._weight = Int4Weight(
                self.packed, self.scale, zero, self.group_size, self.in_features
            )

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def, override]
        """Moving or casting the module (``.to``, ``.cuda``) rebuilds the weight over the new buffers."""
        out = super()._apply(fn, recurse)
        self._rebuild()
        return out

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._rebuild()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.cpu_compute_dtype
        if (
            half is not None
            and x.device.type == "cpu"
            and x.dtype != half
            and x.numel() <= SMALL_BATCH_ROWS * x.shape[-1]
        ):
            return linear(x.to(half), self._weight, self.bias).to(x.dtype)
        return linear(x, self._weight, self.bias)

    def extra_repr(self) -> str:
        w = self._weight
        detail = "" if isinstance(w, Int8Weight) else f", group_size={w.group_size}, symmetric={w.symmetric}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}{detail}, "
            f"bias={self.bias is not None}, cpu_compute_dtype={self.cpu_compute_dtype}"
        )
