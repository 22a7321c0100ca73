"""plan(): budgets, monotonicity, overrides, reasons, refusals — across the named profiles.

A property checked over many plans counts the plans it checked: a refused plan checks nothing, so a
planner that refused everything would otherwise pass them all.
"""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import pytest

from app.runtime.hardware import Gpu, Hardware
from app.runtime.planner import (
    ContextTooLarge,
    Plan,
    TooManyGpuLayers,
    UserPrefs,
    llama_cpp_kwargs,
    load_profile,
    plan,
    profile_names,
    summary,
)
from app.runtime.protocol import ErrorKind, RuntimeFailure

GiB = 1 << 30
BY_VRAM = sorted(profile_names(), key=lambda n: sum(g.vram_free for g in load_profile(n).gpus))


@pytest.fixture
def plan_or_none(models):
    """Plan a synthetic model (with its expert and FFN shape); None when refused for memory."""

    def make(name: str, quant: str, hw: Hardware, prefs: UserPrefs | None = None) -> Plan | None:
        try:
            return plan(models.info(name, quant), hw, prefs, shape=models.shape(name, quant))
        except RuntimeFailure as exc:
            assert exc.kind is ErrorKind.OUT_OF_MEMORY, exc.message
            return None

    return make


def must_plan(models: SimpleNamespace, hw: Hardware) -> set[tuple[str, str]]:
    """The synthetic files no plan for ``hw`` may refuse: at most half its memory (the RAM available
    and the free VRAM of GPUs that do not share it), leaving the rest for the KV cache and buffers."""
    memory = hw.ram_available + sum(g.vram_free for g in hw.gpus if not g.unified_memory)
    return {(n, q) for n, q in models.all() if models.file_sizes[n][q] <= memory // 2}


def progress(p: Plan | None) -> tuple[int, int]:
    """(GPU layers, context); a refused plan is below every plan that runs."""
    if p is None:
        return (-1, 0)
    return (p.gpu_layers.value["n_gpu_layers"], p.context_length.value)


def assert_within_budgets(p: Plan, hw: Hardware, prefs: UserPrefs) -> None:
    devices = {d["device"]: d for d in p.memory.value["devices"]}
    for i, gpu in enumerate(hw.gpus):
        d = devices[f"gpu{i}"]
        assert d["budget"] == gpu.vram_free - prefs.safety_margin_bytes  # the margin, exactly
        assert d["total"] == d["weights"] + d["kv"] + d["compute"]
        assert d["total"] <= d["budget"], (hw.source, d)
    cpu = devices["cpu"]
    assert cpu["budget"] == hw.ram_available - prefs.ram_margin_bytes
    assert p.memory.value["ram_used"] <= p.memory.value["ram_budget"] == cpu["budget"]


def test_the_embedded_model_plans_on_every_profile_and_this_machine(smollm2):
    from app.runtime.hardware import probe

    for hw in [load_profile(n) for n in profile_names()] + [probe()]:
        p = plan(smollm2, hw)
        assert_within_budgets(p, hw, UserPrefs())
        assert p.context_length.value == 8192  # its trained context fits everywhere
        assert (p.gpu_layers.value["n_gpu_layers"] == 31) == bool(hw.gpus)
        assert p.speed.value["decode_tokens_per_s"] > 0


@pytest.mark.parametrize("profile", profile_names())
def test_plans_never_exceed_any_device_budget(profile, models, plan_or_none):
    hw = load_profile(profile)
    required = must_plan(models, hw)
    assert required, f"no synthetic model is small enough for {profile}: this test would check nothing"
    for prefs in (UserPrefs(), UserPrefs(safety_margin_bytes=2 * GiB, ram_margin_bytes=3 * GiB)):
        checked = on_gpu = 0
        for name, quant in models.all():
            p = plan_or_none(name, quant, hw, prefs)
            if p is None:
                assert (name, quant) not in required, f"{name} {quant} refused on {profile} with {prefs}"
                continue
            assert_within_budgets(p, hw, prefs)
            checked += 1
            on_gpu += p.gpu_layers.value["n_gpu_layers"] > 0
        assert checked >= len(required), (profile, checked)
        assert on_gpu >= (len(required) if hw.gpus else 0), f"the GPU budgets of {profile} were checked on {on_gpu} plans"


def test_more_vram_never_gives_fewer_layers_or_less_context(synthetic, plan_or_none):
    plans = [(n, progress(plan_or_none(*synthetic, load_profile(n)))) for n in BY_VRAM]
    for (small, a), (big, b) in zip(plans, plans[1:]):
        assert b[0] >= a[0] and b[1] >= a[1], f"{small} {a} -> {big} {b}"
    planned = [n for n, (layers, _) in plans if layers >= 0]
    # every synthetic model runs on the two largest profiles: at least one comparison of two plans
    assert len(planned) >= 2, f"{synthetic} planned only on {planned}: nothing was compared"


@pytest.mark.parametrize(("name", "quant"), [("Llama-3-8B", "Q8_0"), ("Llama-3-70B", "Q4_K_M"), ("Qwen2.5-7B", "F16"), ("Mixtral-8x7B", "Q4_K_M")])
@pytest.mark.parametrize("gpus", [1, 2])
def test_monotone_in_fine_vram_steps(name, quant, gpus, models, plan_or_none):
    base = load_profile("rtx4090-24gb")
    last = (-1, 0)
    for quarter_gib in range(2, 4 * 48, 3):
        free = quarter_gib * GiB // 4
        hw = dataclasses.replace(base, gpus=tuple(Gpu(i, "GPU", "nvidia", free + GiB, free, "8.6") for i in range(gpus)))
        now = progress(plan_or_none(name, quant, hw))
        assert now[0] >= last[0] and now[1] >= last[1], (free / GiB, last, now)
        last = now
    assert last[0] == models.info(name, quant).n_layers + 1  # 48 GiB per GPU holds them all


def test_every_field_has_a_reason_and_auto_fields_are_not_marked(models, plan_or_none):
    for profile in profile_names():
        hw = load_profile(profile)
        checked = 0
        for name, quant in models.all():
            p = plan_or_none(name, quant, hw)
            if p is None:
                continue
            for field, choice in p.choices().items():
                assert choice.reason.strip(), field
                assert not choice.overridden, field
            assert p.kv_type.value in ("f16", "q8_0")  # q4 never by default
            checked += 1
        assert checked >= len(must_plan(models, hw)) > 0, (profile, checked)


def test_overrides_win_and_are_marked(models):
    hw = load_profile("rtx3060-12gb")
    prefs = UserPrefs(
        context_length=6000,
        gpu_layers=20,
        kv_type="q4_0",
        threads=3,
        batch_size=1024,
        ubatch_size=256,
        use_mmap=False,
        use_mlock=True,
    )
    p = plan(models.info("Llama-3-8B", "Q8_0"), hw, prefs)
    assert p.context_length.value == 6000 and p.context_length.overridden
    assert p.gpu_layers.value["n_gpu_layers"] == 20 and p.gpu_layers.overridden
    assert p.kv_type.value == "q4_0" and p.kv_type.overridden
    assert p.flash_attention.value is True and not p.flash_attention.overridden  # a q4_0 cache needs it
    assert p.threads.value == {"threads": 3, "threads_batch": 3} and p.threads.overridden
    assert p.batch.value == {"n_batch": 1024, "n_ubatch": 256} and p.batch.overridden
    assert p.mmap.value is False and p.mmap.overridden
    assert p.mlock.value is True and p.mlock.overridden
    assert not p.backend.overridden and not p.memory.overridden and not p.speed.overridden
    assert "Set by you" in p.context_length.reason and "Pinned by you" in p.gpu_layers.reason
    assert_within_budgets(p, hw, prefs)
    all_layers = plan(models.info("Llama-3-8B", "Q4_K_M"), hw, UserPrefs(gpu_layers=-1))
    assert all_layers.gpu_layers.value["n_gpu_layers"] == 33 and all_layers.gpu_layers.value["output_on_gpu"]


def test_a_context_that_cannot_fit_is_refused_with_the_largest_that_does(models):
    hw, info = load_profile("gtx1650-4gb"), models.info("Llama-3-8B", "Q4_K_M")
    with pytest.raises(ContextTooLarge) as err:
        plan(info, hw, UserPrefs(context_length=200_000))
    largest = err.value.largest_fit
    assert err.value.kind is ErrorKind.OUT_OF_MEMORY and err.value.requested == 200_000
    assert 8192 < largest < 200_000 and largest % 256 == 0
    assert f"{largest:,}" in err.value.message
    ok = plan(info, hw, UserPrefs(context_length=largest))
    assert ok.context_length.value == largest
    with pytest.raises(ContextTooLarge):
        plan(info, hw, UserPrefs(context_length=largest + 256))


def test_pinned_layers_that_cannot_fit_are_refused_with_the_largest_that_does(models):
    hw, info = load_profile("gtx1650-4gb"), models.info("Llama-3-8B", "Q4_K_M")
    with pytest.raises(TooManyGpuLayers) as err:
        plan(info, hw, UserPrefs(gpu_layers=30, context_length=4096))
    assert 0 < err.value.largest_fit < 30
    p = plan(info, hw, UserPrefs(gpu_layers=err.value.largest_fit, context_length=4096))
    assert p.gpu_layers.value["n_gpu_layers"] == err.value.largest_fit
    with pytest.raises(RuntimeFailure, match="no GPU"):
        plan(info, load_profile("cpu-16gb"), UserPrefs(gpu_layers=5))


def test_the_safety_margin_is_honoured_exactly(models):
    info = models.info("Llama-3-8B", "Q4_K_M")
    base = load_profile("rtx3060-12gb")
    for margin in (0, GiB, 3 * GiB // 2):
        prefs = UserPrefs(context_length=4096, kv_type="f16", safety_margin_bytes=margin)
        need = plan(info, load_profile("a100-80gb"), prefs).memory.value["devices"][0]["total"]

        def with_free(free: int) -> Plan:
            hw = dataclasses.replace(base, gpus=(dataclasses.replace(base.gpus[0], vram_free=free),))
            return plan(info, hw, prefs)

        exact = with_free(need + margin)
        assert exact.gpu_layers.value["output_on_gpu"]
        assert exact.memory.value["devices"][0]["total"] == exact.memory.value["devices"][0]["budget"]
        assert not with_free(need + margin - 1).gpu_layers.value["output_on_gpu"]


def test_a_gpu_with_less_free_memory_than_the_margin_is_left_alone(models):
    base = load_profile("rtx3060-12gb")
    hw = dataclasses.replace(base, gpus=(dataclasses.replace(base.gpus[0], vram_free=GiB // 2),))
    p = plan(models.info("Llama-3-8B", "Q4_K_M"), hw)
    assert p.gpu_layers.value["n_gpu_layers"] == 0 and not p.gpu_layers.value["op_offload"]
    assert p.memory.value["devices"][0]["total"] == 0 == p.memory.value["devices"][0]["budget"]


def test_a_model_that_cannot_run_is_refused_with_the_reason(models):
    with pytest.raises(RuntimeFailure) as err:
        plan(models.info("Llama-3-70B", "Q8_0"), load_profile("cpu-16gb"))
    message = err.value.message
    assert err.value.kind is ErrorKind.OUT_OF_MEMORY
    assert re.search(r"needs about [\d.]+ GiB", message) and "no GPU" in message and "smaller" in message
    with pytest.raises(RuntimeFailure) as err:
        plan(models.info("Mixtral-8x7B", "Q4_K_M"), load_profile("gtx1650-4gb"))
    assert "GTX 1650" in err.value.message and "safety margin" in err.value.message


def test_a_hugging_face_folder_plans_for_torch_and_llama_cpp_refuses_it(smollm2):
    folder = dataclasses.replace(smollm2, format="hf")
    made = plan(folder, load_profile("rtx4090-24gb"))
    assert made.backend.value == "torch" and made.backend.reason
    with pytest.raises(RuntimeFailure, match="llama.cpp runs GGUF"):
        plan(folder, load_profile("rtx4090-24gb"), UserPrefs(backend="llama.cpp"))


def test_multi_gpu_split_fills_from_the_back_with_the_output_on_the_last_gpu(models):
    p = plan(models.info("Llama-3-70B", "Q4_K_M"), load_profile("2x3090-48gb"))
    layers = p.gpu_layers.value
    assert layers["output_on_gpu"] and [d["output"] for d in layers["per_device"]] == [False, True]
    assert sum(d["layers"] for d in layers["per_device"]) == 80
    assert sum(layers["tensor_split"]) == 81 == layers["n_gpu_layers"]
    partial = plan(models.info("Mixtral-8x7B", "Q8_0"), load_profile("2x3090-48gb")).gpu_layers.value
    assert not partial["output_on_gpu"] and all(d["layers"] > 0 for d in partial["per_device"])


def test_unified_memory_counts_against_the_ram(models):
    p = plan(models.info("Llama-3-8B", "Q8_0"), load_profile("m2-16gb"))
    gpu = p.memory.value["devices"][0]
    assert gpu["unified"] and p.memory.value["ram_used"] >= gpu["total"]


def test_the_exact_shape_from_the_file_plans_like_the_estimate(smollm2, smollm2_exact):
    hw = load_profile("gtx1650-4gb")
    exact, estimated = plan(smollm2, hw, shape=smollm2_exact), plan(smollm2, hw)
    assert exact.memory.value["source"] == "file" and estimated.memory.value["source"] == "estimate"
    assert summary(exact) == summary(estimated)


def test_plan_round_trips_through_json_and_maps_to_llama_cpp(models):
    p = plan(models.info("Llama-3-8B", "Q4_K_M"), load_profile("gtx1650-4gb"))
    again = Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p
    kwargs = llama_cpp_kwargs(p)
    assert kwargs["n_gpu_layers"] == p.gpu_layers.value["n_gpu_layers"] and kwargs["n_ctx"] == p.context_length.value
    assert kwargs["type_k"] == kwargs["type_v"] == (8 if p.kv_type.value == "q8_0" else 1)
    with pytest.raises(RuntimeFailure):
        Plan.from_dict({**p.to_dict(), "schema_version": 99})


def test_summary_is_one_line_in_the_status_bar_format(smollm2, models):
    partial = summary(plan(models.info("Llama-3-8B", "Q4_K_M"), load_profile("gtx1650-4gb")))
    assert re.fullmatch(r"Q4_K_M · \d+/32 layers on GPU · 8k ctx · (q8|f16) KV · ~[\d.]+ tok/s", partial), partial
    assert summary(plan(smollm2, load_profile("cpu-16gb"))).startswith("Q4_1 · CPU only · 8k ctx · f16 KV")
    assert "30/30 layers on GPU" in summary(plan(smollm2, load_profile("rtx4090-24gb")))


def test_q8_kv_is_taken_only_when_it_buys_layers_or_context(models, plan_or_none):
    chosen = 0
    for profile in profile_names():
        for name, quant in models.all():
            p = plan_or_none(name, quant, load_profile(profile))
            if p is None or p.kv_type.value != "q8_0":
                continue
            chosen += 1
            f16 = plan_or_none(name, quant, load_profile(profile), UserPrefs(kv_type="f16"))
            assert progress(f16) < progress(p), (name, quant, profile)
    assert chosen  # the rule was exercised


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"context_length": 8}, "at least 16"),
        ({"kv_type": "q3"}, "not one of"),
        ({"kv_type": "q8_0", "flash_attention": False}, "needs flash attention"),
        ({"gpu_layers": True}, "whole number"),
        ({"batch_size": 128, "ubatch_size": 256}, "cannot be larger"),
        ({"safety_margin_bytes": -1}, "cannot be negative"),
        ({"n_gpu_layers": 3}, "unknown planner preference"),
    ],
)
def test_bad_preferences_are_refused_in_words(raw, message):
    with pytest.raises(RuntimeFailure, match=message) as err:
        UserPrefs.from_dict(raw)
    assert err.value.kind is ErrorKind.INVALID_PARAMS
