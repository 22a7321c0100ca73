"""Hearth's importance matrix: measured on the real SmolLM2, checked against the model's GGUF
tensors and an independent computation, written in llama-imatrix's GGUF format, and files made
the way llama-imatrix makes them (GGUF and the older .dat) read back."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from app.runtime.quantize import imatrix as im
from app.runtime.quantize.child import load_imatrix
from app.runtime.quantize.imatrix_file import Entry, Imatrix, ImatrixFormatError, read_imatrix, write_imatrix

CHUNKS, CHUNK_SIZE = 2, 256  # 512 tokens: a small measurement keeps the test cheap; the format is the same
LAYER = 5


@pytest.fixture(scope="module")
def measured(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    imatrix = im.measure(smollm2_hf, chunks=CHUNKS, chunk_size=CHUNK_SIZE, device="cpu")
    path = write_imatrix(tmp_path_factory.mktemp("imatrix") / "smollm2.imatrix.gguf", imatrix)
    return {"imatrix": imatrix, "path": path}


@pytest.mark.slow
def test_names_shapes_and_counts_match_the_model(measured: dict[str, Any], model_path: Path) -> None:
    model = gguf.GGUFReader(model_path)
    matrices = {t.name: [int(d) for d in t.shape] for t in model.tensors if len(t.shape) == 2}
    # llama-imatrix's entries: every matmul weight of the blocks; not token_embd (a lookup), and no
    # output.weight: SmolLM2's head is tied to the embedding, so the GGUF has none
    assert "output.weight" not in matrices
    expected = {name for name in matrices if name.startswith("blk.")}
    assert len(expected) == 30 * 7

    reader = gguf.GGUFReader(measured["path"])  # the file as any GGUF tool sees it
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.type"] == "imatrix"
    assert "general.architecture" not in fields
    assert fields["imatrix.chunk_count"] == CHUNKS and fields["imatrix.chunk_size"] == CHUNK_SIZE
    assert fields["imatrix.datasets"] == [im.SHIPPED_DATASET]
    tensors = {t.name: t for t in reader.tensors}
    assert {n.removesuffix(".in_sum2") for n in tensors if n.endswith(".in_sum2")} == expected
    for name in expected:
        sum2, counts = tensors[name + ".in_sum2"], tensors[name + ".counts"]
        assert sum2.tensor_type == counts.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(d) for d in sum2.shape] == [matrices[name][0], 1]  # one value per input column
        assert [int(d) for d in counts.shape] == [1, 1]
        assert float(counts.data.reshape(-1)[0]) == CHUNKS * CHUNK_SIZE  # every token's row, once
        assert np.all(np.asarray(sum2.data) > 0)


@pytest.mark.slow
def test_one_layer_against_an_independent_computation(measured: dict[str, Any], smollm2_hf: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.runtime.texts import long_text

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    ids = tokenizer(long_text()[: CHUNKS * CHUNK_SIZE * 8], add_special_tokens=False)["input_ids"]
    total = np.zeros(model.config.hidden_size)
    with torch.inference_mode():
        for i in range(CHUNKS):
            chunk = torch.tensor([ids[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]])
            hidden = model(chunk, output_hidden_states=True).hidden_states[LAYER]  # the input of block LAYER
            x = model.model.layers[LAYER].input_layernorm(hidden)[0].double()  # what q/k/v multiply
            total += (x * x).sum(dim=0).numpy()
    for proj in ("attn_q", "attn_k", "attn_v"):
        ours = measured["imatrix"].entries[f"blk.{LAYER}.{proj}.weight"].sum2[0]
        np.testing.assert_allclose(ours, total, rtol=1e-2)
    means = load_imatrix(measured["path"])  # what the quantize child hands llama.cpp
    np.testing.assert_allclose(means[f"blk.{LAYER}.attn_q.weight"], total / (CHUNKS * CHUNK_SIZE), rtol=1e-2)


def test_round_trip_through_the_gguf_package(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    original = Imatrix(
        {
            "blk.0.attn_q.weight": Entry(rng.random((1, 64)), [512.0], rng.standard_normal((1, 64))),
            "blk.1.ffn_down_exps.weight": Entry(rng.random((4, 32)), [300.0, 0.0, 12.0, 200.0]),
        },
        ["calibration.txt"],
        3,
        512,
    )
    path = write_imatrix(tmp_path / "m.gguf", original)
    reader = gguf.GGUFReader(path)
    shapes = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    assert shapes == {
        "blk.0.attn_q.weight.in_sum2": [64, 1], "blk.0.attn_q.weight.counts": [1, 1], "blk.0.attn_q.weight.in_sum": [64, 1],
        "blk.1.ffn_down_exps.weight.in_sum2": [32, 4], "blk.1.ffn_down_exps.weight.counts": [1, 4],
    }
    back = read_imatrix(path)
    assert back.datasets == ["calibration.txt"] and back.chunk_count == 3 and back.chunk_size == 512
    for name, entry in original.entries.items():
        np.testing.assert_array_equal(back.entries[name].sum2, entry.sum2)
        np.testing.assert_array_equal(back.entries[name].counts, entry.counts)
    np.testing.assert_array_equal(load_imatrix(path)["blk.0.attn_q.weight"], original.entries["blk.0.attn_q.weight"].means())
    experts = back.entries["blk.1.ffn_down_exps.weight"].means().reshape(4, 32)
    assert np.all(experts[1] == 1.0)  # an expert never routed to: equal weights, as llama.cpp's quantize does
    np.testing.assert_allclose(experts[2], original.entries["blk.1.ffn_down_exps.weight"].sum2[2] / 12.0, rtol=1e-6)


def test_reads_a_llama_imatrix_gguf(tmp_path: Path) -> None:
    """Made the way llama-imatrix writes its file: no architecture key, sorted names, in_sum2 /
    counts / in_sum per weight, and a 3-expert entry."""
    path = tmp_path / "imatrix.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.kv_data[0].pop("general.architecture")
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", ["wiki.train.raw"])
    writer.add_uint32("imatrix.chunk_count", 10)
    writer.add_uint32("imatrix.chunk_size", 512)
    dense = np.arange(1, 9, dtype=np.float32) * 5120.0
    experts = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    writer.add_tensor("blk.0.ffn_down_exps.weight.in_sum2", experts)
    writer.add_tensor("blk.0.ffn_down_exps.weight.counts", np.array([[10.0], [20.0], [0.0]], np.float32))
    writer.add_tensor("blk.0.ffn_down_exps.weight.in_sum", np.zeros((3, 4), np.float32))
    writer.add_tensor("blk.0.attn_q.weight.in_sum2", dense.reshape(1, 8))
    writer.add_tensor("blk.0.attn_q.weight.counts", np.array([[5120.0]], np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    read = read_imatrix(path)
    assert read.datasets == ["wiki.train.raw"] and read.chunk_count == 10
    np.testing.assert_allclose(read.entries["blk.0.attn_q.weight"].means(), np.arange(1, 9))
    np.testing.assert_allclose(read.entries["blk.0.ffn_down_exps.weight"].means(), [0.1, 0.2, 0.3, 0.4, 0.25, 0.3, 0.35, 0.4, 1, 1, 1, 1])
    np.testing.assert_allclose(load_imatrix(path)["blk.0.attn_q.weight"], np.arange(1, 9))


def _legacy_dat(path: Path, entries: dict[str, tuple[int, list[float]]], last_chunk: int, dataset: str) -> None:
    """The pre-GGUF llama-imatrix file: mean squares x ncall per entry, then chunks and dataset."""
    out = struct.pack("<i", len(entries))
    for name, (ncall, values) in entries.items():
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values)) + struct.pack(f"<{len(values)}f", *values)
    out += struct.pack("<i", last_chunk) + struct.pack("<i", len(dataset)) + dataset.encode()
    path.write_bytes(out)


def test_reads_a_legacy_dat_file(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.dat"
    _legacy_dat(path, {"blk.0.attn_k.weight": (4, [4.0, 8.0, 2.0]), "blk.0.ffn_up.weight": (4, [1.0, 3.0])}, 4, "calibration.txt")
    read = read_imatrix(path)
    assert read.datasets == ["calibration.txt"] and read.chunk_count == 4
    np.testing.assert_allclose(read.entries["blk.0.attn_k.weight"].means(), [1.0, 2.0, 0.5])
    np.testing.assert_allclose(read.entries["blk.0.ffn_up.weight"].means(), [0.25, 0.75])
    # and back out as GGUF, which the quantize child reads
    np.testing.assert_allclose(load_imatrix(write_imatrix(tmp_path / "converted.gguf", read))["blk.0.attn_k.weight"], [1.0, 2.0, 0.5])


def test_garbage_is_refused_in_words(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not an importance matrix at all\n" * 10)
    with pytest.raises(ImatrixFormatError, match="neither a GGUF nor"):
        read_imatrix(path)
    model_like = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(model_like, arch="llama")
    writer.add_tensor("blk.0.attn_q.weight", np.ones((2, 2), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ImatrixFormatError, match="no importance-matrix entries"):
        read_imatrix(model_like)


def test_the_cache_key_follows_the_model_file_and_the_calibration(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 100)
    data = tmp_path / "text.txt"
    data.write_text("calibration", encoding="utf-8")
    key = im.cache_key(model)
    assert im.cache_key(model) == key
    assert im.cache_key(model, chunks=16) != key
    assert im.cache_key(model, data=data) != key
    os.utime(model, ns=(1, 1))
    assert im.cache_key(model) != key
    cached = im.cached_path(model)
    assert cached.name.startswith("m-") and cached.name.endswith(".imatrix.gguf")
    write_imatrix(cached, Imatrix({"blk.0.attn_q.weight": Entry(np.ones((1, 4)), [1.0])}, ["x"], 1, 512))
    assert im.cached_imatrix(model, ctx=None) == cached  # found: no child is started


def test_calibration_text_is_not_the_evaluation_text() -> None:
    from app.runtime.quantize.evaluate import held_out_text

    text, name = im.read_calibration(None)
    assert name == im.SHIPPED_DATASET
    assert text[:2000] not in held_out_text() and held_out_text()[:2000] not in text


def test_too_short_a_text_is_refused(smollm2_hf: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from app.runtime.protocol import RuntimeFailure

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    with pytest.raises(RuntimeFailure, match="needs at least 512"):
        im.calibration_chunks(tokenizer, "Only a few words.", 8)
    chunks = im.calibration_chunks(tokenizer, (tmp_path / "x").as_posix() + " word" * 3000, 100, 512)
    assert 1 <= len(chunks) < 100 and all(len(c) == 512 for c in chunks)


@pytest.mark.slow
def test_compute_imatrix_is_a_child_job_that_cancels_cleanly(smollm2_hf: Path, tmp_path: Path) -> None:
    """Through `hearth --child imatrix`: progress in chunks, a cancel kills the child and leaves no
    file, a finished run leaves exactly the named file."""
    import importlib.util
    import sys

    import psutil

    from app.runtime.jobs import JobStopped

    if "quantize_fixture" not in sys.modules:
        spec = importlib.util.spec_from_file_location("quantize_fixture", Path(__file__).with_name("quantize_fixture.py"))
        assert spec is not None and spec.loader is not None
        sys.modules["quantize_fixture"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["quantize_fixture"])
    qf = sys.modules["quantize_fixture"]

    out = tmp_path / "smollm2.imatrix.gguf"
    cancelling = qf.Recorder(cancel_when=lambda r: r.get("stage") == "imatrix" and r.get("done") == 1)
    with pytest.raises(JobStopped):
        im.compute_imatrix(smollm2_hf, out, chunks=3, ctx=cancelling)
    assert list(tmp_path.iterdir()) == []
    assert not [p for p in psutil.Process().children(recursive=True) if "--child" in p.cmdline()]

    state = qf.Recorder()
    result = im.compute_imatrix(smollm2_hf, out, chunks=1, ctx=state)
    assert result["entries"] == 210 and result["tokens"] == im.CHUNK_SIZE and result["out"] == str(out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert any(e["stage"] == "imatrix" and e.get("done") == 1 and e.get("unit") == "chunks" for e in state.events)
    assert len(load_imatrix(out)) == 210


@pytest.mark.slow
def test_hearth_imatrix_then_quantize_with_it(smollm2_hf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`hearth imatrix` (the quantize.imatrix method, a child job) writes a file that
    `hearth quantize --imatrix FILE` hands llama.cpp; the report says which result used it."""
    import importlib.util
    import json
    import sys

    from app.cli import main

    out = tmp_path / "smollm2.imatrix.gguf"
    assert main(["imatrix", str(smollm2_hf), "--chunks", "1", "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(out) and result["entries"] == 210 and result["tokens"] == im.CHUNK_SIZE and not result["cached"]
    assert read_imatrix(out).chunk_count == 1 and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert main(["imatrix", str(smollm2_hf), "--data", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.gguf")]) == 1
    assert "no calibration text" in capsys.readouterr().err

    if "quantize_fixture" not in sys.modules:
        spec = importlib.util.spec_from_file_location("quantize_fixture", Path(__file__).with_name("quantize_fixture.py"))
        assert spec is not None and spec.loader is not None
        sys.modules["quantize_fixture"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["quantize_fixture"])
    f16 = sys.modules["quantize_fixture"].f16_gguf(smollm2_hf)
    results = tmp_path / "results"
    assert main(["quantize", str(f16), "--to", "Q4_K_M,Q8_0", "--imatrix", str(out), "--output", str(results)]) == 0
    text = capsys.readouterr().out
    assert "MADE BY" in text and "llama.cpp + imatrix" in text and f"Importance matrix (given): {out}" in text
    assert main(["quantize", str(f16), "--to", "IQ2_XS", "--imatrix", "none", "--output", str(results)]) == 1
    assert "IQ2_XS needs an importance matrix" in capsys.readouterr().err
