"""Calibrate the speed roofline on this machine with one short, real decode, and keep the result.

A naive roofline over-predicts: SmolLM2's 92 MiB per token at the 26 GB/s this machine copies
would be ~270 tok/s, while llama.cpp decodes ~110. One short measured run fixes the effective
bandwidth factor for the memory that bounds decode (the CPU's per-core rate or RAM, or the GPU's
VRAM); the plan then says "calibrated" instead of "Hearth's defaults". `hearth bench` keeps it in
the measurement store, where ``planner.measured.calibration`` reads it back.

It lives outside the planner because it loads a backend: the planner stays pure and imports no
backend, KV policy, quantizer or bench.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from app.runtime.hardware import Hardware
from app.runtime.library import ModelInfo
from app.runtime.measurements import CALIBRATION, MeasurementStore
from app.runtime.planner import policy, speed
from app.runtime.planner.schema import Plan, UserPrefs
from app.runtime.planner.shape import read_shape
from app.runtime.planner.speed import Calibration

log = logging.getLogger(__name__)

CALIBRATION_FILL = 1000  # tokens in the cache for the calibration's second run
LONG_CONTEXT = 4096
PROMPT = "Write a long numbered list of everyday objects, one per line, with a short description of each."


@dataclass(frozen=True)
class DecodeRun:
    tokens: int
    tokens_per_s: float
    prompt_tokens: int  # tokens in the context when decoding started


def measure_decode(model: ModelInfo, made: Plan, *, prompt: str = PROMPT, n_tokens: int = 64, repeats: int = 3) -> DecodeRun:
    """Load the model with the plan's settings and time ``n_tokens`` greedy decode steps,
    ``repeats`` times; the fastest run counts, since other programs only ever slow it down."""
    from app.runtime.backends.llama_cpp import LlamaCppBackend
    from app.runtime.protocol import Sampling

    backend = LlamaCppBackend(model.path, policy.llama_cpp_kwargs(made))
    best: DecodeRun | None = None
    try:
        for _ in range(repeats):
            times: list[float] = []
            result = backend.chat(
                [{"role": "user", "content": prompt}],
                Sampling(temperature=0.0, max_tokens=n_tokens, repeat_penalty=1.1, seed=1),
                on_token=lambda _: times.append(time.perf_counter()),
                is_cancelled=lambda: False,
            )
            if len(times) < 8:
                raise RuntimeError(f"the calibration run produced only {len(times)} tokens")
            run = DecodeRun(len(times), (len(times) - 1) / (times[-1] - times[0]), result.prompt_tokens)
            best = run if best is None or run.tokens_per_s > best.tokens_per_s else best
    finally:
        backend.close()
    assert best is not None
    return best


def calibrate(model: ModelInfo, hw: Hardware, *, measurements: MeasurementStore | None = None) -> tuple[Calibration, dict[str, Any]]:
    """Two short decodes: one with an almost empty context sets the effective bandwidth of the
    memory that bounds decode; one with ~1,000 tokens in the cache sets what attention over the
    cache really costs (the roofline's KV term is a lower bound: on a CPU it is partly compute).
    The result is saved in ``measurements`` when given (a bench writes the store, a test need not)."""
    shape = read_shape(model)
    default = policy.DEFAULT_CALIBRATION
    made = policy.plan(model, hw, UserPrefs(context_length=LONG_CONTEXT), shape=shape, calibration=default)
    short = measure_decode(model, made)
    ratio = short.tokens_per_s / predict_at(made, short.prompt_tokens)
    if made.gpu_layers.value["repeating"] > 0:
        calibration = dataclasses.replace(default, gpu_efficiency=min(1.0, default.gpu_efficiency * ratio))
        bound = "VRAM"
    else:
        raw_ram, _ = speed.ram_bandwidth(hw)
        threads = int(made.threads.value["threads"])
        if default.core_bandwidth * threads < raw_ram:  # the per-core streaming rate bounds decode
            calibration = dataclasses.replace(default, core_bandwidth=default.core_bandwidth * ratio)
            bound = "per-core rate"
        else:
            calibration = dataclasses.replace(default, cpu_efficiency=min(1.0, default.cpu_efficiency * ratio))
            bound = "RAM"
    # The slope: seconds per token grow linearly with the fill; compare the measured growth with the model's.
    made = policy.plan(model, hw, UserPrefs(context_length=LONG_CONTEXT), shape=shape, calibration=calibration)
    long = measure_decode(model, made, prompt=filler_prompt(CALIBRATION_FILL))
    predicted_growth = 1 / predict_at(made, long.prompt_tokens) - 1 / predict_at(made, short.prompt_tokens)
    measured_growth = 1 / long.tokens_per_s - 1 / short.tokens_per_s
    kv_cost = max(0.25, min(20.0, measured_growth / predicted_growth)) if predicted_growth > 0 and measured_growth > 0 else 1.0
    calibration = dataclasses.replace(calibration, kv_cost=kv_cost, source=f"measured {time.strftime('%Y-%m-%d')} on {model.name}")
    report = {
        "measured_tokens_per_s": round(short.tokens_per_s, 2),
        "measured_tokens_per_s_with_cache": round(long.tokens_per_s, 2),
        "cache_tokens": long.prompt_tokens,
        "default_prediction": round(float(policy.plan(model, hw, UserPrefs(context_length=LONG_CONTEXT), shape=shape).speed.value["decode_tokens_per_s"]), 2),
        "bandwidth_ratio": round(ratio, 3),
        "kv_cost": round(kv_cost, 3),
        "bound": bound,
    }
    if measurements is not None:
        measurements.put(CALIBRATION, {"calibration": calibration.to_dict(), "report": report})
    log.info("calibrated the speed model: %s -> %s", report, calibration)
    return calibration, report


def filler_prompt(tokens: int) -> str:
    """A prompt of about ``tokens`` tokens ("noteNN" is about three)."""
    return "Summarise the following notes in one paragraph.\n" + " ".join(f"note{i % 97}" for i in range(max(1, tokens // 3)))


def predict_at(made: Plan, fill: int) -> float:
    """The plan's decode speed with ``fill`` tokens in the cache: time per token grows linearly
    with the KV read, from the plan's empty-context figure to its full-context one."""
    empty = 1.0 / float(made.speed.value["decode_tokens_per_s"])
    full = 1.0 / float(made.speed.value["decode_tokens_per_s_full_context"])
    return 1.0 / (empty + (full - empty) * fill / int(made.context_length.value))


def predicted_vs_measured(model: ModelInfo, hw: Hardware, calibration: Calibration, *, contexts: tuple[int, ...] = (40, 2500)) -> list[dict[str, Any]]:
    """For each context fill (tokens already in the cache), the plan's prediction and a real decode.

    The calibration measured at about 50 and 1,000 tokens; 2,500 is a point it never saw."""
    shape = read_shape(model)
    made = policy.plan(model, hw, UserPrefs(context_length=LONG_CONTEXT), shape=shape, calibration=calibration)
    rows = []
    for fill in contexts:
        run = measure_decode(model, made, prompt=filler_prompt(fill) if fill > 100 else PROMPT)
        predicted = predict_at(made, run.prompt_tokens)
        rows.append({
            "n_ctx": LONG_CONTEXT,
            "context_fill": run.prompt_tokens,
            "predicted_tokens_per_s": round(predicted, 2),
            "measured_tokens_per_s": round(run.tokens_per_s, 2),
            "measured_over_predicted": round(run.tokens_per_s / predicted, 3),
        })
    return rows
