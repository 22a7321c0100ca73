"""Speculation on GGUF types whose batched logits round differently from the one-token path: F16 and
Q4_K_M copies of SmolLM2 (the `requantized` fixture; the Q4_K_M copy is mostly Q5_0, since most
SmolLM2 tensors have 576 columns, which K-quant blocks of 256 do not divide: 166 Q5_0 tensors,
15 Q8_0; its real K-quants are the 30 ffn_down tensors, 16 Q4_K and 14 Q6_K). The speculated greedy reply (prompt
lookup, k = 5) must equal the plain one, or split from it only at a near tie of the plain path,
with every token before identical and the two tokens at the split being the plain path's top two,
swapped by the speculated path's rounding. Two prompts, the bench's: copying (guesses accepted in
long runs) and free writing (guesses mostly rejected mid-reply, so the loop cuts rejected drafts
from the KV many times: where a bug in the accept/cut logic shows; on the copying prompt every F16
guess but one at the reply's very end is right, so a loop that keeps a rejected draft still passes
there, and fails on free writing, split at token 14 with a gap of 2.0 for F16 and at token 31 with
a gap of 1.6, an end of text drawn where " He" led, for Q4_K_M).

How near is a tie: the gap between the plain path's top two logits must be under what this type's
rounding can move it. Measured on this machine (`near_tie.compare`'s ``rounding``, the change of
that gap between the plain row and the verify batch's row at the same position, over 50-250
positions of the bench's copying and free-writing prompts): F16 at most 0.018 (median 0.003), so
0.1 is five times that; the Q4_K_M copy at most 0.83 (median 0.1: its batched path rounds Q5_0/Q8_0
activations differently), so 1.0. The splits measured here: F16 none (copying: 104 tokens, free
writing: 128); Q4_K_M copying at token 53 with a gap of 0.035 (p 0.336 vs 0.324 for "." and
" and"), free writing at token 86 with a gap of 0.146 (p 0.321 vs 0.278 for "," and '."'). A real bug (a rejected draft kept, an
off-by-one in the KV cut) splits where a draft was wrong, at a typical gap (median about 4 here),
where the speculated token is not the plain path's runner-up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.runtime.spec import bench, near_tie

NEAR_TIE = {"F16": 0.1, "Q4_K_M": 1.0}  # logits; see the module docstring for the measurements


PROMPTS = {"copy": bench.COPY, "free": bench.FREE}


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("name", ["F16", "Q4_K_M"])
def test_the_speculated_reply_is_the_plain_one_up_to_a_near_tie(requantized: Callable[[str], Path], name: str, prompt: str) -> None:
    result = bench.near_tie_pair(requantized(name), PROMPTS[prompt], tokens=128, label=name)
    plain, spec, split, found = result["plain_ids"], result["speculated_ids"], result["first_split"], result["margin"]
    assert result["speculation"]["drafted"] > 0  # verify batches ran: the path whose rounding differs
    assert result["tokens"] == len(plain) > 20
    if result["identical"]:
        assert plain == spec and split is None and found is None
        return
    assert split is not None and found is not None and plain[:split] == spec[:split]
    seen = found["speculated"]
    assert seen is not None, "the speculated path's row at the split was not seen"
    plain_token = plain[split] if split < len(plain) else None  # None: the plain reply ended there
    spec_token = spec[split] if split < len(spec) else None
    (best, _, p1), (runner_up, _, p2) = found["top"]
    assert plain_token in (best, None) and spec_token in (runner_up, None), (
        f"{name}: at token {split} the speculated reply drew {spec_token}, not the plain path's runner-up ({found})")
    assert seen["top"][0][0] == runner_up  # the speculated path drew its own best token: the two swapped places
    assert 0 <= found["logit_gap"] < NEAR_TIE[name] and p1 >= p2, (
        f"{name}: the replies split at token {split} where the plain path's top two are {found['logit_gap']:.3f} logits apart: "
        f"not a near tie (< {NEAR_TIE[name]}); {found}")


def test_the_margin_of_a_logits_row() -> None:
    logits = np.full(16, -3.0, dtype=np.float32)
    logits[5], logits[11] = 2.0, 1.75
    found = near_tie.margin(logits, text=lambda i: f"t{i}")
    expected = np.exp(np.array([2.0, 1.75])) / (np.exp(np.array([2.0, 1.75])).sum() + 14 * np.exp(-3.0))
    assert found["logit_gap"] == pytest.approx(0.25)
    assert [row[:2] for row in found["top"]] == [[5, "t5"], [11, "t11"]]
    assert [row[2] for row in found["top"]] == pytest.approx(expected.tolist(), abs=1e-6)
    logits[11] = 2.0  # an exact tie: the lower id first, as the greedy sampler takes the first maximum
    tied = near_tie.margin(logits)
    assert tied["logit_gap"] == 0.0 and [row[0] for row in tied["top"]] == [5, 11] and tied["top"][0][1] == "5"


def test_the_first_split() -> None:
    assert near_tie.first_split([1, 2, 3], [1, 2, 3]) is None
    assert near_tie.first_split([1, 2, 3], [1, 9, 3]) == 1
    assert near_tie.first_split([1, 2], [1, 2, 3]) == 2  # one reply ended (end of generation) where the other went on


def test_the_bench_case_reports_each_type(requantized: Callable[[str], Path]) -> None:
    report = bench.near_tie_case(tokens=24, make=requantized)  # what `hearth bench spec` runs, with 128 tokens
    figures = near_tie.figures(report)
    assert set(figures) == {"F16", "Q4_K_M"}
    for name, figure in figures.items():
        assert figure["type"] == name and figure["tokens"] == 24 and set(figure) == {"type", "identical", "tokens", "first_split", "margin"}
        assert figure["identical"] == (figure["first_split"] is None) == (figure["margin"] is None)
        assert report[name]["speculation"]["drafted"] > 0 and report[name]["tensor_types"]
    assert "Q4_K" in report["Q4_K_M"]["tensor_types"] and "Q5_0" in report["Q4_K_M"]["tensor_types"]
