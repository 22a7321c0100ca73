"""A tiny kernel the dispatcher launches once to prove that Triton works end to end here.

Importing triton is not enough: the first launch also needs a C compiler (for Triton's launcher),
ptxas or the ROCm toolchain, and a driver that matches. Only :mod:`app.kernels.dispatch` imports
this module, and only when a GPU is present or Triton is forced.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_one_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1.0, mask=mask)


def smoke(device: str) -> str:
    """Run the kernel on ``device``; returns triton's version, raises if anything is wrong."""
    x = torch.arange(5, dtype=torch.float32, device=device)
    _add_one_kernel[(1,)](x, x.numel(), BLOCK=8)
    expected = torch.arange(1, 6, dtype=torch.float32, device=device)
    if not torch.equal(x, expected):
        raise RuntimeError(f"Triton's test kernel computed {x.tolist()}, expected 1..5")
    return str(triton.__version__)
