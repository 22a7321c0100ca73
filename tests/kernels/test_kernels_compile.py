"""Every Triton kernel, as the wrappers launch it, compiles for the GPUs Hearth targets.

The interpreter checks what the kernels compute; this checks that they lower to real GPU code:
NVIDIA Turing, Ampere and Hopper (cubin, through the ptxas that ships with Triton) and AMD
CDNA3/RDNA3 (hsaco), with fp16/bf16 tensor-core dots, and that they stay within each target's
shared memory without spilling registers in earnest. Nothing is run, so no GPU is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# One target per code-generation family (sm_80/sm_89 lower like sm_86), in two halves compiled in
# parallel (the test machines have two cores): Turing (no bf16 tensor cores), consumer Ampere (the
# smallest shared memory), Hopper (wgmma), RDNA3 (wave32) and CDNA3 (wave64, MFMA).
TARGETS = (
    ("cuda:75", "cuda:86", "hip:gfx1100"),
    ("cuda:90", "hip:gfx942"),
)
SHARED_LIMIT = {"cuda": 99 * 1024, "hip": 64 * 1024}  # smallest opt-in per-block limit per vendor
MAX_SPILL_BYTES = 64  # a few bytes of spill are noise; hundreds mean a tile is too big


@pytest.mark.slow
def test_every_kernel_compiles_for_nvidia_and_amd_targets(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(
        PYTHONPATH=str(ROOT),
        TRITON_CACHE_DIR=str(tmp_path / "triton-cache"),
        TRITON_DEFAULT_FP_FUSION="1",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "aot_compile.py"), *targets],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for targets in TARGETS
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-4000:]
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    failed = [f"{r['target']} {r['kernel']}: {r.get('error')}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)
    kernels = {r["kernel"].split("(")[0] for r in results}
    assert kernels == {
        "_int8_linear_kernel",
        "_int4_linear_kernel",
        "_decode_partial_kernel",
        "_decode_combine_kernel",
        "_compact_kernel",
        "_keydiff_kernel",
    }
    assert len(results) == len({r["kernel"] for r in results}) * sum(map(len, TARGETS))
    for r in results:
        vendor = r["target"].split(":")[0]
        assert r["shared_bytes"] <= SHARED_LIMIT[vendor], r
        assert r.get("spill_bytes", 0) <= MAX_SPILL_BYTES, r
