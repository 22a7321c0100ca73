"""What this machine has: CPU cores and SIMD, RAM, GPUs and their VRAM.

The probe reads /proc/cpuinfo (or the platform module) and psutil for the CPU and RAM. GPUs come
from torch.cuda when torch is already loaded in this process, else from nvidia-smi: importing
torch only to count GPUs costs about a second and 300 MB of RAM in a worker that runs llama.cpp.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from app.runtime.measurements import RAM_BANDWIDTH, FileMeasurementStore, Machine, MeasurementStore

log = logging.getLogger(__name__)

_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd", "sve")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    vendor: str  # "nvidia" | "amd" | "apple"
    vram_total: int  # bytes
    vram_free: int  # bytes
    compute_capability: str | None = None
    memory_bandwidth: int | None = None  # bytes/s; None = look it up from the name (planner.speed)
    unified_memory: bool = False  # True where the GPU shares the system RAM (Apple silicon)


@dataclass(frozen=True)
class Hardware:
    cpu_name: str
    cpu_cores_physical: int
    cpu_cores_logical: int
    simd: tuple[str, ...]
    ram_total: int  # bytes
    ram_available: int  # bytes
    gpus: tuple[Gpu, ...] = ()
    os: str = field(default_factory=platform.system)
    source: str = "probe"  # "probe" or the name of a hardware profile
    ram_bandwidth: int | None = None  # bytes/s; None = estimated from the CPU (planner.speed)
    disk_free: int | None = None  # bytes free where models are kept; None = unknown

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["simd"] = list(self.simd)
        data["gpus"] = [asdict(g) for g in self.gpus]
        return data


def probe(*, measurements: MeasurementStore | None = None) -> Hardware:
    """This machine; its RAM bandwidth comes from ``measurements`` (default: the user's store),
    measured and saved there the first time."""
    hw = _probe_basic()
    store = measurements if measurements is not None else FileMeasurementStore.default(lambda: machine_of(hw))
    return replace(hw, ram_bandwidth=ram_bandwidth(store))


def _probe_basic() -> Hardware:
    """Everything but the RAM bandwidth (which is measured, so it lives in the measurement store)."""
    from app.paths import paths

    memory = psutil.virtual_memory()
    logical = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    cpu_name = _cpu_name()
    gpus = _gpus() or _apple_gpu(memory.total)
    return Hardware(
        cpu_name=cpu_name,
        cpu_cores_physical=physical,
        cpu_cores_logical=logical,
        simd=_simd_flags(),
        ram_total=memory.total,
        ram_available=memory.available,
        gpus=gpus,
        disk_free=_disk_free(paths().data),
    )


def machine_of(hw: Hardware) -> Machine:
    """The fingerprint measurements taken on ``hw`` (this machine) are stamped with."""
    return Machine.of(hw, driver=gpu_driver_version() if hw.gpus else None)


@functools.cache
def this_machine() -> Machine:
    """This machine's fingerprint, worked out once per process (the GPUs do not change under it)."""
    return machine_of(_probe_basic())


@functools.cache
def gpu_driver_version() -> str | None:
    """The NVIDIA driver's version (NVML, else nvidia-smi); ROCm's for AMD under torch; else None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # ImportError, or NVMLError without an NVIDIA driver: ask nvidia-smi
        log.debug("NVML has no driver version: %s", exc)
    exe = shutil.which("nvidia-smi")
    if exe is not None:
        try:
            out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=True).stdout
            if out.strip():
                return out.strip().splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("nvidia-smi has no driver version: %s", exc)
    if "torch" in sys.modules:
        return getattr(sys.modules["torch"].version, "hip", None)
    return None


def _disk_free(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return int(psutil.disk_usage(str(candidate)).free)
    return None


def _apple_gpu(ram_total: int) -> tuple[Gpu, ...]:
    """Apple silicon: the GPU shares the system RAM. Metal lets one process keep about three
    quarters of it resident (its recommended working set), which is what llama.cpp can use."""
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return ()
    usable = int(ram_total * 0.75)
    free = min(usable, int(psutil.virtual_memory().available))
    return (Gpu(0, f"{_cpu_name()} GPU", "apple", usable, free, unified_memory=True),)


BANDWIDTH_PROBE_BYTES = 256 * 2**20
BUSY_LOAD_PER_CORE = 1.0  # above this one-minute load average per core, a probe is not trusted for later


def ram_bandwidth(measurements: MeasurementStore) -> int | None:
    """RAM copy bandwidth in bytes/s (read + write), measured once per machine and kept in ``measurements``.

    A 256 MiB copy, best of three: about a tenth of a second. The planner turns it into an
    effective decode bandwidth; its own calibration refines that with a real decode. A probe taken
    while other programs keep the cores busy can read ten times low, and every later plan would
    inherit that: such a result serves this process only and is not kept.
    """
    saved = measurements.get(RAM_BANDWIDTH)
    if isinstance(saved, dict) and isinstance(saved.get("bytes_per_s"), int):
        return int(saved["bytes_per_s"])
    measured = measure_ram_bandwidth()
    if measured is None:
        return None
    load_per_core = os.getloadavg()[0] / max(1, os.cpu_count() or 1) if hasattr(os, "getloadavg") else 0.0
    if load_per_core > BUSY_LOAD_PER_CORE:
        log.info("bandwidth probe taken under load (%.1f per core): %.1f GB/s, not kept", load_per_core, measured / 1e9)
        return measured
    try:
        measurements.put(RAM_BANDWIDTH, {"bytes_per_s": measured})
    except OSError as exc:
        log.info("cannot keep the bandwidth probe: %s", exc)
    return measured


def measure_ram_bandwidth() -> int | None:
    """One RAM copy bandwidth measurement in bytes/s; None without numpy."""
    try:
        import numpy as np
    except ImportError:
        return None
    src = np.ones(BANDWIDTH_PROBE_BYTES // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return int(2 * BANDWIDTH_PROBE_BYTES / best)


def _cpu_info_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read().splitlines()
    except OSError:
        return []


def _cpu_name() -> str:
    for line in _cpu_info_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _simd_flags() -> tuple[str, ...]:
    for line in _cpu_info_lines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return tuple(f for f in _SIMD_FLAGS if f in present)
    if platform.machine() in ("arm64", "aarch64"):
        return ("neon",)
    return ()


def _gpus() -> tuple[Gpu, ...]:
    """torch.cuda when torch is already loaded (it also sees AMD through ROCm), else NVML, else
    nvidia-smi: each answers without the cost of importing torch."""
    if "torch" in sys.modules:
        return _torch_gpus()
    return _nvml_gpus() or _nvidia_smi_gpus()


def _nvml_gpus() -> tuple[Gpu, ...]:
    try:
        import pynvml  # the nvidia-ml-py package
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no driver: the usual case on a machine without NVIDIA
        log.debug("NVML unavailable: %s", exc)
        return ()
    gpus = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append(Gpu(index, name, "nvidia", int(memory.total), int(memory.free), f"{major}.{minor}"))
    except pynvml.NVMLError as exc:
        log.warning("NVML found a GPU but could not read it: %s", exc)
    finally:
        pynvml.nvmlShutdown()
    return tuple(gpus)


def _nvidia_smi_gpus() -> tuple[Gpu, ...]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    query = "--query-gpu=index,name,memory.total,memory.free,compute_cap"
    try:
        out = subprocess.run([exe, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:  # a driver that is present but broken must not stop the studio
        log.warning("nvidia-smi is installed but did not answer: %s", exc)
        return ()
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            index, name, total_mib, free_mib = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
        except (IndexError, ValueError):
            log.warning("unexpected nvidia-smi line: %r", line)
            continue
        capability = parts[4] if len(parts) > 4 and parts[4] not in ("", "[N/A]") else None
        gpus.append(Gpu(index, name, "nvidia", total_mib * 2**20, free_mib * 2**20, capability))
    return tuple(gpus)


def _torch_gpus() -> tuple[Gpu, ...]:
    import torch

    gpus = []
    try:
        if torch.cuda.is_available():
            vendor = "amd" if getattr(torch.version, "hip", None) else "nvidia"
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                free, total = torch.cuda.mem_get_info(index)
                gpus.append(Gpu(index, props.name, vendor, total, free, f"{props.major}.{props.minor}"))
    except RuntimeError as exc:  # a driver that is present but broken must not stop the studio
        log.warning("CUDA is installed but the GPU could not be queried: %s", exc, exc_info=True)
    return tuple(gpus)
