"""The measurement store: entries per machine and versions, one file written atomically, the old
files moved in once, the planner fed from it, and `hearth bench --list/--forget`."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest

from app import cli
from app.runtime import hardware
from app.runtime.hardware import Gpu, Hardware
from app.runtime.library import ModelInfo
from app.runtime.measurements import (
    CALIBRATION,
    CPU_DTYPE_SPEED,
    KERNEL_SPEEDUP,
    KV_RANKING,
    RAM_BANDWIDTH,
    FileMeasurementStore,
    Machine,
    MemoryMeasurementStore,
)
from app.runtime.planner import UserPrefs, load_profile, plan
from app.runtime.planner import torch_plan
from app.runtime.planner.measured import calibration as saved_calibration

HERE = Machine("Test CPU 9000", 4, 16 * 2**30, (), None, "0.3.16", "2.9.0")
HW = Hardware(cpu_name="Test CPU 9000", cpu_cores_physical=4, cpu_cores_logical=8, simd=("avx2",), ram_total=16 * 2**30,
              ram_available=12 * 2**30, ram_bandwidth=20 * 10**9, disk_free=10**12)
TORCH = UserPrefs(backend="torch")
TINY = ModelInfo(id="tiny", name="tiny", path="/tiny", format="hf", source="folder", file_size=1, architecture="llama",
                 parameters=135_000_000, quantization=None, context_length=2048, n_layers=30, n_embd=576, n_head=9, n_head_kv=3, head_dim=64,
                 vocab_size=49152, has_chat_template=True)


def test_an_entry_from_another_machine_or_older_versions_is_stale_and_ignored_but_listed() -> None:
    store = MemoryMeasurementStore(HERE)
    store.put(RAM_BANDWIDTH, {"bytes_per_s": 123})
    upgraded = MemoryMeasurementStore(dataclasses.replace(HERE, llama_cpp="0.4.0"), store.entries())
    elsewhere = MemoryMeasurementStore(dataclasses.replace(HERE, gpus=("NVIDIA GeForce RTX 3060",), driver="550.54"), store.entries())
    assert store.get(RAM_BANDWIDTH) == {"bytes_per_s": 123}
    assert upgraded.get(RAM_BANDWIDTH) is None and elsewhere.get(RAM_BANDWIDTH) is None
    [listed] = upgraded.entries()
    assert listed.stale and listed.why_stale == ("llama_cpp",) and listed.value == {"bytes_per_s": 123}
    assert elsewhere.entries()[0].why_stale == ("gpus", "driver")
    assert not store.entries()[0].stale and store.entries()[0].taken[:4].isdigit()


def test_put_replaces_this_machines_entry_keeps_the_others_and_forget_clears_a_kind_or_all() -> None:
    store = MemoryMeasurementStore(HERE)
    store.put(CPU_DTYPE_SPEED, {"float32": 1.0}, key="10x20")
    store.put(CPU_DTYPE_SPEED, {"float32": 2.0}, key="10x20")
    store.put(CPU_DTYPE_SPEED, {"float32": 3.0}, key="30x40")
    store.put(RAM_BANDWIDTH, {"bytes_per_s": 1})
    other = MemoryMeasurementStore(dataclasses.replace(HERE, cpu="Other"), store.entries())
    other.put(RAM_BANDWIDTH, {"bytes_per_s": 2})
    assert [(e.kind, e.key, e.stale) for e in other.entries()] == [
        (CPU_DTYPE_SPEED, "10x20", True), (CPU_DTYPE_SPEED, "30x40", True), (RAM_BANDWIDTH, "", True), (RAM_BANDWIDTH, "", False)]
    assert store.get(CPU_DTYPE_SPEED, "10x20") == {"float32": 2.0} and store.get(CPU_DTYPE_SPEED) is None
    assert other.forget(CPU_DTYPE_SPEED) == 2 and {e.kind for e in other.entries()} == {RAM_BANDWIDTH}
    assert other.forget() == 2 and other.entries() == []
    with pytest.raises(TypeError):
        store.put(RAM_BANDWIDTH, {"not json": object()})


def test_the_file_store_is_one_json_file_shared_by_threads_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "measurements.json"
    store = FileMeasurementStore(path, HERE)
    assert store.get(RAM_BANDWIDTH) is None and not path.exists()

    def put(i: int) -> None:
        store.put(CPU_DTYPE_SPEED, {"float32": float(i)}, key=f"{i}x{i}")

    threads = [threading.Thread(target=put, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["format"] == 1 and len(saved["entries"]) == 16  # no write lost another
    assert [p.name for p in path.parent.iterdir()] == ["measurements.json"]  # no temp file left
    again = FileMeasurementStore(path, lambda: HERE)  # another process opening the same file
    assert again.get(CPU_DTYPE_SPEED, "7x7") == {"float32": 7.0}
    again.put(KV_RANKING, {"best": "h2o", "reason": "r"})
    assert store.get(KV_RANKING) == {"best": "h2o", "reason": "r"}  # the first sees the change on disk
    path.write_text("{torn", encoding="utf-8")
    assert store.get(KV_RANKING) is None and store.entries() == []  # unreadable: empty, not a crash


def test_the_five_old_files_are_moved_in_once_stamped_with_this_machine(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "bench").mkdir(parents=True)
    machine = f"{HERE.cpu}|{HERE.cores}|{HERE.ram}|"
    calibration = {"gpu_efficiency": 0.5, "cpu_efficiency": 0.4, "core_bandwidth": 9e9, "gpu_layer_overhead_s": 0.0,
                   "cpu_layer_overhead_s": 0.0, "kv_cost": 2.0, "source": "measured 2025-01-01 on SmolLM2"}
    (cache / "ram-bandwidth.json").write_text(json.dumps({"key": f"{HERE.cpu}|{HERE.ram}", "bytes_per_s": 26_000_000_000}))
    (cache / "planner-calibration.json").write_text(json.dumps({"machine": machine, "calibration": calibration, "report": {"bound": "RAM"}}))
    (cache / "torch-dtype-speed.json").write_text(json.dumps({
        f"{HERE.cpu}|{HERE.cores}|1536x576": {"float32": 10.0, "bfloat16": 2.0}, "Other CPU|8|1536x576": {"float32": 1.0}}))
    (cache / "kernels-bench.json").write_text(json.dumps({"kernels": {}, "cpu_decode_speedup": {"int8": 1.2}, "cpu_compute_dtype": "float32"}))
    (cache / "bench" / "kv.json").write_text(json.dumps({"best_overall": {"policy": "snapkv", "reason": "measured"}, "mean_ratio_to_full": {"snapkv": 1.01}}))
    store = FileMeasurementStore(cache / "measurements.json", HERE)
    assert store.get(RAM_BANDWIDTH) == {"bytes_per_s": 26_000_000_000}
    assert store.get(CALIBRATION)["calibration"] == calibration
    assert store.get(CPU_DTYPE_SPEED, "1536x576") == {"float32": 10.0, "bfloat16": 2.0}  # the other CPU's row stays out
    assert store.get(KERNEL_SPEEDUP) == {"cpu_decode_speedup": {"int8": 1.2}, "cpu_compute_dtype": "float32"}
    assert store.get(KV_RANKING)["best"] == "snapkv"
    assert {e.machine for e in store.entries()} == {HERE} and len(store.entries()) == 5
    for old in ("ram-bandwidth.json", "planner-calibration.json", "torch-dtype-speed.json", "bench/kv.json"):
        assert not (cache / old).exists() and (cache / f"{old}.imported").is_file()
    assert (cache / "kernels-bench.json").is_file()  # quantize/torch_quant still reads it itself
    store.forget()
    assert FileMeasurementStore(cache / "measurements.json", HERE).entries() == []  # not read in again
    (cache / "kernels-bench.json").write_text(json.dumps({"cpu_decode_speedup": {"int8": 0.9}, "cpu_compute_dtype": "bfloat16"}))
    os.utime(cache / "kernels-bench.json", ns=(1, 10**18))  # a later `hearth bench kernels` rewrote it
    assert FileMeasurementStore(cache / "measurements.json", HERE).get(KERNEL_SPEEDUP)["cpu_decode_speedup"] == {"int8": 0.9}


def test_the_planner_reads_measurements_only_for_the_machine_they_were_taken_on() -> None:
    store = MemoryMeasurementStore(HERE)
    assert store.describes(HW) and not store.describes(load_profile("cpu-16gb"))
    assert not store.describes(dataclasses.replace(HW, gpus=(Gpu(0, "RTX", "nvidia", 2**33, 2**33, "8.6"),)))
    rows = torch_plan._ffn_rows(TINY)
    default = plan(TINY, HW, TORCH, measurements=store)
    assert default.quantization.value == {"dtype": "float32", "weight_quant": "none"} and "profile" in default.quantization.reason
    store.put(CPU_DTYPE_SPEED, {"float32": 10.0, "bfloat16": 12.0, "float32_matvec_per_s": 100.0, "bfloat16_matvec_per_s": 240.0},
              key=f"{rows}x{TINY.n_embd}")
    store.put(KERNEL_SPEEDUP, {"cpu_decode_speedup": {"int8": 1.3}, "cpu_compute_dtype": "bfloat16"})
    measured = plan(TINY, HW, TORCH, measurements=store)
    assert measured.quantization.value == {"dtype": "bfloat16", "weight_quant": "int8"}
    assert "2.4x" in measured.quantization.reason and "1.30x" in measured.quantization.reason
    profile = plan(TINY, load_profile("cpu-16gb"), TORCH, measurements=store)
    assert profile.quantization.value == {"dtype": "float32", "weight_quant": "none"}  # another machine: not measured there
    assert plan(TINY, HW, TORCH).quantization.value == default.quantization.value  # no store: Hearth's defaults
    assert saved_calibration(HW, store).source == "default"


def test_the_torch_plan_takes_its_missing_matvec_timing_once_into_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.runtime.planner import torch_devices

    store = MemoryMeasurementStore(HERE)
    calls: list[tuple[int, int]] = []
    real = torch_devices.measure_dtype_speed

    def counted(rows: int, cols: int, *, threads: int | None = None) -> dict[str, float] | None:
        calls.append((rows, cols))
        return real(rows, cols, threads=threads)

    monkeypatch.setattr(torch_devices, "measure_dtype_speed", counted)
    torch_plan.measure_missing(TINY, load_profile("cpu-16gb"), TORCH, None, store)
    assert calls == [] and store.entries() == []  # a profile is not this machine: nothing to measure
    torch_plan.measure_missing(TINY, HW, TORCH, None, store)
    torch_plan.measure_missing(TINY, HW, TORCH, None, store)
    [entry] = store.entries()
    assert calls == [(torch_plan._ffn_rows(TINY), TINY.n_embd)] and entry.kind == CPU_DTYPE_SPEED
    assert entry.value["float32"] > 0 and entry.value["bfloat16_matvec_per_s"] > 0
    assert plan(TINY, HW, TORCH, measurements=store).quantization.reason.startswith(("bfloat16: measured", "float32: measured"))


def test_probe_keeps_the_ram_bandwidth_in_the_store_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))  # an idle machine: the probe is kept (test_hardware has the busy case)
    store = MemoryMeasurementStore(hardware.this_machine())
    first = hardware.probe(measurements=store)
    assert first.ram_bandwidth == store.get(RAM_BANDWIDTH)["bytes_per_s"] == hardware.probe(measurements=store).ram_bandwidth
    assert store.describes(first)


def test_bench_list_and_forget_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path))
    here = FileMeasurementStore.default(hardware.this_machine())
    here.put(KV_RANKING, {"best": "h2o", "reason": "measured best"})
    here.put(CPU_DTYPE_SPEED, {"float32": 10.0}, key="1536x576")
    FileMeasurementStore.default(dataclasses.replace(hardware.this_machine(), torch="0.0.1")).put(RAM_BANDWIDTH, {"bytes_per_s": 1})
    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("this machine: ") and hardware.this_machine().cpu in out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line.startswith(" ")}
    assert "current" in lines[KV_RANKING] and '"best":"h2o"' in lines[KV_RANKING]
    assert "1536x576" in lines[CPU_DTYPE_SPEED] and "current" in lines[CPU_DTYPE_SPEED]
    assert "stale (torch differ)" in lines[RAM_BANDWIDTH] and "torch 0.0.1" in out
    assert cli.main(["bench", "--forget", KV_RANKING]) == 0
    assert "forgot 1 measurement of kind kv_ranking" in capsys.readouterr().out
    assert {e.kind for e in here.entries()} == {CPU_DTYPE_SPEED, RAM_BANDWIDTH}
    assert cli.main(["bench", "--forget", "nonsense"]) == 2 and "the kinds are" in capsys.readouterr().err
    assert cli.main(["bench", "--forget"]) == 0 and "forgot 2 measurements" in capsys.readouterr().out
    assert cli.main(["bench", "--list"]) == 0 and "no measurements saved" in capsys.readouterr().out
