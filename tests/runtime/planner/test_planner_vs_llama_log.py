"""The planner's pre-load estimates against the buffer sizes llama.cpp logs when it really loads.

The plan is made for the named ``cpu-16gb`` profile, not for whatever this machine has: what is
compared is a CPU-only load's "CPU ... buffer" lines (skipped, saying why, where llama.cpp here
would use a GPU).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from app.runtime import library, planner

MiB = 2**20
LOAD_AND_LOG = """
import json, sys, llama_cpp
kwargs = json.loads(sys.argv[2])
llama_cpp.Llama(sys.argv[1], **kwargs, verbose=True)
"""
LINES = {
    "weights": re.compile(r"CPU(?:_Mapped)? model buffer size =\s+([\d.]+) MiB"),
    "kv": re.compile(r"CPU KV buffer size =\s+([\d.]+) MiB"),
    "compute": re.compile(r"CPU compute buffer size =\s+([\d.]+) MiB"),
}


@pytest.mark.parametrize("n_ctx", [512, 2048, 8192])
@pytest.mark.parametrize(("kv_type", "flash"), [("f16", False), ("q8_0", True)])
@pytest.mark.usefixtures("llama_cpp_on_the_cpu")
def test_estimates_within_10_percent_of_a_real_load(n_ctx: int, kv_type: str, flash: bool) -> None:
    model = library.read_gguf(library.embedded_model_path(), source="embedded")
    prefs = planner.UserPrefs(context_length=n_ctx, kv_type=kv_type, flash_attention=flash, threads=2)
    made = planner.plan(model, planner.load_profile("cpu-16gb"), prefs)  # estimated before anything touches llama.cpp
    (estimate,) = made.memory.value["devices"]  # the CPU, and only the CPU
    assert estimate["device"] == "cpu" and made.gpu_layers.value["n_gpu_layers"] == 0
    kwargs = planner.llama_cpp_kwargs(made)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_LOG, model.path, json.dumps(kwargs)], capture_output=True, text=True, timeout=120, check=True
    )
    for key, pattern in LINES.items():
        found = pattern.search(done.stderr)
        assert found, f"llama.cpp's log has no {key} buffer line:\n{done.stderr[-2000:]}"
        measured = float(found.group(1)) * MiB
        assert abs(estimate[key] - measured) <= 0.10 * measured, f"{key}: estimated {estimate[key] / MiB:.2f} MiB, llama.cpp {measured / MiB:.2f} MiB"
