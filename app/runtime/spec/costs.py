"""The verify-cost curve: what evaluating n tokens in one `llama_decode` batch costs, for a model
as it is loaded (file, GPU layers, threads), measured once and kept in the measurement store.

Speculation pays only when verifying k + 1 tokens costs much less than k + 1 single steps; that
ratio depends on the machine (compute- or memory-bound) and on the model, so it is measured, at
the first reply that could speculate, right where the model runs: the batches are decoded at the
end of the context's held tokens and forgotten again (`KvSequence.cut`), so the conversation's
cache is untouched. Sizes are measured interleaved, each several times, and the median of each
kept (the fastest would flatter the batches, whose timings scatter more). One token is timed as plain decoding pays
it: the median of a run of ``SINGLE_RUN`` single-token decodes one after the other. Timed alone,
one decode after a batch costs up to 1.5x what each of a run costs on this machine (it takes a few
decodes to get back to speed), which made every batch look cheap beside it and the cost model
promise speed-ups that never came (measured ÷ predicted 0.62 on the copying bench).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from app.runtime.measurements import VERIFY_COST, MeasurementStore
from app.runtime.planner.speculation import VerifyCurve

SIZES = (1, 2, 3, 5, 9, 13)  # 13: the longest verify (planner.speculation.K_MAX guesses and the pending token)
REPEATS = 3
SINGLE_RUN = 16  # one token's cost: the median of this many consecutive single-token decodes


def cost_key(path: str | Path, n_gpu_layers: int, threads: int | None) -> str:
    """The measurement store's key for a model as loaded (its file, GPU layers and threads): what a
    verify curve or a draft token's cost depends on besides the machine. The engine builds it from
    the plan, before anything is loaded."""
    return f"{Path(str(path)).name}|ngl{int(n_gpu_layers)}|t{int(threads or 0)}"


def curve_key(llm: Any) -> str:
    """`cost_key` of a loaded model."""
    return cost_key(llm.model_path, llm.model_params.n_gpu_layers, llm.context_params.n_threads)


def measure(kv: Any, *, sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS) -> VerifyCurve | None:
    """Seconds per batch size, on ``kv``'s context at its current end; None when there is no room."""
    base = kv.n
    sizes = tuple(n for n in sizes if n <= kv.n_batch)
    if base + max(*sizes, SINGLE_RUN) + 1 > kv.n_ctx:
        return None
    filler = (kv.held()[-max(sizes):] if base else []) or [0]
    tokens = (filler * (max(sizes) // len(filler) + 1))[: max(sizes)]
    times: dict[int, list[float]] = {n: [] for n in sizes}
    try:
        kv.decode(tokens[:2], all_logits=True)  # warm-up: first-use allocations are not the cost
        kv.cut(base)
        for _ in range(repeats):
            for n in sizes:
                started = time.perf_counter()
                if n == 1:
                    took = _single_decode(kv, tokens)
                else:
                    kv.decode(tokens[:n], all_logits=True)
                    took = time.perf_counter() - started
                kv.cut(base)
                times[n].append(took)
    finally:
        kv.cut(base)
    return VerifyCurve(monotone({n: statistics.median(t) for n, t in times.items()}))


def _single_decode(kv: Any, tokens: list[int]) -> float:
    """Seconds per token of a run of single-token decodes, as plain decoding makes them: the median
    of the run, since the first few after a batch run up to 1.5x slower on this machine."""
    times = []
    for token in (tokens * SINGLE_RUN)[:SINGLE_RUN]:
        started = time.perf_counter()
        kv.decode([token])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def monotone(seconds: dict[int, float]) -> dict[int, float]:
    """A batch never costs less than a smaller one: a timing disturbed by other work on the machine
    (one token taking longer than two) is raised or lowered to keep the curve non-decreasing, one
    token being no dearer than the cheapest batch."""
    sizes = sorted(seconds)
    out, floor = {}, min(seconds.values())
    for n in sizes:
        floor = max(floor, seconds[n]) if n > sizes[0] else floor
        out[n] = floor
    return out


def stored_or_measured(kv: Any, store: MeasurementStore | None) -> tuple[VerifyCurve | None, str]:
    """The curve for this model as loaded, and where it came from ("stored", "measured", "none")."""
    key = curve_key(kv.llm)
    if store is not None:
        saved = store.get(VERIFY_COST, key)
        if saved:
            try:
                return VerifyCurve.from_dict(saved), "stored"
            except (KeyError, TypeError, ValueError):
                pass
    curve = measure(kv)
    if curve is None:
        return None, "none"
    if store is not None:
        store.put(VERIFY_COST, curve.to_dict(), key=key)
    return curve, "measured"
