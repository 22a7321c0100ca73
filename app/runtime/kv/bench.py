"""`hearth bench kv`: what each KV policy costs in perplexity, memory and decode speed.

Model: SmolLM2-135M-Instruct (the embedded GGUF, as an fp32 HF folder) through transformers, with
the caches of this package, driven exactly as the decode-loop contract says (package docstring).
Text: ``held_out_text()`` (Volume II of *Persuasion*), never tuned on.

* **Quality within the trained context.** Perplexity over the first ``EVAL_LEN`` tokens, fed in
  chunks of ``CHUNK`` tokens; the cache is pruned to its budget between chunks and each chunk is
  SnapKV's "prefill". Every policy at 10, 25 and 50% of ``EVAL_LEN`` against the full cache, plus a
  plain window without sinks (``sink_window`` with ``sinks=0``), the StreamingLLM sanity check.
* **Beyond the trained context** (8,192 tokens): ``LONG_LEN`` tokens, perplexity per 1,024-token
  bucket, full against each policy at the 25% budget (so these runs also give the 25% column above).
* **Memory and speed.** Context grown by ``SPEED_CHUNK``-token prefills; at each of
  ``SPEED_CONTEXTS`` the KV bytes held (after eviction) and greedy decode tokens/s of
  ``min(--tokens, MAX_DECODE)`` tokens, full against each policy at ``SPEED_BUDGET`` tokens.
* **Torch decode** (``app.runtime.backends.torch_bench.decode_speed``).

Run time: about 108k tokens of chunked prefill (5 x 10,240 + 9 x 4,096 + 5 x 4,096) and 640 decode
steps. At the single-thread CPU cost measured here (0.32 s per 64-token chunk at short context,
about 5-6 ms a token with the attention of longer contexts) that is 11-13 minutes of CPU plus the
torch decode section, inside the 20-minute target on an idle 2-core machine; a machine shared with
other jobs takes several times longer (the session that wrote this ran a reduced configuration in
parallel processes, see its report). ``--runs`` is not used; ``--tokens`` caps at ``MAX_DECODE``.

The ranking (the best policy and why) goes into the measurement store, where the torch plan reads
its default eviction policy; the whole report is printed and written to ``--json`` by the CLI, with
its PNG beside it (or in ``paths().cache / "bench"`` without ``--json``). Benchmarks are not tests:
nothing here asserts; the targets are reported with their verdicts.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from app.paths import paths
from app.runtime.measurements import KV_RANKING, MeasurementStore, kv_ranking

log = logging.getLogger(__name__)

CHUNK = 64
EVAL_LEN = 4096
LONG_LEN = 10240
TRAINED_CONTEXT = 8192
BUCKET = 1024
FRACTIONS = (0.10, 0.25, 0.50)
EVICTING = ("sink_window", "h2o", "snapkv", "keydiff")
SPEED_CONTEXTS = (512, 1024, 2048, 4096)
SPEED_BUDGET = 512
SPEED_CHUNK = 256
MAX_DECODE = 64
TARGET_SINK_25 = 1.10  # sink_window at 25% within +10% of full's perplexity
# -- measurement --------------------------------------------------------------------------------
def load_model() -> tuple[Any, Any, Path]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.runtime.hf_folder import hf_folder_for_gguf
    from app.runtime.kv import OBSERVED_ATTENTION
    from app.runtime.library import embedded_model_path

    folder = hf_folder_for_gguf(embedded_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.set_attn_implementation(OBSERVED_ATTENTION)  # SDPA unless a cache observes (h2o, snapkv)
    return model, tokenizer, folder


def forward(model: Any, cache: Any, ids: torch.Tensor) -> torch.Tensor:
    """One forward of ``ids`` [1, n] through ``cache`` per the decode-loop contract; logits [1, n, V]."""
    out = model(
        input_ids=ids,
        past_key_values=cache,
        position_ids=cache.next_positions(ids.shape[1]),
        use_cache=True,
        **cache.forward_kwargs(),
    )
    return out.logits


@torch.no_grad()
def token_nll(model: Any, ids: torch.Tensor, name: str, budget: int | None, chunk: int = CHUNK, **options: Any) -> list[float]:
    """Negative log-likelihood of tokens 1..L-1 of ``ids`` [1, L], fed in chunks through the policy."""
    from app.runtime.kv import make_cache

    cache = make_cache(name, budget_tokens=budget, config=model.config, **options)
    nll: list[float] = []
    for s in range(0, ids.shape[1] - 1, chunk):
        x = ids[:, s : min(s + chunk, ids.shape[1] - 1)]
        y = ids[:, s + 1 : s + 1 + x.shape[1]]
        logp = torch.log_softmax(forward(model, cache, x).float(), dim=-1)
        nll.extend((-logp.gather(-1, y[..., None])[0, :, 0]).tolist())
    return nll


def ppl(nll: list[float]) -> float:
    return round(math.exp(sum(nll) / len(nll)), 3)


@torch.no_grad()
def speed_curve(
    model: Any, ids: torch.Tensor, name: str, budget: int | None, n_decode: int, contexts: tuple[int, ...] = SPEED_CONTEXTS
) -> list[dict[str, Any]]:
    """KV bytes and greedy decode tok/s at each of ``contexts``, the context grown in one pass."""
    from app.runtime.kv import make_cache

    cache = make_cache(name, budget_tokens=budget, config=model.config)
    rows: list[dict[str, Any]] = []
    fed = 0
    for target in contexts:
        while fed < target:
            step = min(SPEED_CHUNK, target - fed)
            logits = forward(model, cache, ids[:, fed : fed + step])
            fed += step
        token = logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(n_decode):
            token = forward(model, cache, token)[:, -1:].argmax(-1)
        seconds = time.perf_counter() - start
        cache.trim()
        rows.append(
            {
                "context": cache.seen_tokens,
                "kept_tokens": cache.get_seq_length(),
                "kv_mib": round(cache.kv_bytes() / 2**20, 2),
                "decode_tok_s": round(n_decode / seconds, 2),
            }
        )
        log.info("speed %s: %s", name, rows[-1])
    return rows


def torch_decode(folder: Path, n_tokens: int) -> dict[str, Any]:
    """The torch backend's decode speeds: fp32, bf16, int8 and the default on CPU (bf16 + int8)
    side by side with plain fp32 generate()."""
    from app.runtime.backends import torch_bench

    try:
        return torch_bench.decode_speed(folder, dtypes=("float32", "bfloat16", "int8", "bfloat16+int8"), n_tokens=n_tokens)
    except Exception as exc:  # a failure there must not lose the KV figures measured above
        log.exception("torch decode bench failed")
        return {"error": f"{type(exc).__name__}: {exc}"}


def budgets_for(eval_len: int) -> dict[str, dict[str, Any]]:
    return {f"{round(f * 100)}%": {"fraction": f, "tokens": round(f * eval_len)} for f in FRACTIONS}


def long_runs(model: Any, ids: torch.Tensor, long_len: int, budget: int) -> dict[str, list[float]]:
    """Per-token NLL over ``long_len`` tokens: full, and each policy at ``budget`` (the 25% one)."""
    nll = {"full": token_nll(model, ids[:, :long_len], "full", None)}
    for name in EVICTING:
        nll[name] = token_nll(model, ids[:, :long_len], name, budget)
        log.info("long run %s done", name)
    return nll


def beyond_section(long_nll: dict[str, list[float]], long_len: int, budget: int) -> dict[str, Any]:
    buckets = [(s, min(s + BUCKET, long_len - 1)) for s in range(0, long_len - 1, BUCKET)]
    return {
        "length": long_len,
        "budget_tokens": budget,
        "bucket_tokens": BUCKET,
        "bucket_starts": [s for s, _ in buckets],
        "ppl_per_bucket": {p: [ppl(v[s:e]) for s, e in buckets] for p, v in long_nll.items()},
        "ppl_inside_trained": {p: ppl(v[: TRAINED_CONTEXT - 1]) for p, v in long_nll.items()},
        "ppl_past_trained": (
            {p: ppl(v[TRAINED_CONTEXT - 1 :]) for p, v in long_nll.items()} if long_len > TRAINED_CONTEXT else None
        ),
    }


def within_runs(model: Any, ids: torch.Tensor, eval_len: int, budgets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Perplexities over ``eval_len`` tokens at the budgets the long runs do not give, and the plain window."""
    within_ids = ids[:, :eval_len]
    b25 = budgets["25%"]["tokens"]
    policies: dict[str, dict[str, float]] = {p: {} for p in EVICTING}
    for key, b in budgets.items():
        if b["tokens"] != b25:
            for name in EVICTING:
                policies[name][key] = ppl(token_nll(model, within_ids, name, b["tokens"]))
            log.info("within %s done", key)
    window = ppl(token_nll(model, within_ids, "sink_window", b25, sinks=0))
    return {"policies": policies, "window": window}


def within_section(
    eval_len: int, budgets: dict[str, dict[str, Any]], long_nll: dict[str, list[float]], runs: dict[str, Any]
) -> dict[str, Any]:
    b25 = budgets["25%"]["tokens"]
    policies = {
        name: {
            key: ppl(long_nll[name][: eval_len - 1]) if b["tokens"] == b25 else runs["policies"][name][key]
            for key, b in budgets.items()
        }
        for name in EVICTING
    }
    return {
        "length": eval_len,
        "chunk": CHUNK,
        "full": ppl(long_nll["full"][: eval_len - 1]),
        "budgets": budgets,
        "policies": policies,
        "plain_window_no_sinks": {"budget_tokens": b25, "ppl": runs["window"]},
    }


# -- the report ---------------------------------------------------------------------------------
def summarise(within: dict[str, Any], beyond: dict[str, Any]) -> dict[str, Any]:
    """Best policy per budget, the overall best (mean perplexity ratio to full) and the targets."""
    full = within["full"]
    best_per_budget = {}
    for key in within["budgets"]:
        scores = {p: within["policies"][p][key] for p in EVICTING}
        winner = min(scores, key=scores.get)
        best_per_budget[key] = {"policy": winner, "ppl": scores[winner], "vs_full": round(scores[winner] / full, 3)}
    ratios = {p: sum(within["policies"][p][k] / full for k in within["budgets"]) / len(within["budgets"]) for p in EVICTING}
    best = min(ratios, key=ratios.get)
    key25 = next(k for k, frac in within["budgets"].items() if abs(frac["fraction"] - 0.25) < 1e-9)
    sink25 = within["policies"]["sink_window"][key25] / full
    window25 = within["plain_window_no_sinks"]["ppl"] / full
    reason = (
        f"{best} measured best on this machine: perplexity {ratios[best]:.3f}x the full cache on average "
        f"over budgets of 10/25/50% of {within['length']} tokens (at 25%: "
        f"{within['policies'][best][key25]} vs {full}); `hearth bench kv`, "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d')}."
    )
    return {
        "best_per_budget": best_per_budget,
        "mean_ratio_to_full": {p: round(r, 3) for p, r in ratios.items()},
        "best_overall": {"policy": best, "reason": reason},
        "targets": {
            "sink_window_25pct_vs_full": {
                "value": round(sink25, 3),
                "target": f"<= {TARGET_SINK_25}",
                "verdict": "pass" if sink25 <= TARGET_SINK_25 else "fail",
            },
            "plain_window_collapses": {
                "value": round(window25, 3),
                "note": "a window without sinks, same budget and positions, vs full",
                "verdict": "pass" if window25 > sink25 * 1.2 else "fail",
            },
        },
    }


def run(
    *,
    eval_len: int = EVAL_LEN,
    long_len: int = LONG_LEN,
    n_decode: int = 32,
    speed_contexts: tuple[int, ...] = SPEED_CONTEXTS,
    speed_budget: int = SPEED_BUDGET,
    with_torch_decode: bool = True,
) -> dict[str, Any]:
    """Measure everything; smaller sizes than the defaults are for checking the harness itself."""
    from app.runtime.texts import held_out_text

    started = time.perf_counter()
    model, tokenizer, folder = load_model()
    ids = tokenizer(held_out_text(), return_tensors="pt").input_ids[:, : max(eval_len, long_len)]
    budgets = budgets_for(eval_len)
    long_nll = long_runs(model, ids, long_len, budgets["25%"]["tokens"])
    beyond = beyond_section(long_nll, long_len, budgets["25%"]["tokens"])
    within = within_section(eval_len, budgets, long_nll, within_runs(model, ids, eval_len, budgets))
    log.info("perplexities done (%.0f s)", time.perf_counter() - started)
    report: dict[str, Any] = {
        "suite": "kv",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "model": folder.name,
        "dtype": "float32",
        "text": "held_out_text(): Persuasion, Volume II (resources/texts/README.md)",
        "within_trained_context": within,
        "beyond_trained_context": beyond,
        **summarise(within, beyond),
    }
    if speed_contexts:
        report["memory_and_speed"] = {
            "budget_tokens": speed_budget,
            "decode_tokens": n_decode,
            "policies": {
                name: speed_curve(model, ids, name, None if name == "full" else speed_budget, n_decode, speed_contexts)
                for name in ("full", *EVICTING)
            },
            "cost_notes": {
                "h2o": "explicit attention on every forward (no SDPA) + 4 B/token/KV head/layer of scores",
                "snapkv": "explicit attention on prefill forwards only + 4 B/token/KV head/layer of scores",
                "keydiff": "one cosine-score pass over the cached keys per eviction",
                "sink_window": "re-rotating the kept keys (elementwise) on each forward after the first eviction",
            },
        }
    if with_torch_decode:
        report["torch_decode"] = torch_decode(folder, n_decode)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def save(report: dict[str, Any], json_path: str | Path | None, measurements: MeasurementStore) -> dict[str, Any]:
    """Keep the ranking in ``measurements`` (the planner's default eviction policy) and draw the PNG
    beside ``json_path`` (the CLI writes the JSON there), else in the cache's bench folder."""
    from app.runtime.kv.plot import write_png

    keep_ranking(report, measurements)
    png = Path(json_path).with_suffix(".png") if json_path else paths().cache / "bench" / "kv.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    note = write_png(report, png)
    report["plot"] = str(png) if note is None else note
    return report


def keep_ranking(report: dict[str, Any], measurements: MeasurementStore) -> None:
    """The ranking of a report (or of ``summarise``) into the store: the torch plan's default eviction policy."""
    measurements.put(KV_RANKING, kv_ranking(report))


def run_from_args(args: Any, measurements: MeasurementStore) -> dict[str, Any]:
    """`hearth bench kv`: the CLI prints the report and writes it to --json; --tokens sets decode length."""
    n_decode = max(1, min(int(getattr(args, "tokens", 32) or 32), MAX_DECODE))
    report = run(n_decode=n_decode)
    return save(report, getattr(args, "json_path", None), measurements)
