"""The planner's measured inputs, read from a `MeasurementStore` the caller hands in.

Plans stay pure functions of (model, hardware, measurements, preferences): nothing here opens a
file. A figure applies only to a plan for the machine it was taken on (``store.describes(hw)``:
this machine as probed, not a hardware profile); the KV ranking is about quality, so it applies to
any plan. Each function answers None (or the defaults) when nothing was measured.
"""

from __future__ import annotations

import logging
from typing import Any

from app.runtime.measurements import CALIBRATION, CPU_DTYPE_SPEED, KERNEL_SPEEDUP, KV_RANKING, MeasurementStore
from app.runtime.planner.speed import Calibration

log = logging.getLogger(__name__)


def _here(store: MeasurementStore | None, hw: Any) -> MeasurementStore | None:
    return store if store is not None and store.describes(hw) else None


def calibration(hw: Any, store: MeasurementStore | None) -> Calibration:
    """The speed calibration `hearth bench` measured on this machine, or Hearth's defaults."""
    here = _here(store, hw)
    saved = here.get(CALIBRATION) if here else None
    if isinstance(saved, dict):
        try:
            return Calibration(**saved["calibration"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring an unreadable saved calibration: %s", exc)
    return Calibration()


def dtype_key(rows: int, cols: int) -> str:
    return f"{rows}x{cols}"


def dtype_speed(hw: Any, store: MeasurementStore | None, rows: int, cols: int) -> dict[str, float] | None:
    """The CPU matrix-vector speed per dtype at [rows, cols] weights, if measured here."""
    here = _here(store, hw)
    saved = here.get(CPU_DTYPE_SPEED, dtype_key(rows, cols)) if here else None
    return {str(k): float(v) for k, v in saved.items()} if isinstance(saved, dict) else None


def quant_speedup(hw: Any, store: MeasurementStore | None, scheme: str) -> float | None:
    """Decode speed of weight-only ``scheme`` over fp32 on this CPU (`hearth bench kernels`), if measured."""
    here = _here(store, hw)
    saved = here.get(KERNEL_SPEEDUP) if here else None
    value = saved.get("cpu_decode_speedup", {}).get(scheme) if isinstance(saved, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def kv_ranking(store: MeasurementStore | None) -> tuple[str, str] | None:
    """(policy, reason): the best KV eviction policy `hearth bench kv` measured, if it did."""
    saved = store.get(KV_RANKING) if store is not None else None
    if isinstance(saved, dict) and isinstance(saved.get("best"), str):
        return saved["best"], str(saved.get("reason") or "")
    return None

