"""The speed calibration: one real decode on this machine, saved, and used by later plans."""

from __future__ import annotations

import dataclasses

from app.runtime import hardware, library, planner
from app.runtime.measurements import MemoryMeasurementStore
from app.runtime import calibrate
from app.runtime.planner.measured import calibration as saved_calibration


def test_calibration_is_measured_saved_and_used() -> None:
    model = library.read_gguf(library.embedded_model_path(), source="embedded")
    store = MemoryMeasurementStore(hardware.this_machine())
    hw = hardware.probe(measurements=store)
    other_machine = dataclasses.replace(hw, cpu_name="Some Other CPU")
    assert saved_calibration(hw, store) == planner.DEFAULT_CALIBRATION  # nothing measured yet
    measured, report = calibrate.calibrate(model, hw, measurements=store)
    assert report["measured_tokens_per_s"] > 0 and report["bound"] in ("per-core rate", "RAM", "VRAM")
    assert measured.source.startswith("measured")
    assert saved_calibration(hw, store) == measured
    assert saved_calibration(other_machine, store) == planner.DEFAULT_CALIBRATION  # per machine
    assert saved_calibration(planner.load_profile("cpu-16gb"), store) == planner.DEFAULT_CALIBRATION  # not for a profile
    assert planner.plan(model, hw, planner.UserPrefs(context_length=1024), measurements=store).speed.value == \
        planner.plan(model, hw, planner.UserPrefs(context_length=1024), calibration=measured).speed.value  # the planner reads it from the store
    made = planner.plan(model, hw, planner.UserPrefs(context_length=1024), calibration=measured)
    assert "measured" in made.speed.reason or "calibrat" in made.speed.reason
    # The calibrated prediction at the calibration's own point is the measurement, up to overheads.
    assert abs(made.speed.value["decode_tokens_per_s"] / report["measured_tokens_per_s"] - 1) < 0.15


def test_prediction_falls_as_the_context_fills() -> None:
    model = library.read_gguf(library.embedded_model_path(), source="embedded")
    made = planner.plan(model, hardware.probe(measurements=MemoryMeasurementStore(hardware.this_machine())), planner.UserPrefs(context_length=4096))
    speeds = [calibrate.predict_at(made, fill) for fill in (0, 1000, 4096)]
    assert speeds[0] == made.speed.value["decode_tokens_per_s"]
    assert speeds[0] > speeds[1] > speeds[2]
    assert abs(speeds[2] - made.speed.value["decode_tokens_per_s_full_context"]) < 1e-6
