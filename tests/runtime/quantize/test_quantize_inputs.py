"""Bad input, cancel, disk space and the importance matrix: clear errors, nothing half-written."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from app.runtime.jobs import JobStopped
from app.runtime.protocol import ErrorKind, JobStatus, RuntimeFailure
from app.runtime.quantize import gguf as qgguf
from app.runtime.quantize import pipeline, safety


def _fixture_module() -> Any:
    if "quantize_fixture" not in sys.modules:
        spec = importlib.util.spec_from_file_location("quantize_fixture", Path(__file__).with_name("quantize_fixture.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["quantize_fixture"] = module
        spec.loader.exec_module(module)
    return sys.modules["quantize_fixture"]


qf = _fixture_module()


def _fails(source: Path, out: Path, kind: ErrorKind, words: str, targets: list[str] | None = None) -> RuntimeFailure:
    with pytest.raises(RuntimeFailure) as caught:
        pipeline.run(source, targets or ["Q8_0"], output_dir=out, evaluate=False, state=qf.Recorder(), imatrix="none")
    assert caught.value.kind is kind, caught.value.message
    assert words in caught.value.message, caught.value.message
    assert not out.exists() or list(out.iterdir()) == [], "something was left in the output folder"
    return caught.value


def test_truncated_gguf(model_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with model_path.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(20 * 2**20))  # the header and a fifth of the tensors
    _fails(cut, tmp_path / "out", ErrorKind.MODEL_INVALID, "truncated")


def test_text_file_named_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_text("These are my notes, not a model.\n" * 50)
    _fails(fake, tmp_path / "out", ErrorKind.MODEL_INVALID, "not a GGUF model file")


def test_hf_folder_without_weights(smollm2_hf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(smollm2_hf / name, folder / name)
    _fails(folder, tmp_path / "out", ErrorKind.MODEL_INVALID, "no .safetensors weights")
    # a sharded model whose index names a shard that never arrived
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))
    _fails(folder, tmp_path / "out", ErrorKind.MODEL_INVALID, "model-00002-of-00002.safetensors")


def test_truncated_safetensors(smollm2_hf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy2(smollm2_hf / "config.json", folder / "config.json")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0, 4 * 1024 * 1024]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 1000)
    _fails(folder, tmp_path / "out", ErrorKind.MODEL_INVALID, "truncated")


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _fails(tmp_path / "empty", tmp_path / "out", ErrorKind.MODEL_INVALID, "config.json")


def test_unknown_target_and_imatrix_types(model_path: Path, tmp_path: Path) -> None:
    _fails(model_path, tmp_path / "out", ErrorKind.INVALID_PARAMS, "Unknown quantization target", ["Q9_X"])
    _fails(model_path, tmp_path / "out", ErrorKind.INVALID_PARAMS, "IQ2_XS needs an importance matrix", ["IQ2_XS"])  # with imatrix none
    with pytest.raises(RuntimeFailure, match="There is no importance matrix file"):
        pipeline.run(model_path, ["Q4_K_M"], output_dir=tmp_path / "out", evaluate=False, state=qf.Recorder(), imatrix=str(tmp_path / "missing.gguf"))
    with pytest.raises(RuntimeFailure, match="Unknown torch quantization method"):
        pipeline.run(model_path, ["int8"], output_dir=tmp_path / "out", evaluate=False, state=qf.Recorder(), torch_method="awq")


def test_quantized_source_is_allowed_with_a_warning(model_path: Path) -> None:
    source = safety.inspect_source(model_path)
    assert source.quantized and source.file_type == "Q4_1"
    assert any("already quantized" in w for w in source.warnings)


def test_not_enough_space_is_refused_before_writing(smollm2_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real full disk cannot be made here without root; the free-space probe is the one thing faked.
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(safety.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 50 * 2**20, 50 * 2**20))
    _fails(smollm2_hf, tmp_path / "out", ErrorKind.DISK_FULL, "Not enough disk space")


def test_enospc_is_recognised() -> None:
    import errno

    assert safety.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert safety.is_disk_full("OSError: [Errno 28] No space left on device")
    assert not safety.is_disk_full(OSError(errno.EACCES, "Permission denied"))


@pytest.mark.parametrize("pause", [False, True], ids=["cancel", "pause"])
def test_cancel_or_pause_mid_quantize_leaves_nothing(model_path: Path, tmp_path: Path, pause: bool) -> None:
    """A quantization keeps nothing to resume from: a pause is a cancel, and either removes it all.
    (The source is the embedded Q4_1 model, requantized: the same child job, without the minutes
    the shared F16 run costs.)"""
    out = tmp_path / "out"
    state = qf.Recorder(cancel_when=lambda e: e["stage"] == "quantize" and (e.get("done") or 0) >= 20, pause=pause)
    with pytest.raises(JobStopped) as caught:
        pipeline.run(model_path, ["Q8_0", "Q4_K_M"], output_dir=out, evaluate=False, state=state, imatrix="none")
    assert caught.value.status is JobStatus.CANCELLED
    assert "nothing was added to the library" in caught.value.message
    seen = [e for e in state.events if e["stage"] == "quantize" and e.get("done")]
    assert seen and max(e["done"] for e in seen) < seen[0]["total"], "the cancel came after the quantization had finished"
    assert list(out.iterdir()) == []  # no hidden work folder, no .part file, no finished Q8_0 either
    assert not [p for p in psutil.Process().children(recursive=True) if "--child" in p.cmdline()]


@pytest.mark.slow
def test_importance_matrix_reaches_llama_cpp(smollm2_hf: Path, tmp_path: Path) -> None:
    import gguf

    f16 = qf.f16_gguf(smollm2_hf)
    reader = gguf.GGUFReader(f16)
    imatrix = tmp_path / "imatrix.gguf"
    writer = gguf.GGUFWriter(imatrix, arch="imatrix")
    names = [t.name for t in reader.tensors if len(t.shape) >= 2 and t.name != "token_embd.weight"]
    for t in reader.tensors:
        if t.name in names:
            writer.add_tensor(t.name + ".in_sum2", np.full((1, int(t.shape[0])), 4.0, np.float32))
            writer.add_tensor(t.name + ".counts", np.full((1, 1), 2.0, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    state = qf.Recorder()
    out = qgguf.quantize_gguf(f16, tmp_path / "with-imatrix.gguf", "Q4_K_M", state=state, imatrix=imatrix)
    assert safety.verify_gguf(out) == 272
    assert any(f"importance matrix data with {len(names)} entries" in line for line in state.logs), state.logs
