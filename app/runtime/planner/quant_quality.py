"""Which quantized variant to recommend, by measured quality rather than by size alone.

"Recommended for this computer" is the smallest variant that fits the plan and keeps the mean KL
divergence of its next-token distributions against its source at or below ``KL_LIMIT`` (0.01: at
that level the quantized model picks the source's most likely token about 97-98 % of the time and
perplexity moves by about a percent). Smaller is better among those because every byte is read
once per generated token.

The KL of a variant comes, in this order, from:

1. this model's own evaluation (``hearth quantize --eval`` measures every output against its
   source on held-out text): a figure measured on the model beats any table;
2. else :func:`expected_kl`, a table by model size: quantization noise hurts small models far
   more than large ones (a 135M model loses at 4 bits what a 70B one loses at 3). The table holds
   the expected mean KL of Q4_K_M per size class; another type's figure is scaled from it by its
   effective bits per weight (noise power, and so KL, falls about 4x per extra bit). The smallest
   class is anchored on Hearth's own measurement of SmolLM2-135M; the larger ones on llama.cpp's
   published KL-divergence figures for Llama-2/3 7-8B and 70B class models, rounded up: it is a
   conservative prior, not a measurement, and the reason says so.

A pure function of its arguments, as every planner decision: no probing, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.runtime.planner import quant
from app.runtime.planner.memory import fmt_bytes
from app.runtime.planner.schema import Choice

KL_LIMIT = 0.01
Q4_K_M_BITS = quant.FILE_TYPES["Q4_K_M"].quality

# (parameters up to, expected mean KL of Q4_K_M without an importance matrix)
Q4_K_M_KL_BY_SIZE: tuple[tuple[float, float], ...] = (
    (0.5e9, 0.05),  # SmolLM2-135M: 0.051 measured by Hearth (F16 -> Q4_K_M, 2,235 held-out tokens)
    (2e9, 0.035),
    (5e9, 0.025),
    (10e9, 0.02),  # Llama-3-8B class
    (20e9, 0.014),
    (50e9, 0.01),
    (float("inf"), 0.007),  # 70B class
)
IMATRIX_FACTOR = 0.65  # with Hearth's importance matrix: 0.64x measured on SmolLM2 for Q4_K_M and Q3_K_S
# Effective bits of the torch weight-only schemes, placed on the same scale as the GGUF types:
# round-to-nearest int4 with fp32 group scales loses more than a k-quant of the same size.
TORCH_BITS = {"int8": 8.0, "int4-g32": 4.2, "int4-g64": 4.0, "int4-g128": 3.8}


@dataclass(frozen=True)
class Candidate:
    """One variant the person could keep: its name, size, whether it fits the plan on this
    computer, and, when it was evaluated, its measured mean KL against the source."""

    name: str  # "Q4_K_M", "int4-g64"
    file_size: int  # bytes
    fits: bool = True
    kl_mean: float | None = None
    imatrix: bool = False  # made with an importance matrix (or GPTQ for torch schemes)


def effective_bits(name: str) -> float | None:
    if name in TORCH_BITS:
        return TORCH_BITS[name]
    base = name.removesuffix("-asym")
    if base in TORCH_BITS:
        return TORCH_BITS[base] + 0.1
    ft = quant.file_type(name)
    return ft.quality if ft is not None else None


def expected_kl(name: str, parameters: int, *, imatrix: bool = False) -> float | None:
    """The table's mean KL for ``name`` on a model of ``parameters``; None for an unknown type.
    16-bit types are the source itself: 0."""
    bits = effective_bits(name)
    if bits is None:
        return None
    if bits >= 16:
        return 0.0
    q4 = next(kl for limit, kl in Q4_K_M_KL_BY_SIZE if parameters <= limit)
    kl = q4 * 4.0 ** (Q4_K_M_BITS - bits)
    if imatrix and bits <= 5.0:
        kl *= IMATRIX_FACTOR
    return kl


def recommend(
    candidates: Sequence[Candidate],
    *,
    parameters: int,
    evaluation: Mapping[str, float] | None = None,
    limit: float = KL_LIMIT,
) -> Choice:
    """The smallest fitting candidate whose mean KL (measured, else expected) is at most ``limit``.

    ``evaluation``: measured mean KL by candidate name (this model's own evaluation), which beats
    a candidate's own ``kl_mean`` and the table. When no fitting candidate keeps the limit, the
    one with the least KL is chosen and the reason says so; when none fits, the value is None.
    """
    measured = dict(evaluation or {})
    rated: list[tuple[Candidate, float | None, bool]] = []  # (candidate, KL, measured?)
    for c in candidates:
        kl = measured.get(c.name, c.kl_mean)
        if kl is not None:
            rated.append((c, float(kl), True))
        else:
            rated.append((c, expected_kl(c.name, parameters, imatrix=c.imatrix), False))
    fitting = [r for r in rated if r[0].fits]
    if not fitting:
        smallest = min(candidates, key=lambda c: c.file_size, default=None)
        tail = f"; the smallest is {smallest.name} ({fmt_bytes(smallest.file_size)})" if smallest else ""
        return Choice(None, f"None of the {len(candidates)} variants fits this computer{tail}.")
    known = [r for r in fitting if r[1] is not None]
    good = sorted((r for r in known if r[1] <= limit), key=lambda r: (r[0].file_size, r[1]))
    if good:
        chosen, kl, was_measured = good[0]
        why = f"the smallest variant that fits this computer and keeps the mean KL divergence from the original at or below {limit:g} ({_kl_words(kl, was_measured, parameters)})"
    elif known:
        chosen, kl, was_measured = min(known, key=lambda r: (r[1], r[0].file_size))
        why = f"no variant that fits keeps the mean KL divergence at or below {limit:g}, so the closest to the original ({_kl_words(kl, was_measured, parameters)})"
    else:
        chosen, kl, was_measured = max(fitting, key=lambda r: r[0].file_size)
        why = "no quality figure is known for any of them, so the largest that fits"
    smaller = sorted((r for r in known if r[0].file_size < chosen.file_size and r[1] is not None and r[1] > limit), key=lambda r: r[0].file_size)
    rejected = ""
    if smaller and good:
        r = smaller[-1]
        rejected = f" {r[0].name} is smaller but {'measured' if r[2] else 'expected'} at {r[1]:.3f}, which changes the output noticeably."
    value = {
        "name": chosen.name,
        "file_size": chosen.file_size,
        "kl_mean": kl,
        "kl_source": "measured" if was_measured else ("table" if kl is not None else "unknown"),
        "limit": limit,
    }
    return Choice(value, f"{chosen.name} ({fmt_bytes(chosen.file_size)}): {why}.{rejected}")


def _kl_words(kl: float | None, was_measured: bool, parameters: int) -> str:
    if kl is None:
        return "no figure"
    if was_measured:
        return f"measured on this model: {kl:.4f}"
    return f"expected for a model of {_size_words(parameters)}: about {kl:.3f}; not measured on this one"


def _size_words(parameters: int) -> str:
    return f"{parameters / 1e9:.1f}B parameters" if parameters >= 1e9 else f"{parameters / 1e6:.0f}M parameters"
