"""The speculative-sampling rule on synthetic distributions: the output is distributed as the
target's, whatever the draft's distribution; and for a deterministic drafter the rule is the loop's
"draw from the target, accept when equal"."""

from __future__ import annotations

import numpy as np
import pytest

from app.runtime.spec.rejection import accept_or_resample, one_hot, verify

N = 40_000  # draws per check: the standard error of a frequency is below 0.0025 (tolerances are 5 of them)


def _frequencies(tokens: list[int], n: int) -> np.ndarray:
    return np.bincount(np.asarray(tokens), minlength=n) / len(tokens)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_first_token_is_distributed_as_the_target_whatever_the_draft(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(6))
    q = rng.dirichlet(np.ones(6) * 0.3)  # a poor draft: far from p
    out = []
    for _ in range(N):
        draft = int(rng.choice(6, p=q))  # the draft samples its guess from q
        out.append(accept_or_resample(p, q, draft, rng)[1])
    assert np.abs(_frequencies(out, 6) - p).max() < 0.0125


def test_a_whole_guess_keeps_the_joint_distribution_of_two_tokens() -> None:
    rng = np.random.default_rng(7)
    p1, q1 = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.2, 0.6])
    p2 = {t: rng.dirichlet(np.ones(3)) for t in range(3)}  # the target's second token depends on the first
    q2 = {t: rng.dirichlet(np.ones(3)) for t in range(3)}
    pairs = np.zeros((3, 3))
    for _ in range(N // 2):
        d1 = int(rng.choice(3, p=q1))
        d2 = int(rng.choice(3, p=q2[d1]))
        out = verify([p1, p2[d1], np.ones(3) / 3], [q1, q2[d1]], [d1, d2], rng)
        second = out[1] if len(out) > 1 else int(rng.choice(3, p=p2[out[0]]))  # after a rejection: plain decoding goes on
        pairs[out[0], second] += 1
    expected = p1[:, None] * np.stack([p2[t] for t in range(3)])
    assert np.abs(pairs / pairs.sum() - expected).max() < 0.018


def test_a_deterministic_draft_is_accepted_with_the_targets_probability() -> None:
    rng = np.random.default_rng(3)
    p = np.array([0.1, 0.6, 0.3])
    accepted = [accept_or_resample(p, one_hot(3, 1), 1, rng) for _ in range(N // 4)]
    rate = np.mean([a for a, _ in accepted])
    assert abs(rate - 0.6) < 0.02
    rejected = [t for a, t in accepted if not a]
    assert 1 not in rejected  # a rejection never gives the draft back: p without it, renormalized
    assert abs(np.mean(np.asarray(rejected) == 2) - 0.75) < 0.03  # 0.3 / (0.1 + 0.3)


def test_a_perfect_draft_is_always_accepted_and_the_bonus_token_comes_from_the_last_row() -> None:
    rng = np.random.default_rng(5)
    p = np.array([0.0, 1.0, 0.0])
    assert verify([p, p, one_hot(3, 2)], [p, p], [1, 1], rng) == [1, 1, 2]


def test_verify_checks_its_rows() -> None:
    with pytest.raises(ValueError):
        verify([np.ones(2) / 2], [np.ones(2) / 2], [0], np.random.default_rng(0))
