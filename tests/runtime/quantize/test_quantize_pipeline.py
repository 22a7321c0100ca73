"""The whole pipeline on the real model: Q4_1 GGUF -> HF folder -> F16 GGUF -> Q8_0 and Q4_K_M,
measured against F16; each result loads and chats; torch int8 against the fp32 source."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from app.runtime import library
from app.runtime.backends.llama_cpp import LlamaCppBackend
from app.runtime.protocol import Sampling
from app.runtime.quantize import pipeline


def _fixture_module() -> Any:
    if "quantize_fixture" not in sys.modules:
        spec = importlib.util.spec_from_file_location("quantize_fixture", Path(__file__).with_name("quantize_fixture.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["quantize_fixture"] = module
        spec.loader.exec_module(module)
    return sys.modules["quantize_fixture"]


qf = _fixture_module()
EVAL_TOKENS = qf.EVAL_TOKENS
# The shared run is the whole pipeline (HF conversion, three evaluations): about a minute on an idle
# machine, several on a busy one; the first test's setup pays for it.


@pytest.fixture(scope="module")
def run(smollm2_hf: Path) -> tuple[dict[str, Any], Path, Any]:
    return qf.pipeline_run(smollm2_hf)


def _row(report: dict[str, Any], target: str) -> dict[str, Any]:
    return next(r for r in report["results"] if r["target"] == target)


@pytest.mark.slow
def test_quality_sizes_and_kl(run: tuple[dict[str, Any], Path, Any]) -> None:
    report, out, _ = run
    f16, q8, q4 = (_row(report, t) for t in ("F16", "Q8_0", "Q4_K_M"))
    assert report["source"]["kind"] == "hf" and report["source"]["name"] == "SmolLM2-135M-Instruct"
    assert report["reference"]["perplexity"] == pytest.approx(f16["perplexity"])
    assert f16["tokens"] == q8["tokens"] == q4["tokens"] >= EVAL_TOKENS
    # Q8_0 is practically lossless; Q4_K_M costs more; both are reported against F16
    assert abs(q8["perplexity"] / f16["perplexity"] - 1) < 0.01, (q8["perplexity"], f16["perplexity"])
    assert q4["perplexity"] > q8["perplexity"]
    assert f16["file_size"] > q8["file_size"] > q4["file_size"]
    assert 0 < q8["kl_mean"] < q4["kl_mean"] < 1.0
    assert 0.5 < q4["top1_agreement"] < q8["top1_agreement"] <= 1.0
    assert all(r["decode_tps"] > 0 for r in (f16, q8, q4))
    for row in (f16, q8, q4):  # the estimate the wizard shows is in the right neighbourhood
        assert 0.75 < row["expected_size"] / row["file_size"] < 1.25, row
    # the pick among what was made, judged from this run's own measurements, with its reason
    assert report["recommended"] in ("F16", "Q8_0", "Q4_K_M") and "measured on this model" in report["recommended_reason"]
    assert sum(bool(r.get("recommended")) for r in report["results"]) == 1
    chosen = _row(report, report["recommended"])
    assert chosen["kl_mean"] <= 0.01 and all(r["file_size"] >= chosen["file_size"] for r in (f16, q8, q4) if r["kl_mean"] <= 0.01)


@pytest.mark.slow
def test_each_row_says_how_it_was_made(run: tuple[dict[str, Any], Path, Any]) -> None:
    report, _, state = run
    f16, q8, q4 = (_row(report, t) for t in ("F16", "Q8_0", "Q4_K_M"))
    # auto: an importance matrix for the types of 4 bits or less only
    assert (f16["imatrix"], q8["imatrix"], q4["imatrix"]) == (False, False, True)
    assert {r["algorithm"] for r in (f16, q8, q4)} == {"llama.cpp"}
    imatrix = report["imatrix"]
    assert imatrix["made"] == "measured" and imatrix["chunks"] == qf.CALIBRATION_CHUNKS and Path(imatrix["path"]).is_file()
    assert any(e["stage"] == "imatrix" and e.get("unit") == "chunks" for e in state.events)  # the child job's progress
    assert any("Measuring the importance matrix" in str(e.get("step_title")) for e in state.events)
    assert any("importance matrix data with 210 entries" in line or "importance matrix with 210 entries" in line for line in state.logs), state.logs[-5:]


@pytest.mark.slow
def test_types_that_need_an_imatrix_exist_only_with_one(run: tuple[dict[str, Any], Path, Any], smollm2_hf: Path, tmp_path: Path) -> None:
    from app.runtime.protocol import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="IQ2_XS needs an importance matrix"):
        pipeline.run(smollm2_hf, ["IQ2_XS"], output_dir=tmp_path, evaluate=False, state=qf.Recorder(), imatrix="none")
    assert list(tmp_path.iterdir()) == []
    state = qf.Recorder()
    report = pipeline.run(smollm2_hf, ["IQ2_XS"], output_dir=tmp_path, evaluate=False, state=state, imatrix="auto",
                          calibration_chunks=qf.CALIBRATION_CHUNKS)
    (row,) = report["results"]
    assert row["imatrix"] and Path(row["path"]).is_file() and report["imatrix"]["made"] == "cached"  # the session run's matrix, reused
    assert not any(e["stage"] == "imatrix" for e in state.events)


@pytest.mark.slow
def test_outputs_in_place_and_nothing_else(run: tuple[dict[str, Any], Path, Any]) -> None:
    report, out, _ = run
    assert sorted(p.name for p in out.iterdir()) == [
        "SmolLM2-135M-Instruct.F16.gguf", "SmolLM2-135M-Instruct.Q4_K_M.gguf", "SmolLM2-135M-Instruct.Q8_0.gguf",
    ]  # no hidden work folder, no .part, no reference probabilities left behind
    found = {m.id: m for m in library.scan([out], hf_cache=False)}
    for row in report["results"]:
        assert row["model_id"] in found
        assert found[row["model_id"]].quantization == row["target"]  # read from the file, not the name


@pytest.mark.slow
def test_progress_per_step_and_tensor(run: tuple[dict[str, Any], Path, Any]) -> None:
    _, _, state = run
    steps = [e for e in state.events if e["stage"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, len(steps) + 1)) and steps[0]["steps"] == len(steps)
    tensors = [e for e in state.events if e["stage"] == "quantize" and e.get("done")]
    assert {e["total"] for e in tensors} == {272} and {e["unit"] for e in tensors} == {"tensors"}
    assert any(e["done"] == 272 for e in tensors)
    assert any(e.get("eta_s") is not None for e in tensors)
    assert any(e["stage"] == "convert" and e.get("tensor") for e in state.events)
    assert any(e["stage"] == "evaluate" for e in state.events)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["Q8_0", "Q4_K_M"])
def test_each_result_loads_and_chats(run: tuple[dict[str, Any], Path, Any], target: str) -> None:
    report, _, _ = run
    backend = LlamaCppBackend(_row(report, target)["path"], {"n_ctx": 512, "n_threads": 2})
    try:
        pieces: list[str] = []
        done = backend.chat(
            [{"role": "user", "content": "Name a colour."}],
            Sampling(temperature=0.0, max_tokens=8, seed=1),
            on_token=pieces.append,
            is_cancelled=lambda: False,
        )
    finally:
        backend.close()
    assert done.completion_tokens > 0 and "".join(pieces).strip()


@pytest.mark.slow
def test_torch_int8_within_two_percent(smollm2_hf: Path, tmp_path: Path) -> None:
    from app.runtime.quantize import torch_quant

    state = qf.Recorder()
    report = pipeline.run(smollm2_hf, ["int8"], output_dir=tmp_path, evaluate=True, state=state, eval_tokens=400, calibration_chunks=1)
    row = _row(report, "int8")
    assert row["kind"] == "torch" and abs(row["ppl_change_pct"]) < 2.0, row
    assert row["algorithm"] == "gptq" and row["imatrix"] is False  # GPTQ is the torch targets' default
    assert any(e["stage"] == "gptq" and e.get("unit") == "layers" for e in state.events)
    assert report["recommended"] == "int8" and "int8" in report["recommended_reason"]  # the only result, judged by its measured KL
    assert row["kl_mean"] > 0 and row["decode_tps"] > 0
    folder = Path(row["path"])
    assert folder.parent == tmp_path and [p.name for p in tmp_path.iterdir()] == [folder.name]
    assert torch_quant.read_scheme(folder).name == "int8"  # the scheme is in the metadata
    assert json.loads((folder / "config.json").read_text())["hearth_quantization"]["algorithm"] == "gptq"
    assert (folder / "tokenizer.json").is_file()
