from __future__ import annotations

import json

import pytest

from app.runtime.hardware import Hardware
from app.runtime.planner import profiles
from app.runtime.planner.profiles import PROFILES, detect, load_profile
from app.runtime.protocol import ErrorKind, RuntimeFailure

NAMES = ("cpu-16gb", "gtx1650-4gb", "rtx3060-12gb", "rtx4090-24gb", "2x3090-48gb", "m2-16gb", "a100-80gb")


def test_every_named_profile_exists_and_says_its_name():
    assert set(NAMES) == set(PROFILES)
    for name in NAMES:
        hw = load_profile(name)
        assert isinstance(hw, Hardware) and hw.source == name
        assert all(0 < g.vram_free <= g.vram_total for g in hw.gpus)
        assert 0 < hw.ram_available <= hw.ram_total
    assert not load_profile("cpu-16gb").gpus
    assert len(load_profile("2x3090-48gb").gpus) == 2
    assert load_profile("m2-16gb").gpus[0].unified_memory


def test_detect_uses_the_environment_variable_else_the_probe():
    assert detect({"HEARTH_HARDWARE": "rtx3060-12gb"}).source == "rtx3060-12gb"
    assert detect({}).source == "probe"
    assert detect({"HEARTH_HARDWARE": "  "}).source == "probe"


def test_a_bad_profile_name_lists_the_valid_ones():
    with pytest.raises(RuntimeFailure) as info:
        load_profile("rtx9090")
    assert info.value.kind is ErrorKind.INVALID_PARAMS
    for name in NAMES:
        assert name in info.value.message


def test_a_json_file_is_a_custom_profile(tmp_path):
    original = load_profile("2x3090-48gb")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(original.to_dict()))
    loaded = detect({"HEARTH_HARDWARE": str(path)})
    assert loaded.source == str(path)
    assert loaded.gpus == original.gpus and loaded.ram_total == original.ram_total


def test_a_broken_json_profile_says_what_is_wrong(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(RuntimeFailure, match="Cannot read"):
        load_profile(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RuntimeFailure, match="not valid JSON"):
        load_profile(str(bad))
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"cpu_name": "x", "gpus": []}))
    with pytest.raises(RuntimeFailure, match="cpu_cores_physical"):
        load_profile(str(incomplete))
    with pytest.raises(RuntimeFailure, match="negative"):
        profiles.hardware_from_dict({"cpu_cores_physical": 4, "ram_total": 0}, source="x")
