"""The hardware probe: real CPU and RAM here; GPUs through nvidia-smi's real output format."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from app.runtime import hardware
from app.runtime.measurements import RAM_BANDWIDTH, Machine, MemoryMeasurementStore


def test_probe_reads_this_machine() -> None:
    hw = hardware.probe()
    assert hw.cpu_cores_logical >= hw.cpu_cores_physical >= 1
    assert 0 < hw.ram_available <= hw.ram_total
    assert hw.cpu_name
    json.dumps(hw.to_dict())


def _fake_nvidia_smi(folder: Path, body: str) -> None:
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)


def test_gpus_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The format nvidia-smi prints for --query-gpu=...,compute_cap --format=csv,noheader,nounits
    _fake_nvidia_smi(tmp_path, "printf '0, NVIDIA GeForce RTX 3060, 12288, 11800, 8.6\\n1, NVIDIA A100-SXM4-80GB, 81920, 81000, 8.0\\n'")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus = hardware._nvidia_smi_gpus()
    assert [(g.name, g.vram_total, g.vram_free, g.compute_capability) for g in gpus] == [
        ("NVIDIA GeForce RTX 3060", 12288 * 2**20, 11800 * 2**20, "8.6"),
        ("NVIDIA A100-SXM4-80GB", 81920 * 2**20, 81000 * 2**20, "8.0"),
    ]


def test_a_broken_driver_means_no_gpu_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2; exit 9")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert hardware._nvidia_smi_gpus() == ()


def test_without_an_nvidia_driver_nvml_reports_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # What NVML does on a machine without the driver, whatever this machine has: nvmlInit raises.
    import pynvml

    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert hardware._nvml_gpus() == ()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed: the same
    assert hardware._nvml_gpus() == ()


def test_nvml_and_nvidia_smi_agree_on_this_machine() -> None:
    # Both read the same driver: the same cards (none without one), whichever answers first.
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not installed here: nothing to compare NVML with")
    by_nvml = [(g.index, g.name, g.vram_total >> 20, g.compute_capability) for g in hardware._nvml_gpus()]
    by_smi = [(g.index, g.name, g.vram_total >> 20, g.compute_capability) for g in hardware._nvidia_smi_gpus()]  # MiB
    assert by_nvml == by_smi


def test_a_bandwidth_probe_taken_on_a_busy_machine_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryMeasurementStore(Machine("busy-cpu", 1, 1))
    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0 * cores, 0.0, 0.0))
    assert hardware.ram_bandwidth(store) > 0
    assert store.get(RAM_BANDWIDTH) is None  # the next process measures again
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    measured = hardware.ram_bandwidth(store)
    assert store.get(RAM_BANDWIDTH) == {"bytes_per_s": measured}
    monkeypatch.setattr(hardware, "measure_ram_bandwidth", lambda: pytest.fail("measured again"))
    assert hardware.ram_bandwidth(store) == measured  # now read back, not measured again
    assert hardware.probe(measurements=store).ram_bandwidth == measured
