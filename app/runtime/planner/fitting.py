"""The search: which context, KV type and GPU layer count fit, and which of them to take.

The auto choice walks one fixed chain of (GPU layers, context) candidates and takes the last that
fits. Every step of the chain has at least the layers and the context of the step before, and a
candidate that fits keeps fitting when a GPU gets more memory, so more VRAM can only move the
choice further along the chain: **more VRAM never gives fewer GPU layers or a smaller context**.
The chain, for a base context ``B`` chosen from the RAM alone:

    (0 layers, B) → (1, B) → ... → (all layers and the output, B) → (all, next context up) → ...

so layers come first (they set the speed), and the context only grows past ``B`` while the whole
model stays on the GPU. ``B`` is the largest step of the context ladder, from a floor of 4,096
tokens (or the trained context, if shorter) up to the model's trained context and a cap tiered by
RAM (16 GB → 16k, 32 GB → 32k...), at which the model would fit in RAM on its own.

A KV type is tried in order (f16, then q8_0 when flash attention is on) and q8_0 is taken only
when it reaches further along the chain.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from app.runtime.hardware import Hardware
from app.runtime.planner import layout, quant
from app.runtime.planner.layout import Budgets, DeviceUse, Placement, Settings
from app.runtime.planner.shape import ModelShape

GiB = 1 << 30
FLOOR_CONTEXT = 4096
CONTEXT_STEPS = (512, 1024, 2048, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536, 98304, 131072, 196608, 262144, 524288, 1048576)
# (memory at least, default context cap): what a machine of that size is given by default
CONTEXT_TIERS = ((120 * GiB, 131072), (60 * GiB, 65536), (30 * GiB, 32768), (15 * GiB, 16384), (7 * GiB, 8192))


def tier_cap(memory_bytes: int) -> int:
    for threshold, cap in CONTEXT_TIERS:
        if memory_bytes >= threshold:
            return cap
    return FLOOR_CONTEXT


def ladder(low: int, high: int) -> list[int]:
    """Context steps from ``low`` to ``high`` inclusive (``high`` itself always included)."""
    if high < low:
        return []
    return sorted({c for c in CONTEXT_STEPS if low <= c <= high} | {low, high})


@dataclass(frozen=True)
class Fit:
    """One configuration that fits: where the layers go, what each device holds."""

    placement: Placement
    settings: Settings
    uses: tuple[DeviceUse, ...]

    @property
    def n_gpu_layers(self) -> int:
        return self.placement.n_gpu_layers

    @property
    def full(self) -> bool:
        return self.placement.output_on_gpu


@dataclass(frozen=True)
class Search:
    """What stays fixed while the context and layers are searched."""

    shape: ModelShape
    hw: Hardware
    budgets: Budgets
    kv_types: tuple[str, ...]  # in order of preference
    flash_attn: bool
    n_ubatch: int
    pinned_layers: int | None = None  # llama.cpp count, already clamped to 0..n_layers+1

    def settings(self, n_ctx: int, kv_type: str, *, op_offload: bool) -> Settings:
        return Settings(n_ctx, kv_type, self.flash_attn, min(self.n_ubatch, n_ctx), op_offload)

    def fit_kv(self, n_ctx: int, kv_type: str) -> Fit | None:
        """The most GPU layers (or the pinned count) for one context and KV type, if RAM allows."""
        shape, budgets = self.shape, self.budgets
        n = shape.n_layers
        if not budgets.gpus:
            return self._check(Placement(()), self.settings(n_ctx, kv_type, op_offload=False))
        full_settings = self.settings(n_ctx, kv_type, op_offload=True)
        pinned = self.pinned_layers
        if pinned is None or pinned == n + 1:
            full = layout.assign(shape, budgets, full_settings, layers=n, full=True)
            if full is not None:
                return self._check(full, full_settings)
            if pinned is not None:
                return None
        # partial: op offload (prompt matmuls on the GPU) if the first GPU can hold its buffer,
        # else the GPU takes no layers at all — keeps "more VRAM, never fewer layers" true
        op_offload = layout.staging_fits(shape, budgets, full_settings)
        s = self.settings(n_ctx, kv_type, op_offload=op_offload)
        unused = Placement((0,) * len(budgets.gpus))
        if pinned is not None:
            placement = layout.assign(shape, budgets, s, layers=pinned, full=False)
            if placement is None or placement.repeating_on_gpu < pinned:
                return None
            return self._check(placement, s)
        if op_offload:
            placement = layout.assign(shape, budgets, s, layers=n, full=False)
            found = self._check(placement, s) if placement is not None else None
            if found is not None:
                return found
        # the GPU unused: what a machine without one would do (op offload's host buffers can be
        # what tips a RAM-tight machine over)
        return self._check(unused, self.settings(n_ctx, kv_type, op_offload=False))

    def _check(self, placement: Placement, s: Settings) -> Fit | None:
        uses = layout.evaluate(self.shape, self.hw, self.budgets, placement, s)
        return Fit(placement, s, uses) if layout.fits(uses, self.budgets) else None

    def fit(self, n_ctx: int) -> Fit | None:
        """The best KV type at this context: the first that reaches the most GPU layers."""
        best: Fit | None = None
        for kv_type in self.kv_types:
            candidate = self.fit_kv(n_ctx, kv_type)
            if candidate is not None and (best is None or candidate.n_gpu_layers > best.n_gpu_layers):
                best = candidate
        return best

    def largest_context(self, upper: int) -> int:
        """The largest context (a multiple of 256, at most ``upper``) that fits at all; 0 if none."""
        lo, hi = 0, upper // 256
        if hi and self.fit(hi * 256) is not None:
            return hi * 256
        while lo < hi - 1:  # fits(lo * 256) or lo == 0; not fits(hi * 256)
            mid = (lo + hi) // 2
            if self.fit(mid * 256) is not None:
                lo = mid
            else:
                hi = mid
        return lo * 256

    def cpu_only(self) -> Search:
        hw = dataclasses.replace(self.hw, gpus=())
        return Search(self.shape, hw, self.budgets.without_gpus(), self.kv_types, self.flash_attn, self.n_ubatch)


def trained_context(shape: ModelShape) -> int:
    return shape.context_length or FLOOR_CONTEXT


def floor_context(shape: ModelShape) -> int:
    return min(FLOOR_CONTEXT, trained_context(shape))


def base_context(search: Search) -> tuple[int, int]:
    """(B, tier cap): the largest ladder step up to the RAM tier at which the model fits in RAM
    alone — the context before any GPU is considered. Depends on the RAM only."""
    cap = tier_cap(search.hw.ram_total)
    low = floor_context(search.shape)
    high = max(low, min(trained_context(search.shape), cap))
    cpu = search.cpu_only()
    fitting = [c for c in ladder(low, high) if cpu.fit(c) is not None]
    return (fitting[-1] if fitting else low), cap


def gpu_context_cap(search: Search, base: int) -> int:
    """How far the context may grow while the whole model is on the GPU: the trained context,
    capped by a tier on the total VRAM (never below the base)."""
    vram = sum(g.vram_total for g in search.hw.gpus)
    return max(base, min(trained_context(search.shape), tier_cap(vram)))


def auto_context(search: Search) -> tuple[Fit | None, int, str]:
    """Walk the chain; returns (fit, context, how it was decided) — fit None when nothing runs."""
    base, _ = base_context(search)
    at_base = search.fit(base)
    if at_base is None:  # the GPU's host buffers can tip a RAM-tight machine over: step down
        for c in reversed(ladder(floor_context(search.shape), base)[:-1]):
            at_base = search.fit(c)
            if at_base is not None:
                return at_base, c, "base"
        return None, base, "floor"
    if not at_base.full:
        return at_base, base, "base"
    best, chosen = at_base, base
    for c in ladder(base, gpu_context_cap(search, base))[1:]:
        candidate = search.fit(c)
        if candidate is None or not candidate.full:
            break
        best, chosen = candidate, c
    return best, chosen, "gpu" if chosen > base else "base"


def quantized_kv_ok(shape: ModelShape, kv_type: str) -> bool:
    """A quantized cache stores rows in blocks of 32 elements."""
    return not quant.kv_is_quantized(kv_type) or shape.kv_embd % 32 == 0
