"""Which quantization of a model to download for this machine.

The best quality that fits entirely on the GPU at the wanted context (Q8_0 counts as good as F16,
which perplexity bears out, so the smaller wins); else, where layers must be
split, the best quality up to Q4_K_M (every byte left in RAM is read once per token, so beyond the
sweet spot a bigger file costs speed for little quality); else the same on the CPU alone; else a
refusal that names the smallest variant and what it would need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from app.runtime.hardware import Hardware
from app.runtime.library import ModelInfo
from app.runtime.planner import fitting, quant
from app.runtime.planner.fitting import Fit, Search
from app.runtime.planner.layout import Budgets
from app.runtime.planner.memory import fmt_bytes
from app.runtime.planner.policy import DEFAULT_UBATCH, choose_flash_attention
from app.runtime.planner.reasons import cannot_run
from app.runtime.planner.schema import Choice, UserPrefs
from app.runtime.planner.shape import ModelShape
from app.runtime.protocol import ErrorKind, RuntimeFailure

LOSSLESS = quant.FILE_TYPES["Q8_0"].quality
_FIT_WORDS = {"gpu": "entirely on the GPU", "partial": "split between GPU and CPU", "cpu": "on the CPU"}


@dataclass(frozen=True)
class Variant:
    """One downloadable file: its llama.cpp file type (from the hub's metadata) and size."""

    name: str  # e.g. "Q4_K_M"
    file_size: int  # bytes
    filename: str = ""

    def __post_init__(self) -> None:
        if not self.name or self.file_size <= 0:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"a variant needs a name and a positive size, not {self!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_variant(
    variants: Sequence[Variant],
    model_shape: ModelShape | ModelInfo,
    hw: Hardware,
    ctx: int | None = None,
    *,
    prefs: UserPrefs | None = None,
) -> Choice:
    """Pick the variant to download. ``model_shape``: the model (any variant's metadata);
    ``ctx``: the context it should run with (default: Hearth's floor of 4,096 or the trained one)."""
    if not variants:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "no variants to choose from")
    prefs = prefs or UserPrefs()
    base = model_shape if isinstance(model_shape, ModelShape) else ModelShape.estimate(model_shape)
    ctx = ctx or fitting.floor_context(base)
    budgets = Budgets.of(hw, safety_margin=prefs.safety_margin_bytes, ram_margin=prefs.ram_margin_bytes)

    rated: list[tuple[Variant, str, Fit]] = []
    smallest: Search | None = None
    for v in sorted(variants, key=lambda v: v.file_size):
        shape = base.for_file(v.file_size, v.name)
        flash = bool(choose_flash_attention(shape, hw, prefs).value)
        kv_types = ("f16", "q8_0") if flash and fitting.quantized_kv_ok(shape, "q8_0") else ("f16",)
        search = Search(shape, hw, budgets, kv_types, flash, DEFAULT_UBATCH)
        smallest = smallest or search
        fit = search.fit(ctx)
        if fit is not None:
            rated.append((v, "gpu" if fit.full else "partial" if fit.n_gpu_layers else "cpu", fit))
    if not rated:
        assert smallest is not None
        failure = cannot_run(smallest)
        raise RuntimeFailure(failure.kind, f"None of the {len(variants)} variants fits this machine. The smallest: {failure.message}", detail=failure.detail)

    def quality(v: Variant) -> float:
        # Q8_0 is as good as F16 in llama.cpp's perplexity measurements: above it the smaller file wins
        return min(quant.quality(v.name, bits_per_weight=8 * v.file_size / max(base.parameters, 1)), LOSSLESS)

    for kind in ("gpu", "partial", "cpu"):
        group = [(v, fit) for v, k, fit in rated if k == kind]
        if group:
            break
    if kind == "gpu":
        v, fit = max(group, key=lambda vf: (quality(vf[0]), -vf[0].file_size))
        why = "the best quality that fits entirely on the GPU"
    else:
        sweet = quant.FILE_TYPES[quant.SWEET_SPOT].quality
        modest = [vf for vf in group if quality(vf[0]) <= sweet]
        if modest:
            v, fit = max(modest, key=lambda vf: (quality(vf[0]), -vf[0].file_size))
            why = f"nothing fits entirely on the GPU, so the best quality up to {quant.SWEET_SPOT}: weights in RAM are read for every token, and bigger files cost speed for little quality"
        else:
            v, fit = min(group, key=lambda vf: (quality(vf[0]), vf[0].file_size))
            why = f"nothing fits entirely on the GPU and nothing at or below {quant.SWEET_SPOT} is offered, so the smallest above it"
    value = {
        **v.to_dict(),
        "fit": kind,
        "n_gpu_layers": fit.n_gpu_layers,
        "context_length": ctx,
        "kv_type": fit.settings.kv_type,
        "candidates": [{"name": c.name, "file_size": c.file_size, "fit": k} for c, k, _ in rated],
    }
    others = ", ".join(f"{c.name} ({_FIT_WORDS[k]})" for c, k, _ in rated if c is not v) or "no other variant fits"
    return Choice(value, f"{v.name} ({fmt_bytes(v.file_size)}) runs {_FIT_WORDS[kind]} at {ctx:,} tokens: {why}. Also possible: {others}.")
