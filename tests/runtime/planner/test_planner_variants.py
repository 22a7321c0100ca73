from __future__ import annotations

import pytest

from app.runtime.planner import UserPrefs, Variant, choose_variant, load_profile, plan
from app.runtime.protocol import ErrorKind, RuntimeFailure


def variants(models, name: str) -> list[Variant]:
    return [Variant(q, size, f"{name}-{q}.gguf") for q, size in models.file_sizes[name].items()]


@pytest.mark.parametrize(
    ("name", "profile", "expected", "fit"),
    [
        ("Llama-3-8B", "rtx3060-12gb", "Q8_0", "gpu"),  # F16 also fits a 4090, but Q8_0 is as good and half the size
        ("Llama-3-8B", "rtx4090-24gb", "Q8_0", "gpu"),
        ("Llama-3-8B", "gtx1650-4gb", "Q4_K_M", "partial"),
        ("Llama-3-8B", "cpu-16gb", "Q4_K_M", "cpu"),
        ("Mixtral-8x7B", "2x3090-48gb", "Q5_K_M", "gpu"),
        ("Mixtral-8x7B", "rtx3060-12gb", "Q4_K_M", "partial"),
        ("Llama-3-70B", "a100-80gb", "Q8_0", "gpu"),
    ],
)
def test_best_quality_on_the_gpu_else_the_sweet_spot(name, profile, expected, fit, models):
    hw = load_profile(profile)
    choice = choose_variant(variants(models, name), models.shape(name, "Q4_K_M"), hw, 8192)
    assert (choice.value["name"], choice.value["fit"]) == (expected, fit), choice.reason
    assert choice.reason.strip() and choice.value["context_length"] == 8192
    # the plan for the chosen file agrees on where it runs
    p = plan(models.info(name, expected), hw, UserPrefs(context_length=8192), shape=models.shape(name, expected))
    assert p.gpu_layers.value["output_on_gpu"] == (fit == "gpu")


def test_a_model_no_variant_of_which_fits_is_refused_with_the_smallest(models):
    with pytest.raises(RuntimeFailure) as err:
        choose_variant(variants(models, "Llama-3-70B"), models.info("Llama-3-70B", "Q4_K_M"), load_profile("cpu-16gb"))
    assert err.value.kind is ErrorKind.OUT_OF_MEMORY
    assert "IQ2_XS" in err.value.message and "None of the 5 variants" in err.value.message


def test_unknown_names_rank_by_size_and_bad_variants_are_rejected(models):
    hw = load_profile("rtx4090-24gb")
    choice = choose_variant([Variant("Q4_K_M", 4_920_733_696), Variant("EXOTIC_5", 5_500_000_000)], models.info("Llama-3-8B", "Q4_K_M"), hw)
    assert choice.value["name"] == "EXOTIC_5"  # 5.5 bits per weight, ranked as 5.0: above Q4_K_M
    with pytest.raises(RuntimeFailure):
        Variant("Q4_K_M", 0)
    with pytest.raises(RuntimeFailure):
        choose_variant([], models.info("Llama-3-8B", "Q4_K_M"), hw)
