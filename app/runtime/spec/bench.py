"""`hearth bench spec`: speculative decoding off and on, in interleaved pairs, with medians.

Cases: (1) copying a given text with prompt lookup, (2) free writing with the planner's choice
(``auto``: lookup where it would pay, plain steps where it would not), (3) the torch backend's
SpecExec on an offloaded SmolLM2 (`app.runtime.spec.offload.offload_case`, when present), and
(4) ``near_tie``: one greedy pair (lookup on the copying prompt) on F16 and Q4_K_M copies of the
embedded model, identical or split at a near tie whose margin is reported (`near_tie_case`). Each pair
runs the same greedy request off then on in one process on the same loaded model, so both see the
same machine load; each figure is the median of the per-pair ratios of decode tokens/s.

The cost model's prediction for a run is what its own steps should have cost by the verify-cost
curve measured at the start: (tokens - 1) / sum of verify(drafted + 1) over its steps, a plain
step costing 1; ``predicted_vs_measured`` is measured / predicted (the goal: at least 0.85).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.runtime.measurements import VERIFY_COST, MeasurementStore
from app.runtime.planner.speculation import VerifyCurve
from app.runtime.protocol import Sampling

COPY_TEXT = (
    "It was a bright cold day in the middle of April, and the river ran high with the snow that had melted in the hills. "
    "The ferryman waited at the landing with his hands in his pockets, watching the far bank, where a cart stood with "
    "two horses and a driver who did not seem in any hurry to cross. Gulls turned above the water. A bell rang somewhere "
    "behind the town, three times, and then stopped, and the ferryman took his hands out of his pockets and untied the rope."
)
COPY = [{"role": "user", "content": "Copy the following text exactly, word for word:\n\n" + COPY_TEXT}]
FREE = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]
MIN_PAIRS = 5


def _median(values: Sequence[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 4), "values": [round(v, 4) for v in values],
            "min": round(min(values), 4), "max": round(max(values), 4)}


def _load(threads: int | None, path: Path | None = None) -> Any:
    """The embedded model (or the GGUF at ``path``) with the settings the planner gives it here
    (flash attention included)."""
    from app.runtime import hardware, library, planner
    from app.runtime.backends.llama_cpp import LlamaCppBackend

    model = library.read_gguf(path, source="folder") if path is not None else library.read_gguf(library.embedded_model_path(), source="embedded")
    made = planner.plan(model, hardware.probe(), planner.UserPrefs(context_length=2048, threads=threads))
    return LlamaCppBackend(model.path, planner.llama_cpp_kwargs(made))


def _run(backend: Any, messages: list[dict[str, str]], sampling: Sampling, drafter: Any, *, mask: Any = None) -> dict[str, Any]:
    """One timed reply; ``held`` is what the context holds after it (the prompt and the reply's
    token ids but the last one drawn). ``mask`` watches the plain path's logits (`near_tie`)."""
    backend.chat([{"role": "user", "content": "Hello."}], Sampling(temperature=0.0, max_tokens=1), on_token=lambda _: None,
                 is_cancelled=lambda: False)  # the same cache state before every timed run: the prompt is evaluated whole
    out = backend.chat(messages, sampling, on_token=lambda _: None, is_cancelled=lambda: False, drafter=drafter, mask=mask)
    tps = (out.completion_tokens - 1) / out.decode_seconds if out.completion_tokens > 1 and out.decode_seconds > 0 else 0.0
    return {"text": out.text, "tokens": out.completion_tokens, "tps": tps, "speculation": out.speculation,
            "held": backend.held_tokens()}


def _predicted(drafter: Any, tokens: int, curve: VerifyCurve) -> float | None:
    choice = getattr(drafter, "choice", None)
    if choice is not None and not choice.on:
        return 1.0  # the planner kept the reply plain: it predicts plain decoding's speed
    sizes = list(getattr(drafter, "drafted_sizes", []))
    if tokens < 2 or not sizes:
        return None
    return (tokens - 1) / sum(curve.relative(n + 1) for n in sizes)


def _case(backend: Any, messages: list[dict[str, str]], sampling: Sampling, mode: str, pairs: int, curve: VerifyCurve,
          store: MeasurementStore) -> dict[str, Any]:
    from app.runtime.spec.adaptive import AdaptiveDrafter
    from app.runtime.spec.lookup import PromptLookup

    ratios, predicted, off_tps, on_tps, accepted_per_step, identical, last = [], [], [], [], [], [], {}
    for _ in range(pairs):
        off = _run(backend, messages, sampling, None)
        drafter = AdaptiveDrafter(PromptLookup(), mode=mode, kind="lookup", store=store, curve=curve)
        on = _run(backend, messages, sampling, drafter)
        if off["tps"] <= 0 or on["tps"] <= 0:
            continue
        off_tps.append(off["tps"])
        on_tps.append(on["tps"])
        ratios.append(on["tps"] / off["tps"])
        p = _predicted(drafter, on["tokens"], curve)
        if p is not None:
            predicted.append(p)
        spec = on["speculation"] or {}
        if spec.get("steps"):
            accepted_per_step.append(spec["accepted"] / spec["steps"])
        identical.append(off["text"] == on["text"])
        last = spec
    report: dict[str, Any] = {
        "mode": mode, "pairs": len(ratios), "tokens": sampling.max_tokens,
        "off_tps": _median(off_tps) if off_tps else None, "on_tps": _median(on_tps) if on_tps else None,
        "speedup": _median(ratios) if ratios else None,
        "predicted_speedup": _median(predicted) if predicted else None,
        "accepted_per_step": _median(accepted_per_step) if accepted_per_step else None,
        "greedy_identical": all(identical) if identical else None,
        "last_speculation": last,
    }
    if ratios and predicted:
        report["measured_over_predicted"] = round(statistics.median(ratios) / statistics.median(predicted), 4)
    return report


def _offload(pairs: int, max_tokens: int) -> dict[str, Any]:
    try:
        from app.runtime.spec import offload  # the torch SpecExec case (another module's)
    except ImportError as exc:
        return {"missing": f"app.runtime.spec.offload is not available ({exc})"}
    case = getattr(offload, "offload_case", None)
    if case is None:
        return {"missing": "app.runtime.spec.offload has no offload_case"}
    return dict(case(pairs=pairs, max_tokens=max_tokens))


def run(*, measurements: MeasurementStore, pairs: int = MIN_PAIRS, tokens: int = 128, threads: int | None = None,
        offload: bool = True, near_tie: bool = True) -> dict[str, Any]:
    """The whole report; the verify-cost curve is measured afresh and stored. ``near_tie`` adds one
    greedy pair per other GGUF type (`app.runtime.spec.near_tie`), outside the speed figures."""
    from app.runtime import bench as runtime_bench
    from app.runtime.spec import costs
    from app.runtime.spec import near_tie as ties

    pairs = max(pairs, 1)
    backend = _load(threads)
    try:
        curve = costs.measure(backend._kv)
        if curve is None:
            raise RuntimeError("no room in the context to measure the verify cost")
        measurements.put(VERIFY_COST, curve.to_dict(), key=costs.curve_key(backend._kv.llm))
        copy = _case(backend, COPY, Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=tokens), "lookup", pairs, curve, measurements)
        free = _case(backend, FREE, Sampling(temperature=0.0, repeat_penalty=1.1, max_tokens=tokens), "auto", pairs, curve, measurements)
        settings = dict(backend.settings)
    finally:
        backend.close()
    off = _offload(pairs, tokens) if offload else {"missing": "skipped (--no-offload)"}
    cases = {"lookup_copy": copy, "lookup_free": free, "offload": off}
    figures: dict[str, Any] = {
        "lookup_copy_speedup": copy["speedup"], "lookup_free_speedup": free["speedup"],
        "offload_speedup": off.get("speedup") if isinstance(off.get("speedup"), dict) else ({"median": off["speedup"]} if "speedup" in off else {"missing": off.get("missing", "no figure")}),
        "predicted_vs_measured": {name: {"predicted": (c.get("predicted_speedup") or {}).get("median") if isinstance(c.get("predicted_speedup"), dict) else c.get("predicted_speedup"),
                                         "measured": (c.get("speedup") or {}).get("median") if isinstance(c.get("speedup"), dict) else c.get("speedup"),
                                         "ratio": c.get("measured_over_predicted")}
                                  for name, c in cases.items() if "missing" not in c},
        "greedy_identical": all(c.get("greedy_identical") is not False for c in cases.values() if "missing" not in c),
    }
    if near_tie:  # F16 and Q4_K_M copies: identical up to the first near tie, with its margin
        cases["near_tie"] = near_tie_case(tokens=tokens, threads=threads)
        figures["near_tie"] = ties.figures(cases["near_tie"])
    return {
        "machine": {**runtime_bench.machine_info(), "model_file": Path(backend_path()).name},
        "settings": {"pairs": pairs, "tokens": tokens, "load_settings": settings},
        "verify_cost": curve.to_dict(),
        "cases": cases,
        "figures": figures,
        "targets": {"lookup_copy_speedup": ">= 1.3", "lookup_free_speedup": ">= 0.97", "offload_speedup": ">= 2.5",
                    "predicted_vs_measured": ">= 0.85 (measured / predicted)", "greedy_identical": "true",
                    "near_tie": "identical, or split only where the plain path's top two logits are nearly tied"},
    }


def near_tie_pair(path: Path, messages: list[dict[str, str]] = COPY, *, tokens: int = 128, threads: int | None = None,
                  label: str | None = None, mode: str = "lookup") -> dict[str, Any]:
    """One greedy plain/speculated pair on the GGUF at ``path`` (`near_tie.compare`, loaded and run
    as this bench's other cases are)."""
    from app.runtime.spec import near_tie as ties

    return ties.compare(path, messages, load=_load, run=_run, mode=mode, tokens=tokens, threads=threads, label=label)


def near_tie_case(*, tokens: int = 128, threads: int | None = None, types: Sequence[str] = ("F16", "Q4_K_M"),
                  make: Callable[[str], Path] | None = None) -> dict[str, Any]:
    """The near_tie case, runnable alone: one pair per type (the copying prompt) on copies of the
    embedded model made in a temporary folder (or by ``make``: a type's name to its file, as the
    tests' `requantized` fixture)."""
    from app.runtime import library
    from app.runtime.spec import near_tie as ties

    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hearth-near-tie-") as folder:
        for name in types:
            path = make(name) if make is not None else ties.requantize(library.embedded_model_path(), Path(folder), name, threads=threads)
            result = near_tie_pair(path, tokens=tokens, threads=threads, label=name)
            result.pop("plain_ids")
            result.pop("speculated_ids")
            report[name] = result
    return report


def backend_path() -> str:
    from app.runtime import library

    return str(library.embedded_model_path())


def suite(args: Any, measurements: MeasurementStore) -> dict[str, Any]:
    """`hearth bench spec` with the command line's --runs (pairs) and --tokens."""
    return run(measurements=measurements, pairs=max(int(args.runs), 1), tokens=int(args.tokens))
