"""Kernel tests run every Triton kernel on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be set before triton is imported (``triton.jit`` reads it when a kernel is
defined), hence at this conftest's import. It stays set for the rest of the session; that is
harmless elsewhere: nothing outside app/kernels imports triton, and the dispatcher's automatic
choice ignores the variable (only ``HEARTH_KERNELS=triton`` uses the interpreter, as the tests here
do through the ``force_triton`` fixture).

Tolerance, for every kernel compared with its reference: the *truth* is the reference computed in
fp64 from the same (low-precision) inputs; *torch's own error* is torch's ordinary computation in
the test dtype against that truth; the kernel must satisfy

    max|kernel - truth| <= 2 * max|torch - truth| + floor,   floor = 1e-5 (outputs are O(1)).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from app.kernels import dispatch  # noqa: E402

ERROR_FLOOR = 1e-5


def max_error(out: torch.Tensor, truth: torch.Tensor) -> float:
    return float((out.double() - truth.double()).abs().max()) if truth.numel() else 0.0


def assert_within_torch_error(
    kernel_out: torch.Tensor,
    torch_out: torch.Tensor,
    truth: torch.Tensor,
    *,
    floor: float = ERROR_FLOOR,
) -> None:
    """The kernel's error is no worse than twice torch's own error in the same dtype (+ floor)."""
    assert kernel_out.shape == truth.shape, (tuple(kernel_out.shape), tuple(truth.shape))
    kernel_err = max_error(kernel_out, truth)
    torch_err = max_error(torch_out, truth)
    assert kernel_err <= 2 * torch_err + floor, (
        f"kernel error {kernel_err:.3g} > 2 x torch's own error {torch_err:.3g} + {floor:g}"
    )


@pytest.fixture
def check_error() -> Callable[..., None]:
    return assert_within_torch_error


@pytest.fixture
def fresh_dispatch() -> Iterator[None]:
    """Let a test change HEARTH_KERNELS: the choice is remade before and after it."""
    dispatch.reset()
    yield
    dispatch.reset()


@pytest.fixture
def force_triton(monkeypatch: pytest.MonkeyPatch, fresh_dispatch: None) -> Iterator[None]:
    """The public functions run their Triton kernels on CPU tensors (through the interpreter)."""
    monkeypatch.setenv("HEARTH_KERNELS", "triton")
    dispatch.reset()
    assert dispatch.choice().path == "triton", dispatch.choice().reason
    yield


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
