"""Named hardware profiles: fake machines for tests and "what if" planning.

``HEARTH_HARDWARE=rtx3060-12gb`` (or a path to a JSON file shaped like ``Hardware.to_dict()``)
replaces the probe, so every plan can be made and tested on a machine without that GPU.

The figures are those of a typical machine of each kind: VRAM "free" is the card's total less what a
desktop and the CUDA context usually hold (about 0.4–0.6 GiB), RAM "available" leaves room for the
OS and a browser, bandwidths are the vendors' peak figures. The M2's GPU budget is Metal's
``recommendedMaxWorkingSetSize`` for a 16 GB Mac (about two thirds of the RAM), shared with the CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.runtime.hardware import Gpu, Hardware, probe
from app.runtime.protocol import ErrorKind, RuntimeFailure

ENV_VAR = "HEARTH_HARDWARE"
GiB = 1 << 30
GB = 1_000_000_000
_X86 = ("sse4_2", "avx", "avx2", "fma", "f16c")


def _gib(x: float) -> int:
    return int(x * GiB)


def _nvidia(index: int, name: str, total: float, free: float, cc: str, bandwidth_gbs: float) -> Gpu:
    return Gpu(index, name, "nvidia", _gib(total), _gib(free), cc, memory_bandwidth=int(bandwidth_gbs * GB))


PROFILES: dict[str, Hardware] = {
    "cpu-16gb": Hardware(
        cpu_name="8-core x86-64 desktop CPU",
        cpu_cores_physical=8,
        cpu_cores_logical=16,
        simd=_X86,
        ram_total=_gib(16),
        ram_available=_gib(12),
        os="Linux",
        source="cpu-16gb",
        ram_bandwidth=int(51.2 * GB),  # dual-channel DDR4-3200
    ),
    "gtx1650-4gb": Hardware(
        cpu_name="6-core x86-64 desktop CPU",
        cpu_cores_physical=6,
        cpu_cores_logical=12,
        simd=_X86,
        ram_total=_gib(16),
        ram_available=_gib(12),
        gpus=(_nvidia(0, "NVIDIA GeForce GTX 1650", 4, 3.6, "7.5", 128),),
        os="Windows",
        source="gtx1650-4gb",
        ram_bandwidth=int(51.2 * GB),
    ),
    "m2-16gb": Hardware(
        cpu_name="Apple M2",
        cpu_cores_physical=8,
        cpu_cores_logical=8,
        simd=("neon",),
        ram_total=_gib(16),
        ram_available=_gib(12),
        gpus=(Gpu(0, "Apple M2", "apple", 11_453_251_584, 11_453_251_584, None, memory_bandwidth=100 * GB, unified_memory=True),),
        os="Darwin",
        source="m2-16gb",
        ram_bandwidth=100 * GB,
    ),
    "rtx3060-12gb": Hardware(
        cpu_name="8-core x86-64 desktop CPU",
        cpu_cores_physical=8,
        cpu_cores_logical=16,
        simd=_X86,
        ram_total=_gib(32),
        ram_available=_gib(26),
        gpus=(_nvidia(0, "NVIDIA GeForce RTX 3060", 12, 11.4, "8.6", 360),),
        os="Linux",
        source="rtx3060-12gb",
        ram_bandwidth=int(51.2 * GB),
    ),
    "rtx4090-24gb": Hardware(
        cpu_name="16-core x86-64 desktop CPU",
        cpu_cores_physical=16,
        cpu_cores_logical=32,
        simd=(*_X86, "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"),
        ram_total=_gib(64),
        ram_available=_gib(56),
        gpus=(_nvidia(0, "NVIDIA GeForce RTX 4090", 24, 23.4, "8.9", 1008),),
        os="Linux",
        source="rtx4090-24gb",
        ram_bandwidth=int(89.6 * GB),  # dual-channel DDR5-5600
    ),
    "2x3090-48gb": Hardware(
        cpu_name="16-core x86-64 workstation CPU",
        cpu_cores_physical=16,
        cpu_cores_logical=32,
        simd=_X86,
        ram_total=_gib(128),
        ram_available=_gib(118),
        gpus=(
            _nvidia(0, "NVIDIA GeForce RTX 3090", 24, 23.4, "8.6", 936),
            _nvidia(1, "NVIDIA GeForce RTX 3090", 24, 23.7, "8.6", 936),
        ),
        os="Linux",
        source="2x3090-48gb",
        ram_bandwidth=int(102.4 * GB),  # quad-channel DDR4-3200
    ),
    "a100-80gb": Hardware(
        cpu_name="32-core x86-64 server CPU",
        cpu_cores_physical=32,
        cpu_cores_logical=64,
        simd=(*_X86, "avx512f", "avx512bw", "avx512_vnni"),
        ram_total=_gib(256),
        ram_available=_gib(240),
        gpus=(_nvidia(0, "NVIDIA A100-SXM4-80GB", 80, 79.3, "8.0", 2039),),
        os="Linux",
        source="a100-80gb",
        ram_bandwidth=int(204.8 * GB),  # eight-channel DDR4-3200
    ),
}


def profile_names() -> list[str]:
    return list(PROFILES)


def load_profile(name_or_path: str) -> Hardware:
    """A named profile, or a JSON file holding one (``Hardware.to_dict()``'s shape)."""
    key = name_or_path.strip()
    if key in PROFILES:
        return PROFILES[key]
    path = Path(key).expanduser()
    if path.suffix.lower() == ".json" or path.is_file():
        return _from_file(path)
    raise RuntimeFailure(
        ErrorKind.INVALID_PARAMS,
        f"Unknown hardware profile {key!r}. Valid profiles: {', '.join(PROFILES)}; or give the path "
        f"of a JSON file with the fields of a hardware report (cpu_cores_physical, ram_total, gpus...).",
    )


def detect(env: Mapping[str, str] | None = None) -> Hardware:
    """The profile named by HEARTH_HARDWARE if it is set, else the real machine."""
    value = (os.environ if env is None else env).get(ENV_VAR, "").strip()
    return load_profile(value) if value else probe()


def hardware_from_dict(data: Mapping[str, Any], *, source: str) -> Hardware:
    """Build a Hardware from JSON; a missing or mistyped field gives INVALID_PARAMS in words."""
    try:
        gpus = tuple(
            Gpu(
                index=int(g.get("index", i)),
                name=str(g["name"]),
                vendor=str(g.get("vendor", "nvidia")),
                vram_total=int(g["vram_total"]),
                vram_free=int(g.get("vram_free", g["vram_total"])),
                compute_capability=g.get("compute_capability"),
                memory_bandwidth=None if g.get("memory_bandwidth") is None else int(g["memory_bandwidth"]),
                unified_memory=bool(g.get("unified_memory", False)),
            )
            for i, g in enumerate(data.get("gpus", ()))
        )
        hw = Hardware(
            cpu_name=str(data.get("cpu_name", "CPU")),
            cpu_cores_physical=int(data["cpu_cores_physical"]),
            cpu_cores_logical=int(data.get("cpu_cores_logical", data["cpu_cores_physical"])),
            simd=tuple(data.get("simd", ())),
            ram_total=int(data["ram_total"]),
            ram_available=int(data.get("ram_available", data["ram_total"])),
            gpus=gpus,
            os=str(data.get("os", "Linux")),
            source=source,
            ram_bandwidth=None if data.get("ram_bandwidth") is None else int(data["ram_bandwidth"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeFailure(
            ErrorKind.INVALID_PARAMS,
            f"Hardware profile {source} is missing or has a wrong value for {exc}; it needs at least "
            f"cpu_cores_physical and ram_total (bytes), and for each GPU a name and vram_total.",
        ) from exc
    if hw.cpu_cores_physical < 1 or hw.ram_total <= 0 or any(g.vram_total <= 0 or g.vram_free < 0 for g in hw.gpus):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Hardware profile {source} has a zero or negative core count or memory size.")
    return hw


def _from_file(path: Path) -> Hardware:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Cannot read hardware profile {path}: {exc.strerror}.") from exc
    except ValueError as exc:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Hardware profile {path} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Hardware profile {path} must hold a JSON object.")
    return hardware_from_dict(data, source=str(path))
