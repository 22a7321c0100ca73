"""`hearth bench`: the verdict rule on hand-made numbers, the GUI probe against fake GUIs, and a
smoke run of the whole bench on the real model. No test compares a measured time to a target:
that is the bench's job, on a quiet machine."""

from __future__ import annotations

import json
import sys

import pytest

from app.runtime import bench, bench_suites, hardware
from app.runtime.measurements import CALIBRATION, MemoryMeasurementStore
from app.runtime.bench import Target, verdict

AT_LEAST = Target(0.95, at_least=True)
AT_MOST = Target(30.0, at_least=False)


@pytest.mark.parametrize(
    ("values", "target", "expected"),
    [
        ([1.00, 0.99, 1.01, 1.00, 0.98], AT_LEAST, "pass"),  # median 1.00, spread 0.03 <= margin 0.05
        ([0.80, 0.81, 0.79, 0.80, 0.82], AT_LEAST, "fail"),  # median 0.80, spread 0.03 <= margin 0.15
        ([1.00, 0.90, 1.05, 0.99, 1.00], AT_LEAST, "inconclusive"),  # spread 0.15 > margin 0.05
        ([0.90, 1.00, 0.80, 0.90, 0.85], AT_LEAST, "inconclusive"),  # below target, but spread 0.20 > margin 0.10
        ([5.0, 8.0, 6.0, 7.0, 5.5], AT_MOST, "pass"),  # ms overhead: median 6, spread 3 <= margin 24
        ([50.0, 52.0, 49.0, 51.0, 50.0], AT_MOST, "fail"),  # median 50, spread 3 <= margin 20
        ([25.0, 35.0, 28.0, 31.0, 29.0], AT_MOST, "inconclusive"),  # median 29, spread 10 > margin 1
        ([0.95] * 5, AT_LEAST, "pass"),  # exactly on the target with no spread: meets ">="
        ([1.0, 1.0, 1.0, 1.0], AT_LEAST, "inconclusive"),  # fewer than MIN_RUNS_FOR_VERDICT runs
    ],
)
def test_verdict(values: list[float], target: Target, expected: str) -> None:
    assert verdict(values, target) == expected


def test_summarize_reports_median_and_spreads() -> None:
    s = bench.summarize([10.0, 12.0, 11.0, 14.0, 9.0])
    assert (s["median"], s["min"], s["max"], s["spread"]) == (11.0, 9.0, 14.0, 5.0)
    assert s["relative_spread"] == pytest.approx(5 / 11, abs=1e-4)


def test_first_window_from_a_gui_that_reports_its_window() -> None:
    fake_gui = [sys.executable, "-c", "import json, time; print('starting'); print(json.dumps({'event': 'window_shown', 't': time.time()}))"]
    result = bench.measure_first_window(runs=2, command=fake_gui)
    assert "error" not in result
    assert len(result["values"]) == 2 and all(0 < v < 30 for v in result["values"])
    assert result["target"] == "<= 2" and result["verdict"] in bench.VERDICTS


@pytest.mark.parametrize(
    ("script", "words"),
    [
        ("import sys; print('Traceback: no GUI here', file=sys.stderr); sys.exit(3)", "exited with code 3"),
        ("print('not the probe line')", "without a window_shown line"),
        ("import time; time.sleep(20)", "within 0.5 s"),
    ],
)
def test_first_window_failures_are_reported_not_raised(script: str, words: str) -> None:
    result = bench.measure_first_window(runs=3, command=[sys.executable, "-c", script], timeout=0.5 if "sleep" in script else 30.0)
    assert words in result["error"]
    assert result["runs_done"] == 0


@pytest.mark.slow
def test_bench_smoke(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path))  # the worker's log goes here, not to the user's folders
    store = MemoryMeasurementStore(hardware.this_machine())
    report = bench_suites.run_bench(store, runs=1, n_tokens=8)
    assert store.get(CALIBRATION)["calibration"]["source"].startswith("measured")  # the bench writes the store
    json.dumps(report)
    assert {"machine", "settings", "direct", "worker", "figures"} <= report.keys()
    assert report["machine"]["threads"] >= 1 and report["machine"]["llama_cpp_python"]
    for side in ("direct", "worker"):
        assert report[side]["decode_tps"]["median"] > 0
        assert report[side]["ttft_ms"]["median"] > 0
        assert report[side]["completion_tokens"] == [8]  # the prompt does not reach EOS this early
    assert report["settings"]["same_prompt_tokens"]
    assert report["direct"]["cached_tokens"] == report["worker"]["cached_tokens"]  # the flush evens out the prefix cache
    assert report["direct"]["cached_tokens"][0] < report["direct"]["prompt_tokens"][0] // 2
    assert report["worker"]["reported"]["decode_tps"]["median"] > 0
    figures = report["figures"]
    assert figures["decode_ratio"]["median"] > 0
    for name in ("decode_ratio", "first_token_overhead_ms"):
        assert figures[name]["verdict"] == "inconclusive"  # one run is too few for a verdict
    window = figures["first_window_s"]
    assert "error" in window or window["verdict"] in bench.VERDICTS
    server = report["server_stream"]
    assert server["figures"]["server_decode_ratio"]["median"] > 0
    assert server["figures"]["server_decode_ratio"]["verdict"] == "inconclusive"
