"""Hearth's GPU kernels: weight-only quantized linear, a quantized KV cache with decode attention,
and KV-eviction helpers. Each op has a torch reference (the truth, and the CPU path) and a Triton
kernel; :mod:`app.kernels.dispatch` picks one once per process and :func:`describe` says which.

This package imports nothing else from ``app`` and never imports PySide6; triton is imported only
on the Triton path.
"""

from __future__ import annotations

from .dispatch import describe
from .kv_cache import QuantizedKVCache, decode_attention
from .kv_evict import compact_, keydiff_scores
from .quant_linear import (
    Int4Weight,
    Int8Weight,
    dequantize,
    linear,
    quantize_int4,
    quantize_int8,
)

__all__ = [
    "Int4Weight",
    "Int8Weight",
    "QuantizedKVCache",
    "compact_",
    "decode_attention",
    "dequantize",
    "describe",
    "keydiff_scores",
    "linear",
    "quantize_int4",
    "quantize_int8",
]
