"""The dry run: llama.cpp's own buffer sizes from a child process, and confirm() acting on them."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import psutil
import pytest

from app.runtime.hardware import Hardware
from app.runtime.childjob import run_child
from app.runtime.library import ModelInfo
from app.runtime.planner import UserPrefs, llama_cpp_kwargs, load_profile, plan
from app.runtime.planner.dryrun import DryRun, confirm, dry_run
from app.runtime.planner.profiles import hardware_from_dict
from app.runtime.protocol import ErrorKind, RuntimeFailure

MiB = 1 << 20
GiB = 1 << 30
WEIGHTS_MIB = 92.10  # llama_model_size() for SmolLM2-135M Q4_1 (ENVIRONMENT.md)
CPU = load_profile("cpu-16gb")  # the real loads here are compared with this profile's plan, not the machine's
CONFIGS = [(512, "f16", False), (2048, "f16", False), (8192, "f16", False), (512, "q8_0", True), (2048, "q8_0", True), (8192, "q8_0", True)]


def devices(p) -> dict[str, dict]:
    return {d["device"]: d for d in p.memory.value["devices"]}


@pytest.mark.parametrize(("n_ctx", "kv_type", "flash"), CONFIGS)
@pytest.mark.usefixtures("llama_cpp_on_the_cpu")
def test_dry_run_measures_what_the_planner_estimated(smollm2, n_ctx, kv_type, flash):
    p = plan(smollm2, CPU, UserPrefs(context_length=n_ctx, kv_type=kv_type, flash_attention=flash))
    measured = dry_run(smollm2.path, llama_cpp_kwargs(p))
    cpu = devices(p)["cpu"]

    assert abs(measured.model_bytes / MiB - WEIGHTS_MIB) <= 0.005 * WEIGHTS_MIB
    assert set(measured.compute_bytes) == {"CPU"}
    # the plan's CPU "compute" holds the compute buffer and the host output buffer: compare like for like
    llama = measured.compute_bytes["CPU"] + measured.output_bytes["CPU"]
    assert abs(llama - cpu["compute"]) <= 0.10 * llama, (llama / MiB, cpu["compute"] / MiB)
    assert abs(measured.kv_bytes - cpu["kv"]) <= 0.01 * MiB  # the log rounds to 0.01 MiB
    assert any("compute buffer size" in line for line in measured.log_lines)
    assert measured.seconds > 0


@pytest.mark.usefixtures("llama_cpp_on_the_cpu")
def test_confirm_keeps_a_plan_the_dry_run_agrees_with(smollm2):
    p = plan(smollm2, CPU)
    measured = dry_run(smollm2.path, llama_cpp_kwargs(p))
    same, words = confirm(p, smollm2, CPU, None, measured)
    assert same is p
    assert words.startswith("The dry run confirmed the estimate (weights 92.10 MiB, compute ")


def tight_cpu(ram_available: int) -> Hardware:
    return hardware_from_dict({"cpu_cores_physical": 2, "ram_total": 16 * GiB, "ram_available": ram_available}, source="tight")


def scaled(p, *, weights: float = 1.0, compute: float = 1.0, names: dict[str, str] | None = None) -> DryRun:
    """What a dry run would say if llama.cpp needed ``compute`` times the planned buffers."""
    names = names or {"cpu": "CPU", "gpu0": "CUDA0"}
    used = {names[d]: int(u["compute"] * compute) for d, u in devices(p).items() if u["compute"]}
    total_weights = sum(u["weights"] for u in devices(p).values())
    return DryRun(int(total_weights * weights), used, 0.1, ())


def test_confirm_replans_with_a_larger_measured_compute_buffer(smollm2):
    hw = tight_cpu(GiB + 420 * MiB)  # 420 MiB usable: 8,192 tokens fit at the estimate (370 MiB)
    p = plan(smollm2, hw)
    assert (p.context_length.value, p.kv_type.value) == (8192, "f16")
    new, words = confirm(p, smollm2, hw, None, scaled(p, compute=2.0))

    assert re.match(r"The dry run measured compute buffers 2\.0\d times the estimate \(19\d\.\d\d MiB\), so Hearth changed the plan: a q8_0 KV cache instead of f16\.$", words), words
    cpu = devices(new)["cpu"]
    assert cpu["compute"] >= 1.99 * devices(p)["cpu"]["compute"] - 2 * MiB  # the measured size, not the formula
    assert cpu["total"] <= cpu["budget"]
    assert "dry run" in new.memory.reason

    pinned = UserPrefs(kv_type="f16")  # with the cache pinned, the context gives way
    p = plan(smollm2, hw, pinned)
    new, words = confirm(p, smollm2, hw, pinned, scaled(p, compute=2.0))
    assert new.context_length.value == 4096 and new.kv_type.value == "f16"
    assert words.endswith("so Hearth changed the plan: a 4,096-token context instead of 8,192."), words


def test_confirm_says_when_the_measured_sizes_change_nothing(smollm2):
    p = plan(smollm2, CPU)
    new, words = confirm(p, smollm2, CPU, None, scaled(p, weights=1.1))
    assert new.context_length.value == p.context_length.value
    assert "of weights where Hearth estimated" in words and "unchanged" in words
    assert devices(new)["cpu"]["weights"] > devices(p)["cpu"]["weights"]


def test_confirm_moves_layers_off_the_gpu_when_the_gpu_buffers_are_larger(models):
    hw = load_profile("gtx1650-4gb")
    info, shape = models.info("Llama-3-8B", "Q4_K_M"), models.shape("Llama-3-8B", "Q4_K_M")
    p = plan(info, hw, shape=shape)
    new, words = confirm(p, info, hw, None, scaled(p, compute=1.5), shape=shape)
    assert new.gpu_layers.value["n_gpu_layers"] < p.gpu_layers.value["n_gpu_layers"]
    assert "GPU layers instead of" in words


def test_confirm_refuses_with_the_measurement_when_nothing_fits(smollm2):
    hw = tight_cpu(GiB + 300 * MiB)
    p = plan(smollm2, hw)
    with pytest.raises(RuntimeFailure) as caught:
        confirm(p, smollm2, hw, None, scaled(p, compute=3.0))
    assert caught.value.kind is ErrorKind.OUT_OF_MEMORY
    assert re.match(r"The dry run measured compute buffers 3\.0\d times the estimate .*needs about", caught.value.message)


def test_confirm_checks_only_the_weights_when_the_devices_differ(models):
    hw = load_profile("rtx3060-12gb")  # a GPU plan measured on a machine whose llama.cpp has no GPU
    info = models.info("Llama-3-8B", "Q4_K_M")
    p = plan(info, hw)
    measured = DryRun(int(sum(u["weights"] for u in devices(p).values())), {"CPU": 500 * MiB}, 0.1, ())
    same, words = confirm(p, info, hw, None, measured)
    assert same is p and "only the weights were checked" in words


def test_a_truncated_or_foreign_file_is_model_invalid_and_we_survive(model_path: Path, tmp_path: Path):
    truncated = tmp_path / "truncated.gguf"
    with model_path.open("rb") as src, truncated.open("wb") as dst:
        dst.write(src.read(50_000_000))
    with pytest.raises(RuntimeFailure) as caught:
        dry_run(truncated, {"n_ctx": 512})
    assert caught.value.kind is ErrorKind.MODEL_INVALID
    assert "truncated.gguf" in caught.value.message and "corrupted or incomplete" in caught.value.message

    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"GGUF" + b"\x00garbage" * 100)
    with pytest.raises(RuntimeFailure) as caught:
        dry_run(foreign, {"n_ctx": 512})
    assert caught.value.kind is ErrorKind.MODEL_INVALID


def test_a_missing_file_is_model_not_found(tmp_path: Path):
    with pytest.raises(RuntimeFailure) as caught:
        dry_run(tmp_path / "nothing.gguf", {})
    assert caught.value.kind is ErrorKind.MODEL_NOT_FOUND


def test_a_child_that_never_answers_is_killed_at_the_timeout(model_path: Path):
    with pytest.raises(RuntimeFailure) as caught:
        dry_run(model_path, {}, timeout=1, child=("selftest-child", {"sleep": 60}))
    assert caught.value.kind is ErrorKind.LOAD_FAILED
    assert "did not finish within 1 s" in caught.value.message
    assert not psutil.Process().children(recursive=True)


@pytest.mark.parametrize(
    ("params", "words"),
    [({"crash": True}, "signal SIGABRT"), ({"exit": 3}, "exit code 3"), ({"echo": "hello"}, "answered with an incomplete result")],
)
def test_a_child_that_crashes_or_answers_garbage_is_load_failed(model_path: Path, params: dict, words: str):
    with pytest.raises(RuntimeFailure) as caught:
        dry_run(model_path, {}, child=("selftest-child", params))
    assert caught.value.kind is ErrorKind.LOAD_FAILED
    assert words in caught.value.message


def test_the_child_refuses_a_bad_request_in_words():
    with pytest.raises(RuntimeFailure) as caught:
        run_child("dry-run", {"llama_kwargs": {}}, None, what="a dry run without a model")
    assert caught.value.kind is ErrorKind.INVALID_PARAMS and "model_path" in caught.value.message


def test_the_dry_run_is_a_role_of_the_one_child_job_helper():
    from app.__main__ import main

    assert main(["--child", "no-such-role"]) == 2  # the roles table refuses what it does not know
    from app.runtime.launcher import child_command

    assert child_command("dry-run")[-2:] == ["--child", "dry-run"]
    assert child_command("dry-run")[0] == sys.executable


def test_an_unknown_ctypes_field_fails_loudly():
    import llama_cpp

    from app.runtime.planner import dryrun

    params = llama_cpp.llama_model_default_params()
    dryrun._set(params, "load_mode", llama_cpp.LLAMA_LOAD_MODE_NONE)
    with pytest.raises(RuntimeFailure) as caught:
        dryrun._set(params, "use_mmap", False)  # the old name: ctypes would ignore it silently
    assert caught.value.kind is ErrorKind.INTERNAL


def test_dry_run_round_trips_through_json():
    d = DryRun(10, {"CPU": 5, "CUDA0": 7}, 0.5, ("a",), {"CPU": 1}, 3)
    assert DryRun.from_dict(d.to_dict()) == d


def test_a_copy_elsewhere_measures_the_same(model_path: Path, tmp_path: Path, smollm2: ModelInfo):
    """The child gets only a path: a model outside site-packages works the same."""
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(model_path, copy)
    assert dry_run(copy, {"n_ctx": 512}).model_bytes == dry_run(model_path, {"n_ctx": 512}).model_bytes
