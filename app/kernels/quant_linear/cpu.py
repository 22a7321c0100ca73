"""torch's own CPU weight-only kernels, fed Hearth's quantized weights, for half-precision inputs.

On the CPU, ``aten._weight_int8pack_mm`` and ``aten._weight_int4pack_mm_for_cpu`` are vectorized
only for bf16/fp16 activations (Hearth routes bf16; see HALF_DTYPES): with bf16 they beat a dense fp32 ``F.linear`` at SmolLM2's decode
shapes (batch 1), while with fp32 activations they are several times slower than it (see
`hearth bench kernels`). So the dispatcher sends only bf16 inputs on CPU tensors here; fp32
inputs keep the reference. Their results are within twice torch's own error in the same dtype
(tests/kernels), which is the contract every path keeps.

The int8 op reads Hearth's ``Int8Weight`` as is. The int4 op wants torch's own packed layout
(``_convert_weight_to_int4pack_for_cpu``) and a float zero point: ``w = (c - 8) * scale + zero``,
so Hearth's integer zero point ``z`` becomes ``(8 - z) * scale``. That conversion costs a full
pass over the weight, so it is made once per weight and dtype and kept while the weight lives.
An ``in_features`` that is not a multiple of the group size (576 with groups of 128) is handled
by padding ``x`` with zeros up to the padded width the codes already have.

Shapes torch's ops do not handle go to the reference instead (checked here, not left to chance:
``_weight_int8pack_mm`` reads past the end of a row when ``in_features`` is not a multiple of 16 —
garbage or a segfault in torch 2.13 — and the int4 packer wants ``out_features`` divisible by 16).
Every linear layer of SmolLM2 and of common LLMs meets both.
"""

from __future__ import annotations

import threading
import weakref

import torch
import torch.nn.functional as F

from . import reference
from .weights import Int4Weight, Int8Weight, unpack_int4

# fp16 is left to the reference: there torch's op (fp16 scales and accumulation) measured over twice
# torch's own fp16 error, the bar every path must meet; CPU models run in bf16 or fp32 anyway.
HALF_DTYPES = (torch.bfloat16,)
# The aten ops this path calls. A torch build without one of them (older than 2.6, say) or without
# its CPU kernel cannot take this path at all; that is the only "unavailable" (see missing_ops).
ATEN_OPS = ("_weight_int8pack_mm", "_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])  # [M, K]


def _finish(y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


def _check_k(x: torch.Tensor, in_features: int) -> None:
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} input features, the weight {in_features}")


def linear_int8(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(w).T + bias`` with torch's int8 weight-only matmul; x bf16 [..., K]."""
    _check_k(x, w.in_features)
    if w.in_features % 16:
        return reference.linear_int8(x, w, bias)
    y = torch.ops.aten._weight_int8pack_mm(_rows(x), w.qweight, w.scale.to(x.dtype))  # [M, N]
    return _finish(y, x, bias)


_packed_lock = threading.Lock()
# id(weight) -> {dtype: (packed, scales_and_zeros)}; an entry leaves with its weight (finalize).
_packed: dict[int, dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]]] = {}


def _inner_k_tiles(k_pad: int) -> int:
    for tiles in (8, 4, 2):
        if k_pad % (16 * tiles) == 0:
            return tiles
    raise ValueError(f"torch's int4 CPU matmul needs in_features padded to a multiple of 32, got {k_pad}")


def _int4pack(w: Int4Weight, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's packed int4 codes and [G, N, 2] scales/zeros for ``w``, made once per dtype."""
    key = id(w)
    with _packed_lock:
        entry = _packed.get(key)
        if entry is None:
            entry = _packed[key] = {}
            weakref.finalize(w, _packed.pop, key, None)
        if dtype not in entry:
            codes = unpack_int4(w.packed).to(torch.int32)  # [N, K_pad]
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                codes, _inner_k_tiles(codes.shape[1])
            )
            zero = torch.zeros_like(w.scale) if w.zero is None else (8.0 - w.zero.float()) * w.scale
            sz = torch.stack((w.scale.t(), zero.t()), dim=-1).to(dtype).contiguous()  # [G, N, 2]
            entry[dtype] = (packed, sz)
        return entry[dtype]


def linear_int4(x: torch.Tensor, w: Int4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(w).T + bias`` with torch's int4 CPU matmul; x bf16 [..., K]."""
    _check_k(x, w.in_features)
    if w.out_features % 16:
        return reference.linear_int4(x, w, bias)
    packed, sz = _int4pack(w, x.dtype)
    rows = _rows(x)  # [M, K]
    k_pad = w.n_groups * w.group_size
    if k_pad != w.in_features:
        rows = F.pad(rows, (0, k_pad - w.in_features))  # zeros meet the padded columns: no effect
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.contiguous(), packed, w.group_size, sz)
    return _finish(y, x, bias)


def missing_ops() -> list[str]:
    """The ops of ATEN_OPS this torch build lacks or has no CPU kernel for, in words; [] when all
    are there. Only this makes the path unavailable: an op that is there but disagrees with the
    reference is a fault, which ``probe`` reports and the tests (tests/kernels) fail on."""
    missing = []
    for name in ATEN_OPS:
        if not hasattr(torch.ops.aten, name):
            missing.append(f"aten.{name} is not in torch {torch.__version__}")
        elif not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "CPU"):
            missing.append(f"aten.{name} has no CPU kernel in torch {torch.__version__}")
    return missing


def probe() -> dict[torch.dtype, str | None]:
    """For each routed half dtype: None when both ops run and agree with the reference here, else why not."""
    from .weights import quantize_int4, quantize_int8

    missing = missing_ops()
    if missing:
        return {dtype: "; ".join(missing) for dtype in HALF_DTYPES}
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 96, generator=gen) / 10  # K=96: padded for groups of 64
    q8, q4 = quantize_int8(weight), quantize_int4(weight, 64, symmetric=False)
    result: dict[torch.dtype, str | None] = {}
    for dtype in HALF_DTYPES:
        x = torch.randn(2, 96, generator=gen).to(dtype)
        try:
            for fast, ref, q in (
                (linear_int8, reference.linear_int8, q8),
                (linear_int4, reference.linear_int4, q4),
            ):
                err = float((fast(x, q).float() - ref(x, q).float()).abs().max())  # type: ignore[operator]
                if not err < 0.05:  # outputs are O(1); a wrong layout is off by O(1)
                    raise ValueError(f"{fast.__name__} is off by {err:.3g}")
        except (RuntimeError, NotImplementedError, AttributeError, ValueError) as exc:
            result[dtype] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        else:
            result[dtype] = None
    return result
