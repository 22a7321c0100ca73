"""The runtime planner: from a model and a machine to every llama.cpp setting, each with its reason.

Pure functions over values (``ModelInfo``/``ModelShape``, ``Hardware``, ``UserPrefs``); the only I/O
is in ``profiles.detect`` (the probe or a profile file) and ``shape.read_shape`` (a GGUF header).
"""

from __future__ import annotations

from app.runtime.planner.policy import (
    DEFAULT_CALIBRATION,
    choose_backend,
    llama_cpp_kwargs,
    plan,
    summary,
)
from app.runtime.planner.profiles import PROFILES, detect, load_profile, profile_names
from app.runtime.planner.schema import Choice, ContextTooLarge, Plan, TooManyGpuLayers, UserPrefs
from app.runtime.planner.shape import ModelShape, read_shape
from app.runtime.planner.speed import Calibration
from app.runtime.planner.variants import Variant, choose_variant

__all__ = [
    "DEFAULT_CALIBRATION",
    "PROFILES",
    "Calibration",
    "Choice",
    "ContextTooLarge",
    "ModelShape",
    "Plan",
    "TooManyGpuLayers",
    "UserPrefs",
    "Variant",
    "choose_backend",
    "choose_variant",
    "detect",
    "llama_cpp_kwargs",
    "load_profile",
    "plan",
    "profile_names",
    "read_shape",
    "summary",
]
