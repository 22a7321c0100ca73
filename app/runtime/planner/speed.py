"""Predicted decode speed from a roofline: every token reads the weights (and the KV cache so far).

Decoding one token reads each offloaded layer from VRAM and each CPU layer from RAM once (for a
mixture of experts only the experts used), plus the output matrix and the cached K and V. Time per
token is that traffic over each memory's bandwidth, scaled by an *effective bandwidth* factor, plus a
small per-layer overhead (kernel launches, thread barriers). The factors are defaults until a
measured calibration (``hearth bench``) replaces them; the plan says which it used.

A CPU core streams quantized weights through its dequantize-and-dot loop at only a few GB/s, so
a CPU's bandwidth is ``min(RAM bandwidth, threads * per-core rate)``: on this project's 2-core test
machine the core rate, not DDR, is the limit (SmolLM2: about 110 tok/s measured and predicted).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from app.runtime.hardware import Gpu, Hardware
from app.runtime.planner import memory
from app.runtime.planner.layout import Placement, Settings
from app.runtime.planner.shape import ModelShape
from app.runtime.protocol import ErrorKind, RuntimeFailure

GB = 1_000_000_000

# Vendor peak memory bandwidth (GB/s) by model name; the first name that matches wins.
_GPU_BANDWIDTH_GBS: tuple[tuple[str, float], ...] = (
    ("H200", 4800), ("H100 PCIe", 2000), ("H100", 3350), ("A100 80GB PCIe", 1935), ("A100-SXM4-80GB", 2039),
    ("A100", 1555), ("L40S", 864), ("L40", 864), ("A6000", 768), ("L4", 300), ("A10", 600), ("T4", 320),
    ("V100", 900), ("5090", 1792), ("5080", 960), ("4090", 1008), ("4080", 717), ("4070 Ti", 504),
    ("4070", 504), ("4060 Ti", 288), ("4060", 272), ("3090", 936), ("3080 Ti", 912), ("3080", 760),
    ("3070", 448), ("3060 Ti", 448), ("3060", 360), ("3050", 224), ("2080 Ti", 616), ("2080", 448),
    ("2070", 448), ("2060", 336), ("1660", 192), ("1650", 128), ("1080 Ti", 484), ("1080", 320),
    ("1070", 256), ("7900 XTX", 960), ("7900 XT", 800), ("6900 XT", 512), ("6800 XT", 512),
    ("M1 Ultra", 800), ("M2 Ultra", 800), ("M4 Max", 546), ("M3 Max", 400), ("M2 Max", 400), ("M1 Max", 400),
    ("M4 Pro", 273), ("M3 Pro", 150), ("M2 Pro", 200), ("M1 Pro", 200), ("M4", 120), ("M3", 100), ("M2", 100),
    ("M1", 68),
)
_UNKNOWN_GPU_GBS = {"nvidia": 300.0, "amd": 300.0, "apple": 100.0}
_TYPICAL_RAM_GBS = 50.0  # dual-channel DDR4/DDR5 desktop, what most machines without a figure have


@dataclass(frozen=True)
class Calibration:
    """Effective-bandwidth factors; ``hearth bench`` can measure and replace them."""

    gpu_efficiency: float = 0.6  # llama.cpp reaches about 60% of peak VRAM bandwidth in decode
    cpu_efficiency: float = 0.7
    core_bandwidth: float = 8e9  # bytes/s one core streams through a quantized dot product
    gpu_layer_overhead_s: float = 20e-6
    cpu_layer_overhead_s: float = 15e-6
    # Attention over the cache costs more than streaming its bytes (on a CPU it is partly compute):
    # the KV term is multiplied by this. 1.0 until a calibration measures the slope.
    kv_cost: float = 1.0
    source: str = "default"  # "default", or what measured it

    def __post_init__(self) -> None:
        for name in ("gpu_efficiency", "cpu_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"calibration {name} must be in (0, 1]")
        if self.core_bandwidth <= 0 or self.gpu_layer_overhead_s < 0 or self.cpu_layer_overhead_s < 0 or self.kv_cost <= 0:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "calibration bandwidth must be positive and overheads not negative")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gpu_bandwidth(gpu: Gpu) -> tuple[float, str]:
    """Peak VRAM bandwidth in bytes/s, and where the figure came from."""
    if gpu.memory_bandwidth:
        return float(gpu.memory_bandwidth), "from the hardware report"
    for key, gbs in _GPU_BANDWIDTH_GBS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", gpu.name):
            return gbs * GB, f"the {key}'s published figure"
    gbs = _UNKNOWN_GPU_GBS.get(gpu.vendor, 300.0)
    return gbs * GB, f"assumed ({gpu.name} is not in Hearth's table)"


def ram_bandwidth(hw: Hardware) -> tuple[float, str]:
    if hw.ram_bandwidth:
        return float(hw.ram_bandwidth), "from the hardware report"
    for key, gbs in _GPU_BANDWIDTH_GBS:  # Apple silicon: the CPU shares the GPU's memory
        if key.startswith("M") and re.search(rf"Apple {re.escape(key)}(?![A-Za-z0-9])", hw.cpu_name):
            return gbs * GB, f"the {key}'s published figure"
    return _TYPICAL_RAM_GBS * GB, "assumed (a typical dual-channel desktop)"


@dataclass(frozen=True)
class SpeedEstimate:
    tokens_per_s: float  # at the start of a conversation
    tokens_per_s_full: float  # with the context full
    gpu_bytes_per_token: int
    cpu_bytes_per_token: int
    gpu_bandwidth: float  # effective bytes/s of the slowest GPU used (0 without)
    cpu_bandwidth: float  # effective bytes/s


def decode_speed(
    shape: ModelShape,
    hw: Hardware,
    placement: Placement,
    s: Settings,
    *,
    threads: int,
    calibration: Calibration,
) -> SpeedEstimate:
    active = shape.active_fraction
    kv_token_layer = memory.kv_bytes_per_token(shape, s.kv_type, layers=1)
    first_gpu_layer = shape.n_layers - placement.repeating_on_gpu
    raw_cpu_bw, _ = ram_bandwidth(hw)
    cpu_bw = min(raw_cpu_bw, calibration.core_bandwidth * max(threads, 1)) * calibration.cpu_efficiency

    # per device: (weight bytes read, repeating layers, layers incl. output, effective bandwidth, overhead)
    traffic: list[tuple[float, int, int, float, float]] = []
    gpu_bytes = 0.0
    slowest_gpu = 0.0
    start = first_gpu_layer
    for d, gpu in enumerate(hw.gpus):
        n = placement.gpu_layers[d] if d < len(placement.gpu_layers) else 0
        weights = sum(shape.layer_bytes[start : start + n]) * active
        start += n
        holds_output = placement.output_gpu == d
        if holds_output:
            weights += shape.output_bytes
        if n or holds_output:
            bw = gpu_bandwidth(gpu)[0] * calibration.gpu_efficiency
            slowest_gpu = bw if not slowest_gpu else min(slowest_gpu, bw)
            traffic.append((weights, n, n + holds_output, bw, calibration.gpu_layer_overhead_s))
            gpu_bytes += weights
    cpu_weights = sum(shape.layer_bytes[:first_gpu_layer]) * active
    if not placement.output_on_gpu:
        cpu_weights += shape.output_bytes  # the output matrix is read whole for every token
    cpu_launches = first_gpu_layer + (0 if placement.output_on_gpu else 1)
    if cpu_launches:
        traffic.append((cpu_weights, first_gpu_layer, cpu_launches, cpu_bw, calibration.cpu_layer_overhead_s))

    def seconds(fill: int) -> float:
        kv = fill * kv_token_layer * calibration.kv_cost
        return sum((w + kv * kv_layers) / bw + launches * overhead for w, kv_layers, launches, bw, overhead in traffic)

    empty, full = seconds(0), seconds(s.n_ctx)
    return SpeedEstimate(
        tokens_per_s=1.0 / empty if empty else 0.0,
        tokens_per_s_full=1.0 / full if full else 0.0,
        gpu_bytes_per_token=int(gpu_bytes),
        cpu_bytes_per_token=int(cpu_weights) if cpu_launches else 0,
        gpu_bandwidth=slowest_gpu,
        cpu_bandwidth=cpu_bw,
    )
