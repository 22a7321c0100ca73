"""Measured figures for the quantized linear at SmolLM2-like shapes, batch 1 (one decode step).

For each (out, in) shape it times, on whatever device is present:

* ``dense``: ``F.linear`` with the unquantized weight in the activation dtype (what quantization is
  meant to beat on bandwidth);
* ``reference``: Hearth's torch reference (dequantize to fp32 + matmul, the CPU path);
* ``torch_int8pack_mm`` / ``torch_int4pack_mm``: torch's own weight-only kernels
  (``aten._weight_int8pack_mm``; ``aten._weight_int4pack_mm``, the tinygemm kernel, on CUDA and
  ``_weight_int4pack_mm_for_cpu`` on the CPU), fed the same quantized weights;
* ``triton``: Hearth's Triton kernel, on a GPU only (interpreter timings would mean nothing);
* ``dispatched``: the public ``linear()`` as the dispatcher routes it for this device and dtype,
  with the implementation it picked (on the CPU: torch's int8/int4 kernels for bf16, the
  reference for fp32).

:func:`decode_tokens_per_s` times a plain greedy decode loop of any causal LM that takes
``input_ids``/``past_key_values`` (a transformers model); the end-to-end comparison of fp32 and the
quantized schemes lives with the quantizer (app.runtime.quantize.torch_quant), which this package
may not import.

Each timing gives the median microseconds per call and the effective bandwidth: the bytes a fused
kernel must read (quantized weight, scales, zero points and x) divided by the time, so that a slow
path shows up as a low figure. ``max_abs_diff`` compares each path's output to the reference.
Results are JSON-serializable; `hearth bench` writes them. Tests only check the keys.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import dispatch
from .quant_linear import reference
from .quant_linear.weights import Int4Weight, Int8Weight, quantize_int4, quantize_int8, unpack_int4

SMOLLM2_SHAPES: tuple[tuple[int, int], ...] = ((576, 576), (1536, 576), (49152, 576))  # (out, in)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_us(fn: Callable[[], torch.Tensor], device: torch.device, min_time_s: float) -> float:
    """Median microseconds per call over batches of calls, after a warm-up."""
    for _ in range(3):
        fn()
    _sync(device)
    per_call: list[float] = []
    calls = 1
    spent = 0.0
    while spent < min_time_s or len(per_call) < 3:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        elapsed = time.perf_counter() - start
        per_call.append(elapsed / calls)
        spent += elapsed
        if elapsed < 1e-3:
            calls *= 2  # batch short calls so that timer resolution does not dominate
    return statistics.median(per_call) * 1e6


def _error(exc: Exception) -> dict[str, str]:
    return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}


def _measure(
    fn: Callable[[], torch.Tensor],
    *,
    truth: torch.Tensor | None,
    nbytes: int,
    device: torch.device,
    min_time_s: float,
) -> dict[str, Any]:
    try:
        out = fn()
        us = _time_us(fn, device, min_time_s)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        return _error(exc)
    result: dict[str, Any] = {"us": round(us, 3), "gb_per_s": round(nbytes / (us * 1e3), 3)}
    if truth is not None:
        result["max_abs_diff"] = float((out.float() - truth.float()).abs().max())
    return result


def _int4pack_fn(x: torch.Tensor, w: Int4Weight) -> Callable[[], torch.Tensor]:
    """torch's tinygemm int4 matmul on the same (symmetric) codes: w = (c - 8) * scale + 0."""
    if not w.symmetric:
        raise ValueError("the tinygemm comparison uses symmetric int4")
    if w.in_features % w.group_size:
        raise ValueError(f"tinygemm needs in_features divisible by the group size {w.group_size}")
    k = w.in_features
    tiles = [t for t in (8, 4, 2) if k % (16 * t) == 0]
    if not tiles:
        raise ValueError(f"tinygemm needs in_features divisible by 32, got {k}")
    inner_k_tiles = tiles[0]
    codes = unpack_int4(w.packed)[:, :k]  # uint8 [N, K]
    scale_zero = torch.stack((w.scale.t(), torch.zeros_like(w.scale.t())), dim=-1)  # [G, N, 2]
    if x.is_cuda:
        xb = x.to(torch.bfloat16)
        packed = torch.ops.aten._convert_weight_to_int4pack(
            (codes[:, ::2] << 4 | codes[:, 1::2]).contiguous(), inner_k_tiles
        )
        sz = scale_zero.to(torch.bfloat16).contiguous()
        return lambda: torch.ops.aten._weight_int4pack_mm(xb, packed, w.group_size, sz)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        codes.to(torch.int32), inner_k_tiles
    )
    sz = scale_zero.to(x.dtype).contiguous()
    return lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, w.group_size, sz)


def _int8pack_fn(x: torch.Tensor, w: Int8Weight) -> Callable[[], torch.Tensor]:
    scale = w.scale.to(x.dtype)
    return lambda: torch.ops.aten._weight_int8pack_mm(x, w.qweight, scale)


def _triton_status(device: torch.device) -> str | None:
    """None when the Triton kernels should be timed here, else why not."""
    c = dispatch.choice()
    if c.interpret:
        return "Triton runs in its CPU interpreter here; its timings would mean nothing"
    if not dispatch.runs_triton(device):
        return f"Triton path not in use on {device.type}: {c.reason}"
    return None


def _bench_shape(
    w: torch.Tensor,
    x: torch.Tensor,
    *,
    group_size: int,
    min_time_s: float,
    triton_skip: str | None,
) -> dict[str, Any]:
    """All paths for one weight w [N, K] (fp32) and input x [M, K]."""
    n, k = w.shape
    dev = x.device
    x_bytes = x.numel() * x.element_size()
    w_dense = w.to(x.dtype)
    entry: dict[str, Any] = {
        "out_features": n,
        "in_features": k,
        "dense": _measure(
            lambda: F.linear(x, w_dense),
            truth=None,
            nbytes=w_dense.numel() * w_dense.element_size() + x_bytes,
            device=dev,
            min_time_s=min_time_s,
        ),
    }
    q4 = quantize_int4(w, group_size, symmetric=True)
    variants: tuple[tuple[str, Any, Callable[..., Any], str, Callable[..., Any]], ...] = (
        ("int8", quantize_int8(w), reference.linear_int8, "torch_int8pack_mm", _int8pack_fn),
        ("int4", q4, reference.linear_int4, "torch_int4pack_mm", _int4pack_fn),
    )
    for name, qw, ref, torch_name, torch_fn in variants:
        op = f"{name}_linear"
        truth = ref(x, qw)
        nbytes = qw.nbytes + x_bytes
        block: dict[str, Any] = {"bytes_read": nbytes}

        def measure(
            fn: Callable[[], torch.Tensor], truth: torch.Tensor = truth, nbytes: int = nbytes
        ) -> dict[str, Any]:
            return _measure(fn, truth=truth, nbytes=nbytes, device=dev, min_time_s=min_time_s)

        block["reference"] = measure(lambda f=ref, q=qw: f(x, q))
        try:
            alternative = torch_fn(x, qw)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            block[torch_name] = _error(exc)
        else:
            block[torch_name] = measure(alternative)
        public = dispatch.resolve(op, dev, x.dtype)
        block["dispatched"] = {
            "implementation": f"{public.__module__}:{public.__name__}",
            **measure(lambda f=public, q=qw: f(x, q)),
        }
        if triton_skip is None:
            kernel = dispatch.resolve(op, dev)
            block["triton"] = measure(lambda f=kernel, q=qw: f(x, q))
        else:
            block["triton"] = {"skipped": triton_skip}
        entry[name] = block
    return entry


def run_kernel_bench(
    *,
    shapes: Sequence[tuple[int, int]] = SMOLLM2_SHAPES,
    batch: int = 1,
    group_size: int = 64,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    min_time_s: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Time the int8/int4 linear paths at ``shapes`` (out, in); see the module doc for the keys."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    dt = dtype if dtype is not None else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    triton_skip = _triton_status(dev)
    results = []
    for n, k in shapes:
        w = (torch.randn(n, k, generator=gen) * 0.02).to(dev)  # [N, K] fp32
        x = torch.randn(batch, k, generator=gen).to(dev, dt)  # [M, K]
        results.append(
            _bench_shape(
                w, x, group_size=group_size, min_time_s=min_time_s, triton_skip=triton_skip
            )
        )
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(dt).removeprefix("torch."),
        "batch": batch,
        "int4_group_size": group_size,
        "int4_symmetric": True,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "kernel_path": dispatch.choice().path,
        "dispatch": dispatch.describe(),
        "shapes": results,
    }


def decode_tokens_per_s(
    model: torch.nn.Module, prompt_ids: torch.Tensor, *, tokens: int, cache_factory: Callable[[], Any] | None = None
) -> tuple[float, list[int]]:
    """Greedy decode of ``tokens`` tokens after ``prompt_ids`` [1, T]: (tokens/s of decode, ids).

    The prompt's prefill is not timed; each step feeds one token and the cache back in.
    """
    with torch.inference_mode():
        cache = cache_factory() if cache_factory is not None else None
        out = model(input_ids=prompt_ids, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        next_id = out.logits[:, -1].argmax(dim=-1, keepdim=True)  # [1, 1]
        ids = [int(next_id)]
        _sync(prompt_ids.device)
        start = time.perf_counter()
        for _ in range(tokens - 1):
            out = model(input_ids=next_id, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            next_id = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            ids.append(int(next_id))
        _sync(prompt_ids.device)
        elapsed = time.perf_counter() - start
    return (tokens - 1) / elapsed, ids


def run_from_args(args: object) -> dict[str, Any]:
    """Every linear path at SmolLM2's shapes on the default device (fp32 and, on the CPU, bf16).

    `hearth bench kernels` runs app.runtime.quantize.torch_quant:bench_from_args, which adds the
    end-to-end decode comparison and saves the result for the planner.
    """
    dtypes: list[torch.dtype | None] = [None]  # the device's default: bf16 on a GPU, fp32 on the CPU
    if not torch.cuda.is_available():
        dtypes.append(torch.bfloat16)  # torch's CPU int8/int4 kernels are vectorized for bf16
    runs = [run_kernel_bench(dtype=dt) for dt in dtypes]
    return {run["dtype"]: run for run in runs}
