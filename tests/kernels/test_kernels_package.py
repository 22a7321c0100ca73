"""Package-level checks: layering, the CUDA sources (if any) compile, the bench returns its keys."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from app.kernels.bench import run_kernel_bench

KERNELS = Path(__file__).resolve().parents[2] / "app" / "kernels"
# Modules allowed to import triton at their top: they are only imported on the Triton path.
TRITON_MODULES = {"triton.py", "_triton_util.py", "_triton_probe.py"}
CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, level) for every import in a file; level > 0 is relative."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_kernels_import_nothing_else_from_app_and_no_qt() -> None:
    for path in KERNELS.rglob("*.py"):
        depth = len(path.relative_to(KERNELS).parts) - 1  # 0 for app/kernels/x.py
        for module, level in _imports(path):
            assert not module.startswith("PySide6"), f"{path.name} imports {module}"
            if level == 0:
                assert not module.startswith("app") or module.startswith("app.kernels"), (
                    f"{path} imports {module}"
                )
            else:
                assert level <= depth + 1, (
                    f"{path} reaches outside app/kernels with a relative import"
                )
            if module.split(".")[0] == "triton" and level == 0:
                assert path.name in TRITON_MODULES, f"{path} imports triton outside the Triton path"


def test_cuda_sources_compile_for_every_target(tmp_path: Path) -> None:
    sources = sorted(KERNELS.rglob("*.cu"))
    if not sources:
        pytest.skip("no .cu files: every kernel is written in Triton, which expresses all of them")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed, so the CUDA sources cannot be compiled here")
    for source in sources:
        for arch in CUDA_ARCHS:
            out = tmp_path / f"{source.stem}-{arch}.o"
            proc = subprocess.run(
                [nvcc, f"-arch={arch}", "-c", str(source), "-o", str(out)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, f"{source.name} for {arch}:\n{proc.stderr}"


def test_bench_returns_its_keys_on_tiny_shapes() -> None:
    result = run_kernel_bench(shapes=[(40, 64)], min_time_s=0.0)
    json.dumps(result)
    assert {"device", "dtype", "batch", "int4_group_size", "kernel_path", "shapes"} <= set(result)
    (entry,) = result["shapes"]
    assert entry["out_features"] == 40 and entry["in_features"] == 64
    assert "us" in entry["dense"] and "gb_per_s" in entry["dense"]
    for kind, alt in (("int8", "torch_int8pack_mm"), ("int4", "torch_int4pack_mm")):
        block = entry[kind]
        assert {"bytes_read", "reference", alt, "triton"} <= set(block)
        assert "us" in block["reference"] and block["reference"]["max_abs_diff"] == 0.0
