"""The `hearth bench` suites: each one is ``(args, measurements) -> report`` and writes what it
measured into the measurement store.

* ``runtime``: the chat engine through the worker and directly (`app.runtime.bench`), the API
  server's stream (`app.runtime.bench_server`), and the planner's speed calibration;
* ``kv``: the KV-cache policies and torch decode (`app.runtime.kv.bench`), whose ranking becomes
  the torch plan's default eviction policy;
* ``kernels``: the bundled int8/int4 kernels and SmolLM2's decode with each
  (`app.runtime.quantize.torch_quant.bench_from_args`), whose CPU speed-ups the torch plan reads.
* ``docs``: document retrieval on *Persuasion* (`app.runtime.docs.bench`): recall@5 over the
  shipped questions, indexing MB/s and query time (nothing stored: no plan reads them).

This module only composes: the modules it calls import nothing from it, so no bench sits in an
import cycle (``app.runtime.bench_server`` borrows ``app.runtime.bench``'s helpers, which is why
the runtime suite that calls both lives here rather than in ``app.runtime.bench``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.runtime.measurements import KERNEL_SPEEDUP, MeasurementStore


def run_bench(measurements: MeasurementStore, *, runs: int = 5, n_tokens: int = 128) -> dict[str, Any]:
    """All runtime figures as a JSON-serializable dict; see `bench.verdict` for what pass/fail/inconclusive mean."""
    from app.runtime import bench
    from app.runtime.bench_server import measure_server_stream  # the OpenAI-compatible server (target >= 0.9)

    if runs < 1 or n_tokens < 2:
        raise ValueError("the bench needs at least 1 run and 2 tokens per run")
    report: dict[str, Any] = {"machine": bench.machine_info()}
    generation = bench.measure_generation(runs=runs, n_tokens=n_tokens)
    report["settings"] = {"runs": runs, "n_tokens": n_tokens, "min_runs_for_verdict": bench.MIN_RUNS_FOR_VERDICT, **generation["settings"]}
    report["direct"], report["worker"] = generation["direct"], generation["worker"]
    report["figures"] = {**generation["figures"], "first_window_s": bench.measure_first_window(runs=runs)}
    report["figures"]["prefix_reuse"] = bench.measure_prefix_reuse(runs=runs, settings=generation["settings"]["load_settings"])
    report["machine"]["threads"] = report["settings"]["load_settings"]["n_threads"]
    report["machine"]["model_file"] = Path(report["settings"]["model_file"]).name
    report["planner_speed"] = bench.measure_planner_speed(measurements)
    report["server_stream"] = measure_server_stream(runs=runs, n_tokens=n_tokens)
    return report


def runtime(args: Any, measurements: MeasurementStore) -> dict[str, Any]:
    """`hearth bench` (the runtime suite) with the command line's --runs and --tokens."""
    return run_bench(measurements, runs=args.runs, n_tokens=args.tokens)


def kv(args: Any, measurements: MeasurementStore) -> dict[str, Any]:
    """`hearth bench kv`."""
    from app.runtime.kv import bench as kv_bench

    return kv_bench.run_from_args(args, measurements)


def kernels(args: Any, measurements: MeasurementStore) -> dict[str, Any]:
    """`hearth bench kernels`: the report, and its CPU decode speed-ups kept for the torch plan."""
    from app.runtime.quantize import torch_quant

    report = torch_quant.bench_from_args(args)
    speedups = report.get("cpu_decode_speedup")
    if isinstance(speedups, dict):
        measurements.put(KERNEL_SPEEDUP, {"cpu_decode_speedup": {str(k): float(v) for k, v in speedups.items()},
                                          "cpu_compute_dtype": str(report.get("cpu_compute_dtype") or "float32")})
    return report


def docs(args: Any, measurements: MeasurementStore) -> dict[str, Any]:
    """`hearth bench docs`: document retrieval (recall@5 on Persuasion), indexing and query speed."""
    from app.runtime.docs import bench as docs_bench

    return docs_bench.suite(args, measurements)


def spec(args: Any, measurements: MeasurementStore) -> dict[str, Any]:
    """`hearth bench spec`: speculative decoding off/on in interleaved pairs (`app.runtime.spec.bench`);
    the verify-cost curve it measures is stored for the planner."""
    from app.runtime.spec import bench as spec_bench

    return spec_bench.suite(args, measurements)


def abuse(args: Any, measurements: MeasurementStore) -> dict[str, Any]:
    """The API server against bad requests (`app.runtime.bench_abuse`); nothing stored: no plan reads it."""
    from app.runtime.bench_abuse import measure_abuse

    return measure_abuse(normal_runs=args.runs)


def tools(args: Any, measurements: MeasurementStore) -> dict[str, Any]:
    """`hearth bench tools`: SmolLM2's forced tool calls over the committed schemas (`app.runtime.tools.bench`):
    the share that parse, validate and finish, and the grammar's cost; nothing stored."""
    from app.runtime.tools import bench as tools_bench

    return tools_bench.suite(args, measurements)


SUITES = {"runtime": runtime, "kv": kv, "kernels": kernels, "docs": docs, "spec": spec, "abuse": abuse, "tools": tools}
