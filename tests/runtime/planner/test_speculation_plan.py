"""The speculation planner: on/off, drafter and k from a verify-cost curve, and where a draft model
goes on named GPU profiles (Dovetail's split)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.runtime import planner
from app.runtime.planner import speculation as spec
from app.runtime.planner.speculation import VerifyCurve

# Measured on this 2-core CPU with SmolLM2 (issue 18): compute-bound, 1.8x for 2 tokens, 4.5x for 9.
CPU_SMALL = VerifyCurve({1: 1.0, 2: 1.8, 5: 2.9, 9: 4.5})
# Worse still: every extra token in the batch costs a whole token (no batching gain at all).
NO_GAIN = VerifyCurve({1: 1.0, 2: 2.0, 5: 5.0})
MEMORY_BOUND = VerifyCurve.memory_bound()


def test_the_expected_tokens_per_step_follow_the_geometric_model() -> None:
    assert spec.expected_tokens(0.0, 5) == 1.0
    assert spec.expected_tokens(1.0, 4) == 5.0
    assert spec.expected_tokens(0.5, 2) == pytest.approx(1.75)
    assert spec.predicted_speedup(0.5, 2, MEMORY_BOUND) == pytest.approx(1.75 / 1.04)


def test_best_k_grows_with_acceptance_and_is_zero_where_guessing_loses() -> None:
    low, _ = spec.best_k(0.5, CPU_SMALL)
    high, gain = spec.best_k(0.95, CPU_SMALL)
    assert low == 0 and high > 1 and gain > 1.3
    assert spec.best_k(0.95, NO_GAIN) == (0, 1.0)
    assert spec.best_k(0.8, MEMORY_BOUND)[0] >= 8  # nearly free verification: long guesses pay


def test_auto_turns_speculation_off_with_the_reason_where_it_cannot_pay() -> None:
    off = spec.choose("auto", curve=NO_GAIN)
    assert not off.on and off.drafter is None and "verify(2) = 2.00x" in off.reason
    unmeasured = spec.choose("auto", curve=None)
    assert not unmeasured.on and "not measured" in unmeasured.reason
    constrained = spec.choose("lookup", curve=MEMORY_BOUND, constrained=True)
    assert not constrained.on and "grammar" in constrained.reason
    assert not spec.choose("off", curve=MEMORY_BOUND).on


def test_auto_chooses_prompt_lookup_where_a_copied_run_pays() -> None:
    cpu = spec.choose("auto", curve=CPU_SMALL)
    assert cpu.on and cpu.drafter == "lookup" and cpu.predicted > 1.03
    gpu = spec.choose("auto", curve=MEMORY_BOUND)
    assert gpu.on and gpu.predicted > cpu.predicted


def test_a_draft_model_pays_only_when_its_tokens_are_cheap() -> None:
    cheap = spec.choose("draft:small", curve=MEMORY_BOUND, draft_cost=0.05)
    assert cheap.on and cheap.drafter == "draft:small" and cheap.k >= 3 and cheap.predicted > 1.5
    dear = spec.choose("draft:small", curve=CPU_SMALL, draft_cost=0.9)
    assert dear.on and "predicts no gain" in dear.reason  # asked for: kept, and the reason says it loses


def test_unknown_modes_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, off, lookup or draft:MODEL"):
        spec.parse_mode("fast")
    assert spec.parse_mode("draft: tiny ") == ("draft", "tiny")


def test_the_curve_interpolates_and_extends_its_measurements() -> None:
    assert CPU_SMALL.relative(3) == pytest.approx(1.8 + (2.9 - 1.8) / 3)
    assert CPU_SMALL.relative(13) == pytest.approx(4.5 + (4.5 - 2.9) * 4 / 4)
    assert VerifyCurve.from_dict(CPU_SMALL.to_dict()).seconds == CPU_SMALL.seconds


def _plan(models: SimpleNamespace, profile: str, name: str, quant: str) -> planner.Plan:
    return planner.plan(models.info(name, quant), planner.load_profile(profile), planner.UserPrefs(), shape=models.shape(name, quant))


DRAFT_BYTES = 110 * 2**20  # a SmolLM2-sized draft


def test_dovetail_puts_the_draft_on_the_gpu_when_the_target_is_mostly_on_the_cpu(models: SimpleNamespace) -> None:
    target = _plan(models, "gtx1650-4gb", "Llama-3-8B", "Q4_K_M")  # 13 of 32 layers on a 4 GB GPU
    assert target.gpu_layers.value["repeating"] < target.gpu_layers.value["n_layers"] / 2
    small = spec.place_draft(target, DRAFT_BYTES)  # fits in what the target left free
    assert small.device == "gpu" and small.target_gpu_layers is None and "Dovetail" in small.reason
    placed = spec.place_draft(target, 700 * 2**20)  # a 1B draft: the target gives up GPU layers for it
    assert placed.device == "gpu" and placed.n_gpu_layers == -1 and "Dovetail" in placed.reason
    assert placed.target_gpu_layers is not None and 0 <= placed.target_gpu_layers < target.gpu_layers.value["n_gpu_layers"]


def test_a_target_on_the_gpu_keeps_its_layers_and_the_draft_fits_beside_it(models: SimpleNamespace) -> None:
    target = _plan(models, "rtx4090-24gb", "Llama-3-8B", "Q8_0")
    placed = spec.place_draft(target, DRAFT_BYTES)
    assert placed.device == "gpu" and placed.target_gpu_layers is None and "mostly on the GPU" in placed.reason


def test_without_a_gpu_the_draft_runs_on_the_cpu(models: SimpleNamespace) -> None:
    placed = spec.place_draft(_plan(models, "cpu-16gb", "Llama-3-8B", "Q4_K_M"), DRAFT_BYTES)
    assert placed.device == "cpu" and placed.n_gpu_layers == 0


# ---- auto: a draft model from the library, or prompt lookup (issue 18) --------------------------


def test_the_draft_size_threshold_follows_from_the_cost_model() -> None:
    """DRAFT_SIZE_RATIO's comment: at the prior acceptance, on an ideal target (verify(n) = 1), a draft
    whose tokens cost its file-size ratio still pays at the threshold and cannot pay a bit above 0.65."""
    ideal = VerifyCurve({1: 1.0, 2: 1.0, 3: 1.0})
    k, gain = spec.best_k(spec.PRIOR_ACCEPTANCE["draft"], ideal, draft_cost=spec.DRAFT_SIZE_RATIO)
    assert k >= 1 and gain >= spec.MIN_GAIN
    assert spec.best_k(spec.PRIOR_ACCEPTANCE["draft"], ideal, draft_cost=0.66) == (0, 1.0)


def test_auto_uses_a_draft_only_where_it_beats_prompt_lookup() -> None:
    cheap = spec.DraftOption("tiny", 0.02, "measured")
    used = spec.choose_draft([cheap], curve=MEMORY_BOUND)
    assert used.draft == cheap and used.draft_speedup > used.lookup_speedup and used.k >= 1
    assert "draft model tiny considered" in used.reason and used.reason.endswith(": used")
    dear = spec.DraftOption("half", 0.45, "estimate")
    lost = spec.choose_draft([dear], curve=CPU_SMALL)
    assert lost.draft is None and lost.considered == dear and "not used" in lost.reason and "estimate" in lost.reason
    best = spec.choose_draft([dear, cheap], curve=MEMORY_BOUND)
    assert best.draft == cheap and "the best of 2" in best.reason
    forced = spec.choose_draft([dear], curve=CPU_SMALL, acceptance={"draft": 1.0, "lookup": 0.0}, cost=0.01)
    assert forced.draft is not None and forced.draft.source == "given"


def test_a_draft_token_is_measured_when_both_times_are_known_else_estimated_from_file_sizes() -> None:
    assert spec.draft_cost(draft_seconds=0.002, target_seconds=0.02, draft_bytes=1, target_bytes=2) == (pytest.approx(0.1), "measured")
    assert spec.draft_cost(draft_seconds=None, target_seconds=0.02, draft_bytes=100, target_bytes=400) == (0.25, "estimate")


def test_a_draft_that_cannot_fit_even_after_the_target_gives_up_every_gpu_layer_runs_on_the_cpu(models: SimpleNamespace) -> None:
    target = _plan(models, "gtx1650-4gb", "Llama-3-8B", "Q4_K_M")
    gpu = next(d for d in target.memory.value["devices"] if d["device"] == "gpu0")
    freed = gpu["weights"] + gpu["kv"] + gpu["budget"] - gpu["total"]
    placed = spec.place_draft(target, int(freed / 1.2) + 2**20)  # a little more than the GPU could ever give it
    assert placed.device == "cpu" and placed.target_gpu_layers is None


def test_the_split_plan_says_how_many_gpu_layers_the_target_gave_up(models: SimpleNamespace) -> None:
    target = _plan(models, "gtx1650-4gb", "Llama-3-8B", "Q4_K_M")
    placed = spec.place_draft(target, 700 * 2**20)
    assert placed.target_gpu_layers is not None
    reloaded = planner.plan(models.info("Llama-3-8B", "Q4_K_M"), planner.load_profile("gtx1650-4gb"),
                            planner.UserPrefs(gpu_layers=placed.target_gpu_layers), shape=models.shape("Llama-3-8B", "Q4_K_M"))
    gave = target.gpu_layers.value["n_gpu_layers"] - placed.target_gpu_layers
    split = spec.DovetailSplit("/models/Llama-3-8B-Q4_K_M.gguf", placed.target_gpu_layers, gave, "Llama-3.2-1B", "/models/1b.gguf")
    shown = spec.split_plan(reloaded, split)
    assert shown.gpu_layers.value["given_to_draft"] == gave and not shown.gpu_layers.overridden
    assert f"gave up {gave} GPU layer(s)" in shown.gpu_layers.reason and "Pinned by you" not in shown.gpu_layers.reason
    assert f"({gave} given to the draft model)" in planner.summary(shown)
    assert planner.llama_cpp_kwargs(shown)["n_gpu_layers"] == placed.target_gpu_layers
    assert spec.split_plan(target, split) is target  # a plan with other layers is not the split's
