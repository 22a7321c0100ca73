"""Where each layer goes: per-device budgets, llama.cpp's placement rule, and what each device holds.

llama.cpp keeps the token embeddings on the CPU and fills GPUs from the last layer back: with
``n_gpu_layers = k <= n_layers`` the last ``k`` repeating layers are on GPUs and the output layer
stays on the CPU; ``n_layers + 1`` also moves the output layer. Across several GPUs the offloaded
layers are contiguous, the first GPU taking the earliest of them (``tensor_split`` sets the shares),
so the last GPU holds the output. Each layer's KV cache lives with the layer.

A device's budget is its free memory less the safety margin, exactly: nothing else is held back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.runtime.hardware import Hardware
from app.runtime.planner import memory
from app.runtime.planner.shape import ModelShape


@dataclass(frozen=True)
class Settings:
    """The knobs that change how much memory a placement needs."""

    n_ctx: int
    kv_type: str
    flash_attn: bool
    n_ubatch: int
    op_offload: bool = True  # llama.cpp's default: prompt matrix products on the GPU


@dataclass(frozen=True)
class Budgets:
    gpus: tuple[int, ...]  # usable bytes per GPU: free VRAM less the safety margin (0 if less)
    ram: int  # usable RAM: available less the RAM margin (0 if less)
    safety_margin: int = 0  # what was kept back on each GPU
    ram_margin: int = 0

    @classmethod
    def of(cls, hw: Hardware, *, safety_margin: int, ram_margin: int) -> Budgets:
        return cls(
            gpus=tuple(max(g.vram_free - safety_margin, 0) for g in hw.gpus),
            ram=max(hw.ram_available - ram_margin, 0),
            safety_margin=safety_margin,
            ram_margin=ram_margin,
        )

    def without_gpus(self) -> Budgets:
        return Budgets((), self.ram, self.safety_margin, self.ram_margin)


@dataclass(frozen=True)
class Placement:
    gpu_layers: tuple[int, ...]  # repeating layers on each GPU, in device order
    output_gpu: int | None = None  # the GPU holding the output layer; None = the CPU

    @property
    def output_on_gpu(self) -> bool:
        return self.output_gpu is not None

    @property
    def repeating_on_gpu(self) -> int:
        return sum(self.gpu_layers)

    @property
    def n_gpu_layers(self) -> int:
        """llama.cpp's ``n_gpu_layers``: the output layer counts as one more."""
        return self.repeating_on_gpu + (1 if self.output_on_gpu else 0)

    def tensor_split(self) -> list[float]:
        """Shares for llama.cpp's ``tensor_split`` that reproduce this placement exactly."""
        shares = [float(n) for n in self.gpu_layers]
        if self.output_gpu is not None:
            shares[self.output_gpu] += 1.0
        return shares


@dataclass(frozen=True)
class DeviceUse:
    device: str  # "gpu0", "gpu1", ... or "cpu"
    name: str
    weights: int
    kv: int
    compute: int
    budget: int
    layers: int
    holds_output: bool
    unified: bool = False  # GPU memory that is system RAM (it also counts against the RAM budget)

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "name": self.name,
            "weights": self.weights,
            "kv": self.kv,
            "compute": self.compute,
            "total": self.total,
            "budget": self.budget,
            "layers": self.layers,
            "holds_output": self.holds_output,
            "unified": self.unified,
        }


def _gpu_compute(shape: ModelShape, s: Settings, *, layers: bool, output: bool, staging: bool) -> int:
    return memory.compute_bytes(
        shape,
        n_ctx=s.n_ctx,
        n_ubatch=s.n_ubatch,
        flash_attn=s.flash_attn,
        holds_layers=layers,
        holds_output=output,
        staged_output=shape.output_bytes if staging else 0,
        staged_layer=shape.largest_layer_tensor if staging else 0,
    )


def staging_fits(shape: ModelShape, budgets: Budgets, s: Settings) -> bool:
    """Whether the first GPU can hold op offload's buffer (CPU weights copied in for prompts)."""
    if not budgets.gpus:
        return False
    return _gpu_compute(shape, s, layers=False, output=False, staging=True) <= budgets.gpus[0]


def assign(shape: ModelShape, budgets: Budgets, s: Settings, *, layers: int, full: bool) -> Placement | None:
    """Place up to ``layers`` repeating layers (and the output when ``full``) from the back.

    The last GPU is filled first, then the one before it. For a full offload, None when not
    everything fits. Layers of equal size make this greedy fill optimal.
    """
    n_gpus = len(budgets.gpus)
    kv_layer = memory.kv_bytes(shape, s.n_ctx, s.kv_type, layers=1)
    counts = [0] * n_gpus
    next_layer = shape.n_layers - 1
    earliest = shape.n_layers - layers  # the earliest layer index that may go to a GPU
    output_gpu: int | None = None
    staging = s.op_offload and not full
    for d in reversed(range(n_gpus)):
        holds_output = full and output_gpu is None
        fixed = _gpu_compute(shape, s, layers=True, output=holds_output, staging=staging and d == 0)
        room = budgets.gpus[d] - fixed - (shape.output_bytes if holds_output else 0)
        if room < 0:
            continue
        if holds_output:
            output_gpu = d
        while next_layer >= earliest and shape.layer_bytes[next_layer] + kv_layer <= room:
            room -= shape.layer_bytes[next_layer] + kv_layer
            counts[d] += 1
            next_layer -= 1
    if full and (output_gpu is None or next_layer >= 0):
        return None
    return Placement(tuple(counts), output_gpu)


def evaluate(shape: ModelShape, hw: Hardware, budgets: Budgets, placement: Placement, s: Settings) -> tuple[DeviceUse, ...]:
    """What each device holds under ``placement``: GPUs in order, then the CPU."""
    kv_layer = memory.kv_bytes(shape, s.n_ctx, s.kv_type, layers=1)
    uses = []
    gpu_layers = placement.gpu_layers
    first_gpu_layer = shape.n_layers - placement.repeating_on_gpu
    start = first_gpu_layer
    partial = not placement.output_on_gpu
    for d, gpu in enumerate(hw.gpus):
        n = gpu_layers[d] if d < len(gpu_layers) else 0
        holds_output = placement.output_gpu == d
        staging = s.op_offload and partial and d == 0
        weights = sum(shape.layer_bytes[start : start + n]) + (shape.output_bytes if holds_output else 0)
        start += n
        compute = _gpu_compute(shape, s, layers=n > 0, output=holds_output, staging=staging) if (n or holds_output or staging) else 0
        uses.append(DeviceUse(f"gpu{d}", gpu.name, weights, n * kv_layer, compute, budgets.gpus[d], n, holds_output, gpu.unified_memory))
    cpu_layers = first_gpu_layer
    output_on_cpu = not placement.output_on_gpu
    cpu_weights = shape.token_embd_bytes + sum(shape.layer_bytes[:cpu_layers])
    if output_on_cpu and not shape.tied_embeddings:
        cpu_weights += shape.output_bytes
    gpu_used = bool(hw.gpus) and (placement.n_gpu_layers > 0 or s.op_offload)
    cpu_compute = memory.compute_bytes(
        shape,
        n_ctx=s.n_ctx,
        n_ubatch=s.n_ubatch,
        flash_attn=s.flash_attn,
        holds_layers=cpu_layers > 0,
        holds_output=output_on_cpu and not (s.op_offload and gpu_used),
    ) + memory.host_buffers(shape, n_ctx=s.n_ctx, n_ubatch=s.n_ubatch, flash_attn=s.flash_attn, with_gpu=gpu_used)
    uses.append(DeviceUse("cpu", hw.cpu_name, cpu_weights, cpu_layers * kv_layer, cpu_compute, budgets.ram, cpu_layers, output_on_cpu))
    return tuple(uses)


def ram_used(uses: tuple[DeviceUse, ...]) -> int:
    """System RAM taken: the CPU's share plus any GPU whose memory is the system RAM."""
    return sum(u.total for u in uses if u.device == "cpu" or u.unified)


def fits(uses: tuple[DeviceUse, ...], budgets: Budgets) -> bool:
    return all(u.total <= u.budget for u in uses if u.device != "cpu") and ram_used(uses) <= budgets.ram
