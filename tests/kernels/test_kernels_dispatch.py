"""The dispatcher: its choice on this machine (with or without a GPU, as the hardware probe finds
it), the pure decision with fake hardware, describe(), and the public functions driven through the
Triton kernels when Triton is forced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app import kernels
from app.kernels import dispatch
from app.kernels.kv_cache import QuantizedKVCache
from app.kernels.kv_cache import reference as kv_reference
from app.kernels.kv_evict import reference as ev_reference
from app.kernels.quant_linear import reference as ql_reference
from app.runtime.hardware import Hardware

ROOT = Path(__file__).resolve().parents[2]
GPU = "CUDA GPU 0: NVIDIA GeForce RTX 3060 (capability 8.6)"


def test_choice_on_this_machine(monkeypatch: pytest.MonkeyPatch, fresh_dispatch: None, hardware_here: Hardware) -> None:
    monkeypatch.delenv("HEARTH_KERNELS", raising=False)
    dispatch.reset()
    c = dispatch.choice()
    # The project's probe asks torch.cuda here (torch is loaded), so it sees the CUDA or ROCm GPUs
    # the dispatcher can use; an Apple GPU is Metal's, which the kernels do not target.
    gpus = [g.name for g in hardware_here.gpus if g.vendor in ("nvidia", "amd")]
    if not gpus:
        assert c.path == "torch"
        assert "no CUDA or ROCm GPU" in c.reason
        assert c.device is None
    else:
        assert c.device is not None and any(name in c.device for name in gpus), (c.device, gpus)
        if c.path == "triton":
            assert c.reason == f"Triton compiled and ran a test kernel on {c.device}"
        else:  # a GPU without a working Triton: the reason names the GPU and the error
            assert c.reason.startswith(f"Triton cannot run on {c.device}: "), c.reason
    assert not c.interpret  # the interpreter only ever runs when asked for (HEARTH_KERNELS=triton)
    for name in dispatch.OPS:  # CPU tensors take the reference on either path
        assert dispatch.resolve(name, torch.device("cpu")).__module__.endswith(".reference") or (
            name == "kv_append"
        )


def test_describe_is_json_and_says_why(fresh_dispatch: None) -> None:
    info = kernels.describe()
    json.dumps(info)
    assert {"path", "reason", "device", "triton_version", "ops"} <= set(info)
    assert set(info["ops"]) == set(dispatch.OPS)
    for op in info["ops"].values():
        assert op["path"] in ("torch", "triton") and op["implementation"].startswith("app.kernels.")


def test_import_and_describe_do_not_import_triton_without_a_gpu() -> None:
    code = (
        "import sys, json, app.kernels as k; d = k.describe(); "
        "print(json.dumps({'triton': 'triton' in sys.modules, 'qt': any(m.startswith('PySide6') "
        "for m in sys.modules), 'path': d['path']}))"
    )
    env = {
        key: val
        for key, val in os.environ.items()
        if key not in ("TRITON_INTERPRET", "HEARTH_KERNELS")
    }
    env["CUDA_VISIBLE_DEVICES"] = env["HIP_VISIBLE_DEVICES"] = ""  # a machine without a GPU, here too
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"triton": False, "qt": False, "path": "torch"}


@pytest.mark.parametrize(
    ("override", "gpu", "interpret", "error", "path", "words"),
    [
        ("auto", GPU, False, None, "triton", "RTX 3060"),
        ("auto", GPU, False, "RuntimeError: Failed to find C compiler", "torch", "C compiler"),
        ("auto", None, False, None, "torch", "no CUDA or ROCm GPU"),
        ("auto", None, True, None, "torch", "no CUDA or ROCm GPU"),  # interpreter alone: not used
        ("torch", GPU, False, None, "torch", "HEARTH_KERNELS=torch"),
        ("triton", None, False, None, "torch", "TRITON_INTERPRET=1"),
        ("triton", None, True, None, "triton", "interpreter"),
        ("triton", None, True, "ImportError: no triton", "torch", "no triton"),
        ("fast", GPU, False, None, "torch", "not one of"),
    ],
)
def test_choose_path_with_fake_hardware(override, gpu, interpret, error, path, words) -> None:
    got, reason = dispatch.choose_path(
        override=override, gpu=gpu, interpret=interpret, triton_error=error
    )
    assert got == path
    assert words in reason


def test_override_torch(monkeypatch: pytest.MonkeyPatch, fresh_dispatch: None) -> None:
    monkeypatch.setenv("HEARTH_KERNELS", "torch")
    dispatch.reset()
    assert dispatch.choice().path == "torch"
    assert kernels.describe()["override"] == "torch"


def test_forced_triton_runs_the_kernels_through_the_public_functions(
    force_triton: None, check_error
) -> None:
    info = kernels.describe()
    assert info["path"] == "triton" and info["interpreter"]
    assert info["ops"]["int4_linear"]["implementation"].endswith("quant_linear.triton:linear_int4")
    assert info["ops"]["kv_append"]["path"] == "torch"
    cpu = torch.device("cpu")
    assert dispatch.resolve("int8_linear", cpu).__module__.endswith("quant_linear.triton")

    w = torch.randn(19, 70) / 70**0.5
    x = torch.randn(1, 70, dtype=torch.float16)
    for q in (kernels.quantize_int8(w), kernels.quantize_int4(w, 32, symmetric=False)):
        ref = (
            ql_reference.linear_int8
            if isinstance(q, kernels.Int8Weight)
            else ql_reference.linear_int4
        )
        check_error(
            kernels.linear(x, q),
            torch.nn.functional.linear(x, kernels.dequantize(q, x.dtype)),
            ref(x.double(), q),
        )

    cache = QuantizedKVCache.empty(
        batch=1, n_head_kv=1, head_dim=16, dtype=torch.float32, group_size=16, residual=4
    )
    cache.append(torch.randn(1, 1, 23, 16), torch.randn(1, 1, 23, 16))
    q = torch.randn(1, 2, 16)
    torch.testing.assert_close(
        kernels.decode_attention(q, cache), kv_reference.decode_attention(q, cache)
    )

    k = torch.randn(1, 2, 20, 8)
    keep = torch.tensor([[[0, 3, 7, 19], [1, 2, 5, 6]]])
    want = k.clone()
    ev_reference.compact_([want], keep)
    assert kernels.compact_([k], keep) == 4 and torch.equal(k, want)
    torch.testing.assert_close(kernels.keydiff_scores(k), ev_reference.keydiff_scores(k))
