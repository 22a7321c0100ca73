"""The recommendation by measured quality: the smallest fitting variant within KL 0.01, from the
model's own evaluation when there is one, else from the table by model size (fake evaluations)."""

from __future__ import annotations

from app.runtime.planner.quant_quality import KL_LIMIT, Candidate, expected_kl, recommend

MB = 1024 * 1024
SMOL = 135_000_000
LLAMA_70B = 70_000_000_000
SMOL_VARIANTS = [Candidate("F16", 270 * MB), Candidate("Q8_0", 145 * MB), Candidate("Q6_K", 138 * MB),
                 Candidate("Q5_K_M", 112 * MB), Candidate("Q4_K_M", 105 * MB), Candidate("Q3_K_S", 88 * MB)]


def test_measured_figures_pick_the_smallest_within_the_limit() -> None:
    measured = {"F16": 0.0, "Q8_0": 0.0012, "Q6_K": 0.0068, "Q5_K_M": 0.013, "Q4_K_M": 0.045, "Q3_K_S": 0.19}
    choice = recommend(SMOL_VARIANTS, parameters=SMOL, evaluation=measured)
    assert choice.value["name"] == "Q6_K"
    assert choice.value["kl_source"] == "measured" and choice.value["kl_mean"] == 0.0068
    assert "measured on this model: 0.0068" in choice.reason
    assert "Q5_K_M is smaller but measured at 0.013" in choice.reason


def test_a_measurement_beats_the_table() -> None:
    # the table puts Q4_K_M on a 135M model far above the limit; this model's own evaluation says otherwise
    assert expected_kl("Q4_K_M", SMOL) > KL_LIMIT
    choice = recommend(SMOL_VARIANTS, parameters=SMOL, evaluation={"Q4_K_M": 0.008})
    assert choice.value["name"] == "Q4_K_M" and choice.value["kl_source"] == "measured"


def test_without_an_evaluation_the_table_by_size_decides() -> None:
    small = recommend(SMOL_VARIANTS, parameters=SMOL)
    big = recommend(SMOL_VARIANTS, parameters=LLAMA_70B)
    assert small.value["name"] == "Q6_K" and small.value["kl_source"] == "table"
    assert big.value["name"] == "Q4_K_M"
    assert expected_kl("Q4_K_M", LLAMA_70B) < expected_kl("Q4_K_M", SMOL) / 5  # a 70B model loses far less at 4 bits
    assert "not measured on this one" in small.reason and "135M parameters" in small.reason
    assert expected_kl("F16", SMOL) == 0.0 and expected_kl("NOT_A_TYPE", SMOL) is None
    assert expected_kl("Q3_K_S", SMOL, imatrix=True) < expected_kl("Q3_K_S", SMOL)


def test_only_variants_that_fit_are_chosen() -> None:
    variants = [Candidate("F16", 270 * MB, fits=False), Candidate("Q8_0", 145 * MB, fits=False),
                Candidate("Q4_K_M", 105 * MB), Candidate("Q3_K_S", 80 * MB)]
    choice = recommend(variants, parameters=SMOL, evaluation={"Q8_0": 0.001, "Q4_K_M": 0.045, "Q3_K_S": 0.19})
    assert choice.value["name"] == "Q4_K_M"  # the closest to the original among those that fit
    assert "no variant that fits keeps the mean KL divergence at or below 0.01" in choice.reason
    none = recommend([Candidate("F16", 270 * MB, fits=False)], parameters=SMOL)
    assert none.value is None and "None of the 1 variants fits" in none.reason


def test_torch_schemes_and_unknown_figures() -> None:
    torch_variants = [Candidate("int8", 170 * MB), Candidate("int4-g64", 110 * MB, imatrix=True)]
    choice = recommend(torch_variants, parameters=SMOL, evaluation={"int8": 0.002, "int4-g64": 0.09})
    assert choice.value["name"] == "int8"
    unknown = recommend([Candidate("MYSTERY_A", 100 * MB), Candidate("MYSTERY_B", 90 * MB)], parameters=SMOL)
    assert unknown.value["name"] == "MYSTERY_A" and unknown.value["kl_source"] == "unknown"
