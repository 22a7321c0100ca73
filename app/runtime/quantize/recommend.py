"""What "Recommended for this computer" means: the planner's fit joined to the quality rule.

Two questions, each answered where it lives: whether a variant fits this machine at the wanted
context is the planner's (`app.runtime.planner.choose_variant`, which rates every variant it
could run: entirely on the GPU, split, or on the CPU); which of those that fit keeps the model's
output close enough is `app.runtime.planner.quant_quality.recommend` (the smallest with a mean KL
divergence at or below 0.01, measured on this model when an evaluation has run, else from the
table by model size). Both the wizard's target list (before anything is made) and the pipeline's
report (after each result was measured) ask here, so they cannot disagree on the rule.

The measured figures are kept in the measurement store (kind ``quant_quality``, keyed by the
source file), so the next look at the same model's targets recommends from its own evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.runtime.library import ModelInfo
from app.runtime.measurements import QUANT_QUALITY
from app.runtime.planner.quant_quality import Candidate, recommend
from app.runtime.planner.schema import Choice
from app.runtime.protocol import RuntimeFailure

log = logging.getLogger(__name__)

_FIT_WORDS = {"gpu": "entirely on the GPU", "partial": "split between GPU and CPU", "cpu": "on the CPU"}


@dataclass(frozen=True)
class Offer:
    """One variant to weigh: made (a real file size, maybe a measured KL) or only planned."""

    name: str
    file_size: int
    imatrix: bool = False
    kl_mean: float | None = None


def fits_here(offers: Sequence[Offer], info: ModelInfo, hardware: Any, context_length: int | None) -> tuple[dict[str, str], int | None, str]:
    """``({name: "gpu"|"partial"|"cpu"}, context, why none fits)`` for the offers that fit."""
    from app.runtime.planner import Variant, choose_variant

    try:
        choice = choose_variant([Variant(o.name, max(o.file_size, 1)) for o in offers], info, hardware, context_length)
    except RuntimeFailure as exc:
        return {}, context_length, exc.message
    return {c["name"]: c["fit"] for c in choice.value["candidates"]}, int(choice.value["context_length"]), ""


def recommend_here(offers: Sequence[Offer], info: ModelInfo, hardware: Any, context_length: int | None, *,
                   evaluation: Mapping[str, float] | None = None) -> Choice:
    """The smallest offer that fits this machine and keeps the KL limit, with the reason in words;
    the value adds ``fit`` and ``context_length`` to `quant_quality.recommend`'s."""
    fits, ctx, none_fits = fits_here(offers, info, hardware, context_length)
    if not fits:
        return Choice(None, none_fits or "None of these variants fits this computer.")
    candidates = [Candidate(o.name, o.file_size, o.name in fits, o.kl_mean, o.imatrix) for o in offers]
    choice = recommend(candidates, parameters=int(info.parameters or 0), evaluation=evaluation)
    if choice.value is None:
        return choice
    name = choice.value["name"]
    where = f" It runs {_FIT_WORDS[fits[name]]}" + (f" at {ctx:,} tokens." if ctx else ".")
    return Choice({**choice.value, "fit": fits[name], "context_length": ctx}, choice.reason + where + _others(offers, fits, name))


def _others(offers: Sequence[Offer], fits: Mapping[str, str], chosen: str) -> str:
    """The other variants that fit, each named once, grouped by where they would run."""
    groups: dict[str, list[str]] = {}
    for o in sorted(offers, key=lambda o: -o.file_size):
        if o.name != chosen and o.name in fits:
            groups.setdefault(fits[o.name], []).append(o.name)
    others = len(offers) - 1
    if len(groups) == 1 and others > 3 and len(next(iter(groups.values()))) == others:
        return f" The {others} other types fit too, {_FIT_WORDS[next(iter(groups))]}."
    parts = [f"{_FIT_WORDS[kind]}: {', '.join(names)}" for kind, names in sorted(groups.items(), key=lambda kv: list(_FIT_WORDS).index(kv[0]))]
    return f" Also fits ({'; '.join(parts)})." if parts else ""


# ---- the measurement store ---------------------------------------------------------------------


def source_key(path: str | Path, size: int) -> str:
    return f"{Path(path).resolve()}|{int(size)}"


def figure_key(target: str, imatrix: bool) -> str:
    return f"{target}+imatrix" if imatrix else target


def remember(store: Any, path: str | Path, size: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """Keep each measured row's figures for this source (merged with earlier runs' figures)."""
    measured = {figure_key(str(r["target"]), bool(r.get("imatrix"))): {
        "kl_mean": float(r["kl_mean"]), "ppl_change_pct": r.get("ppl_change_pct"), "algorithm": r.get("algorithm"),
        "kind": r.get("kind"),
    } for r in rows if isinstance(r.get("kl_mean"), (int, float))}
    if store is None or not measured:
        return
    key = source_key(path, size)
    try:
        held = dict(store.get(QUANT_QUALITY, key) or {})
        held.update(measured)
        store.put(QUANT_QUALITY, held, key=key)
    except (OSError, ValueError):
        log.warning("could not keep the quantization figures of %s", path, exc_info=True)


def measured_kl(store: Any, path: str | Path, size: int, imatrix_for: Mapping[str, bool]) -> dict[str, float]:
    """``{target: mean KL}`` measured on this source, for the way each target would be made now
    (with or without an importance matrix, per ``imatrix_for``)."""
    if store is None:
        return {}
    try:
        held = store.get(QUANT_QUALITY, source_key(path, size)) or {}
    except (OSError, ValueError):
        log.warning("could not read the quantization figures of %s", path, exc_info=True)
        return {}
    out: dict[str, float] = {}
    for target, imatrix in imatrix_for.items():
        figures = held.get(figure_key(target, imatrix))
        if isinstance(figures, dict) and isinstance(figures.get("kl_mean"), (int, float)):
            out[target] = float(figures["kl_mean"])
    return out
