"""Chooses, once per process, whether kernels run as Triton or as the torch reference, and says why.

The rule: Triton when a CUDA or ROCm GPU is visible to torch *and* Triton imports *and* a tiny test
kernel compiles and runs on that GPU (which also catches a missing C compiler, ptxas or driver
mismatch); otherwise the torch reference. Tensors on the CPU always take the reference, whatever
was chosen. Nothing here imports triton unless a GPU is present (or the override below asks for
it), so a CPU machine never pays for, or breaks on, Triton.

CPU tensors in bf16 take torch's own vectorized weight-only matmuls where an op declares one
(``cpu_half``; :mod:`app.kernels.quant_linear.cpu`), after a one-time probe that they run and agree
with the reference; fp32 CPU tensors keep the reference, which is exact and, for fp32, faster.

``HEARTH_KERNELS`` overrides the choice: ``torch`` forces the reference (for CPU half-precision inputs too); ``triton`` forces Triton
where it can run — with ``TRITON_INTERPRET=1`` that includes CPU tensors, run by Triton's
interpreter, which is how the tests drive the public functions through the Triton kernels.

Ops are declared once in ``OPS`` (name -> reference and Triton implementations, imported lazily by
``module:function`` path); the public functions in each op package call :func:`resolve`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

ENV_OVERRIDE = "HEARTH_KERNELS"
OVERRIDES = ("auto", "torch", "triton")


@dataclass(frozen=True)
class OpSpec:
    """One op: its torch reference, its Triton implementation (if any) and a line about it."""

    name: str
    reference: str  # "module:function", relative to app.kernels
    triton: str | None
    note: str
    cpu_half: str | None = None  # torch's own CPU kernel for bf16 inputs, if any


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            "int8_linear",
            "quant_linear.reference:linear_int8",
            "quant_linear.triton:linear_int8",
            "int8 per-channel weight-only linear; Triton: fused GEMV (M=1) and GEMM (M<=16), "
            "dequantize + torch matmul for larger M; CPU bf16: aten._weight_int8pack_mm",
            cpu_half="quant_linear.cpu:linear_int8",
        ),
        OpSpec(
            "int4_linear",
            "quant_linear.reference:linear_int4",
            "quant_linear.triton:linear_int4",
            "int4 group-wise weight-only linear (sym/asym); same split as int8; "
            "CPU bf16: aten._weight_int4pack_mm_for_cpu",
            cpu_half="quant_linear.cpu:linear_int4",
        ),
        OpSpec(
            "kv_decode_attention",
            "kv_cache.reference:decode_attention",
            "kv_cache.triton:decode_attention",
            "one-token GQA attention reading the int8/int4 KIVI cache and its full-precision tail",
        ),
        OpSpec(
            "kv_append",
            "kv_cache.cache:QuantizedKVCache.append",
            None,
            "quantize-on-append runs in torch on every path: once per group of tokens, "
            "launch-bound rather than bandwidth-bound",
        ),
        OpSpec(
            "kv_compact",
            "kv_evict.reference:compact_",
            "kv_evict.triton:compact_",
            "in-place per-head compaction of kept KV positions",
        ),
        OpSpec(
            "keydiff_scores",
            "kv_evict.reference:keydiff_scores",
            "kv_evict.triton:keydiff_scores",
            "KeyDiff cosine distance to the mean unit key; Triton fuses it into one launch",
        ),
    )
}


@dataclass(frozen=True)
class KernelChoice:
    path: str  # "triton" or "torch"
    reason: str
    device: str | None  # the GPU, in words, or None
    triton_version: str | None  # installed version (imported or not)
    interpret: bool  # Triton runs in its CPU interpreter
    override: str


def choose_path(
    *, override: str, gpu: str | None, interpret: bool, triton_error: str | None
) -> tuple[str, str]:
    """The decision itself, pure: ``(path, reason)``.

    ``gpu`` describes the visible GPU (None: none); ``triton_error`` is why Triton could not import
    or run a test kernel (None: it worked, or it was not tried because it could not matter).
    """
    if override not in OVERRIDES:
        return "torch", (
            f"{ENV_OVERRIDE}={override!r} is not one of {', '.join(OVERRIDES)}; "
            "using the torch reference"
        )
    if override == "torch":
        return "torch", f"{ENV_OVERRIDE}=torch asks for the torch reference"
    if gpu is None and not (override == "triton" and interpret):
        if override == "triton":
            return "torch", (
                f"{ENV_OVERRIDE}=triton, but there is no CUDA or ROCm GPU (TRITON_INTERPRET=1 "
                "would run the Triton kernels in Triton's CPU interpreter, for testing)"
            )
        return "torch", "no CUDA or ROCm GPU: the torch reference runs on the CPU"
    where = gpu if gpu is not None else "the CPU interpreter (TRITON_INTERPRET=1)"
    if triton_error is not None:
        return "torch", f"Triton cannot run on {where}: {triton_error}; using the torch reference"
    if gpu is None:
        return "triton", (
            f"{ENV_OVERRIDE}=triton with TRITON_INTERPRET=1: Triton kernels run in the CPU "
            "interpreter (slow; for tests)"
        )
    return "triton", f"Triton compiled and ran a test kernel on {gpu}"


def _installed_triton() -> str | None:
    """Triton's installed version without importing it (ROCm wheels ship it under another name)."""
    for dist in ("triton", "pytorch-triton-rocm", "pytorch-triton", "triton-windows"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _probe_gpu() -> str | None:
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    kind = "ROCm" if torch.version.hip else "CUDA"
    major, minor = torch.cuda.get_device_capability(index)
    return f"{kind} GPU {index}: {torch.cuda.get_device_name(index)} (capability {major}.{minor})"


def _probe_triton(device: str) -> str | None:
    """Import triton and run one tiny kernel on ``device``; the error in words, or None."""
    try:
        from . import _triton_probe

        _triton_probe.smoke(device)
    except Exception as exc:  # noqa: BLE001 - any failure here (import, compiler, driver) means "use torch"
        logger.warning("Triton is unusable here; the torch reference will run", exc_info=True)
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def _decide() -> KernelChoice:
    override = os.environ.get(ENV_OVERRIDE, "auto").strip().lower() or "auto"
    interpret = _interpreting()
    gpu = None if override == "torch" else _probe_gpu()
    triton_error = None
    if override in ("auto", "triton") and (gpu is not None or (override == "triton" and interpret)):
        triton_error = _probe_triton("cuda" if gpu is not None else "cpu")
    path, reason = choose_path(
        override=override, gpu=gpu, interpret=interpret, triton_error=triton_error
    )
    return KernelChoice(
        path=path,
        reason=reason,
        device=gpu,
        triton_version=_installed_triton(),
        interpret=interpret and gpu is None and path == "triton",
        override=override,
    )


_lock = threading.Lock()
_choice: KernelChoice | None = None
_cpu_half: dict[torch.dtype, str | None] | None = None  # dtype -> None (usable) or why not


def choice() -> KernelChoice:
    """The process-wide choice, made on first use and logged once."""
    global _choice
    with _lock:
        if _choice is None:
            _choice = _decide()
            logger.info("kernels: %s (%s)", _choice.path, _choice.reason)
        return _choice


def reset() -> None:
    """Forget the choice so that the next call decides again (tests change the environment)."""
    global _choice, _cpu_half
    with _lock:
        _choice = None
        _cpu_half = None


def cpu_half_status() -> dict[torch.dtype, str | None]:
    """Whether torch's CPU weight-only kernels run here, per half dtype (probed once, logged)."""
    global _cpu_half
    if choice().override == "torch":
        reason = f"{ENV_OVERRIDE}=torch asks for the torch reference"
        return {torch.bfloat16: reason}
    with _lock:
        if _cpu_half is None:
            from .quant_linear import cpu

            _cpu_half = cpu.probe()
            logger.info("kernels: CPU half-precision paths: %s", _cpu_half)
        return _cpu_half


_loaded: dict[str, Callable[..., Any]] = {}


def _load(target: str) -> Callable[..., Any]:
    if target not in _loaded:
        module_name, _, attr = target.partition(":")
        obj: Any = importlib.import_module(f"{__package__}.{module_name}")
        for part in attr.split("."):
            obj = getattr(obj, part)
        _loaded[target] = obj
    return _loaded[target]


def runs_triton(device: torch.device) -> bool:
    """Whether an op on tensors on ``device`` takes its Triton implementation."""
    c = choice()
    return c.path == "triton" and (device.type == "cuda" or c.interpret)


def resolve(
    name: str, device: torch.device, dtype: torch.dtype | None = None
) -> Callable[..., Any]:
    """The implementation of op ``name`` for tensors on ``device`` (activations in ``dtype``)."""
    spec = OPS[name]
    if spec.triton is not None and runs_triton(device):
        return _load(spec.triton)
    if (
        spec.cpu_half is not None
        and device.type == "cpu"
        and dtype is not None
        and cpu_half_status().get(dtype, "not a half dtype") is None
    ):
        return _load(spec.cpu_half)
    return _load(spec.reference)


def describe() -> dict[str, Any]:
    """What runs where and why, JSON-serializable, for ``hearth hardware``."""
    c = choice()
    ops = {}
    for spec in OPS.values():
        on_triton = spec.triton is not None and c.path == "triton"
        ops[spec.name] = {
            "path": "triton" if on_triton else "torch",
            "implementation": f"app.kernels.{spec.triton if on_triton else spec.reference}",
            "note": spec.note,
        }
        if spec.cpu_half is not None:
            half = cpu_half_status()
            ops[spec.name]["cpu_half"] = {
                str(dt).removeprefix("torch."): (
                    f"app.kernels.{spec.cpu_half}" if why is None else f"reference ({why})"
                )
                for dt, why in half.items()
            }
    return {
        "path": c.path,
        "reason": c.reason,
        "device": c.device,
        "interpreter": c.interpret,
        "override": c.override,
        "triton_version": c.triton_version,
        "cpu_tensors": "torch reference" if not c.interpret else "triton (interpreter)",
        "ops": ops,
    }
