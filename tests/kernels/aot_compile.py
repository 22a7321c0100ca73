"""Compile every Triton kernel, as the wrappers launch it, for real GPU targets — without a GPU.

Run by test_kernels_compile.py in a subprocess without TRITON_INTERPRET (the interpreter replaces
``triton.jit`` kernels with objects the compiler cannot take). The wrappers are called on small CPU
tensors with each kernel's launch swapped for a recorder; each recorded launch (argument types and
constexprs) is then compiled ahead of time with ``triton.compile`` down to a cubin (NVIDIA, through
the ptxas that ships with Triton) or an hsaco (AMD). That checks what the interpreter cannot:
that the kernels lower for the GPUs Hearth targets (tensor-core dots, bf16, layouts, registers).
It does not run them, so it needs no GPU.

Usage: python tests/kernels/aot_compile.py TARGET... (cuda:80, cuda:90, hip:gfx942, ...); prints
one JSON object per line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from app.kernels.kv_cache import QuantizedKVCache
from app.kernels.kv_cache import triton as kv_triton
from app.kernels.kv_evict import triton as ev_triton
from app.kernels.quant_linear import quantize_int4, quantize_int8
from app.kernels.quant_linear import triton as ql_triton

_TENSOR_TYPES = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.int8: "*i8",
    torch.uint8: "*u8",
    torch.int32: "*i32",
    torch.int64: "*i64",
}


def _type_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return _TENSOR_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type kernel argument {value!r}")


class _Recorder:
    def __init__(self, kernel: Any, launches: list[tuple[Any, tuple, dict]]) -> None:
        self.kernel = kernel
        self.launches = launches

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.launches.append((self.kernel, args, kwargs))

        return record


@contextmanager
def _recording(launches: list) -> Iterator[None]:
    patched = [
        (ql_triton, "_int8_linear_kernel"),
        (ql_triton, "_int4_linear_kernel"),
        (kv_triton, "_decode_partial_kernel"),
        (kv_triton, "_decode_combine_kernel"),
        (ev_triton, "_compact_kernel"),
        (ev_triton, "_keydiff_kernel"),
    ]
    originals = [(mod, name, getattr(mod, name)) for mod, name in patched]
    for mod, name, kernel in originals:
        setattr(mod, name, _Recorder(kernel, launches))
    try:
        yield
    finally:
        for mod, name, kernel in originals:
            setattr(mod, name, kernel)


def _launch_everything() -> None:
    """Call each wrapper with the variants the app uses (dtypes, GEMV/GEMM, sym/asym, bits...)."""
    w = torch.randn(40, 200)
    q8 = quantize_int8(w)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for m in (1, 5):
            x = torch.randn(m, 200).to(dtype)
            ql_triton.linear_int8(x, q8, torch.randn(40).to(dtype) if m == 1 else None)
    for dtype, m, symmetric, group in (
        (torch.bfloat16, 1, True, 128),
        (torch.bfloat16, 5, False, 32),
        (torch.float16, 5, True, 64),
        (torch.float16, 1, False, 64),
        (torch.float32, 5, False, 64),
    ):
        q4 = quantize_int4(w, group, symmetric)
        ql_triton.linear_int4(torch.randn(m, 200).to(dtype), q4, torch.randn(40).to(dtype))
    for bits, dtype, split in (
        (8, torch.bfloat16, 32),
        (4, torch.float16, None),
        (4, torch.bfloat16, 32),
    ):
        cache = QuantizedKVCache.empty(
            batch=1, n_head_kv=3, head_dim=64, dtype=dtype, bits=bits, group_size=32, residual=32
        )
        cache.append(torch.randn(1, 3, 100, 64).to(dtype), torch.randn(1, 3, 100, 64).to(dtype))
        kv_triton.decode_attention(torch.randn(1, 9, 64).to(dtype), cache, split_tokens=split)
    for dtype in (torch.float16, torch.uint8):
        ev_triton.compact_(
            [torch.zeros(1, 3, 50, 64, dtype=dtype)], torch.arange(20).expand(1, 3, 20)
        )
    keys = torch.randn(1, 3, 50, 64, dtype=torch.bfloat16)
    ev_triton.keydiff_scores(keys)
    ev_triton.keydiff_scores(
        keys.half(), torch.ones(1, 50, dtype=torch.bool), normalized_anchor=False
    )


def _sources(launches: list) -> list[tuple[str, ASTSource]]:
    seen: set[str] = set()
    out = []
    for kernel, args, kwargs in launches:
        names = kernel.arg_names
        signature = {name: _type_of(value) for name, value in zip(names, args, strict=False)}
        signature.update({name: "constexpr" for name in kwargs})
        key = f"{kernel.fn.__name__}{sorted(signature.items())}{sorted(map(str, kwargs.items()))}"
        if key in seen:
            continue
        seen.add(key)
        constexprs = {(names.index(name),): value for name, value in kwargs.items()}
        consts = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        label = f"{kernel.fn.__name__}({consts}; {signature[names[0]]})"
        out.append((label, ASTSource(fn=kernel, signature=signature, constexprs=constexprs)))
    return out


def _target(spec: str) -> GPUTarget:
    backend, arch = spec.split(":")
    if backend == "cuda":
        return GPUTarget("cuda", int(arch), 32)
    return GPUTarget("hip", arch, 64 if arch.startswith("gfx9") else 32)


def _ptxas_usage(ptx: str, arch: int) -> dict[str, int]:
    """Registers and spill bytes as reported by the ptxas that Triton itself uses for ``arch``."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        gpu = f"sm_{arch}{'a' if arch == 90 else ''}"
        proc = subprocess.run(
            [ptxas, "-v", f"--gpu-name={gpu}", str(src), "-o", str(Path(tmp) / "k.o")],
            capture_output=True,
            text=True,
            check=True,
        )
    regs = re.search(r"Used (\d+) registers", proc.stderr)
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", proc.stderr)
    return {"registers": int(regs.group(1)) if regs else -1, "spill_bytes": sum(map(int, spills))}


def main(targets: list[str]) -> int:
    launches: list = []
    with _recording(launches):
        _launch_everything()
    for label, source in _sources(launches):
        for spec in targets:
            start = time.perf_counter()
            try:
                compiled = triton.compile(source, target=_target(spec))
            except Exception as exc:  # noqa: BLE001 - every failure is reported, the test asserts
                error = f"{type(exc).__name__}: {exc}"[:2000]
                result = {"kernel": label, "target": spec, "ok": False, "error": error}
            else:
                binary = "cubin" if spec.startswith("cuda") else "hsaco"
                result = {
                    "kernel": label,
                    "target": spec,
                    "ok": bool(compiled.asm.get(binary)),
                    "shared_bytes": int(compiled.metadata.shared),
                }
                if spec.startswith("cuda"):
                    result.update(_ptxas_usage(compiled.asm["ptx"], int(spec.split(":")[1])))
            result["seconds"] = round(time.perf_counter() - start, 2)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
