"""Small helpers shared by the Triton wrappers. Imports triton: only Triton modules import this."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when kernels run under ``TRITON_INTERPRET=1`` (numpy on CPU tensors)."""
    return bool(triton.knobs.runtime.interpret)


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """Operand dtype for ``tl.dot`` on activations of ``dtype``.

    fp16/bf16 use tensor cores in their own dtype; fp32 stays fp32 (with
    ``input_precision="ieee"`` so it is not silently truncated to tf32). Under the interpreter bf16
    operands are upcast to fp32:
    Triton 3.9's interpreter multiplies the raw uint16 bit patterns of bf16 in ``tl.dot``, a bug of
    the interpreter that real GPUs do not have.
    """
    if dtype == torch.float16:
        return tl.float16
    if dtype == torch.bfloat16 and not interpreting():
        return tl.bfloat16
    return tl.float32


def store_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel writes results of ``dtype`` in; the wrapper casts to ``dtype`` after.

    Always ``dtype`` on a GPU. Under the interpreter bf16 results are written as fp32 and rounded by
    torch: Triton 3.9's interpreter converts fp32 to bf16 by truncation, where GPUs (and torch)
    round to nearest even, which would make the interpreter's bf16 results look a bit worse than
    the real kernel's.
    """
    if dtype == torch.bfloat16 and interpreting():
        return torch.float32
    return dtype


@triton.jit
def mma(a, b, DOT_DTYPE: tl.constexpr):
    """``a @ b``: operands in ``DOT_DTYPE``, fp32 accumulator; fp32 stays exact (no tf32)."""
    if DOT_DTYPE == tl.float32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE))
    return out


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@contextlib.contextmanager
def on_device(t: torch.Tensor) -> Iterator[None]:
    """Launch on ``t``'s GPU (Triton launches on the current device, which may be another)."""
    if t.is_cuda:
        with torch.cuda.device(t.device):
            yield
    else:
        yield
