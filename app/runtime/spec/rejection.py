"""The standard speculative-sampling rule (Leviathan et al. 2023; Chen et al. 2023): with target
probabilities p and draft probabilities q at a drafted position, accept the draft x with probability
min(1, p(x) / q(x)); on a rejection, draw from the residual max(0, p - q), renormalized. The output
token is then distributed exactly as p, whatever q is, so speculation never changes what a
sampled reply looks like, only how fast it comes.

When the drafter is deterministic (prompt lookup, a greedy draft model) q is one-hot at x: the rule
accepts with probability p(x) and otherwise draws from p without x, which is the same distribution
as "draw from p, accept when the draw equals x". That special case is what the token loop does,
with llama.cpp's own sampler chain doing the draw, so a seeded reply is token-for-token the one
plain decoding gives (tests/runtime/spec/test_rejection.py checks both facts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accept_or_resample(p: np.ndarray, q: np.ndarray, draft: int, rng: np.random.Generator) -> tuple[bool, int]:
    """One drafted position: (True, draft) when accepted, else (False, a token drawn from the residual)."""
    px, qx = float(p[draft]), float(q[draft])
    if qx > 0.0 and rng.random() < min(1.0, px / qx):
        return True, int(draft)
    residual = np.maximum(p - q, 0.0)
    total = float(residual.sum())
    if total <= 0.0:  # p == q everywhere: a rejection has probability 0; draw from p for safety
        residual, total = np.asarray(p, dtype=np.float64), float(np.sum(p))
    return False, int(rng.choice(len(p), p=residual / total))


def verify(p_rows: Sequence[np.ndarray], q_rows: Sequence[np.ndarray], drafts: Sequence[int], rng: np.random.Generator) -> list[int]:
    """A whole guess: ``p_rows`` has len(drafts) + 1 target distributions (the last one after every
    draft), ``q_rows`` the draft's at each drafted position. Returns the accepted drafts followed by
    the target's token at the first rejection, or by a bonus token drawn from the last row."""
    if len(p_rows) != len(drafts) + 1 or len(q_rows) != len(drafts):
        raise ValueError("verify needs one target row per draft plus one, and one draft row per draft")
    out: list[int] = []
    for i, draft in enumerate(drafts):
        accepted, token = accept_or_resample(p_rows[i], q_rows[i], int(draft), rng)
        out.append(token)
        if not accepted:
            return out
    last = np.asarray(p_rows[-1], dtype=np.float64)
    out.append(int(rng.choice(len(last), p=last / last.sum())))
    return out


def one_hot(n: int, token: int) -> np.ndarray:
    """A deterministic drafter's q: all mass on ``token``."""
    q = np.zeros(n, dtype=np.float64)
    q[token] = 1.0
    return q
