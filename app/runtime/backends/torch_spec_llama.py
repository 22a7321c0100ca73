"""SpecExec's draft in llama.cpp: the GGUF file a torch target was converted from, guessing for it.

A torch target loaded from a GGUF model runs on dequantized weights (`hf_folder`); the GGUF file
itself is the natural resident draft: the same model, already quantized (Q4_1 for the embedded
SmolLM2: a seventh of the float32 draft's bytes), with the same vocabulary by construction, and
llama.cpp decodes one of its tokens several times faster than transformers runs a float32 forward
on a CPU (`hearth bench spec` reports the draft's seconds per step). That is where SpecExec's time
goes once the target's verify is cheap: the draft runs once per level of the tree.

llama.cpp's context holds one sequence here, so the tree is a chain with leaves: the draft decodes
its best guess at each level (the chain), and the runners-up it scored there on the way become
leaves, which the target checks for free in its one forward over the tree. Which guesses enter the
tree, and in what order, is `torch_spec.Draft`'s rule (`best_first`): by the draft's probability
when the target samples, by the measured agreement when it takes the arg-max. The draft's cache
keeps the history and the chain; the next step keeps the longest prefix it shares with the history.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.runtime.backends.context import common_prefix
from app.runtime.backends.torch_spec import PENALTY_LAST_N, Tree, TreeShape, greedy_scores

log = logging.getLogger(__name__)


class LlamaDraft:
    """The draft's llama.cpp context and its one sequence; `close` frees it."""

    kind = "gguf"

    def __init__(self, path: str | Path, *, n_ctx: int, n_threads: int | None = None) -> None:
        from app.runtime.spec.draft_model import DraftModel  # the same second context the llama.cpp loop's drafts use

        self.path = Path(path)
        self._context = DraftModel(self.path, n_ctx=n_ctx, n_gpu_layers=0, n_threads=n_threads)
        self.kv = self._context.kv
        self.n_vocab = self.kv.n_vocab
        self.load_seconds = self._context.load_seconds

    def grow(self, history: Sequence[int], shape: TreeShape, *, depth_limit: int, penalty: float = 1.0,
             agree: float | None = None) -> tuple[Tree, list[int | None]]:
        """A chain of the draft's best guesses ``depth_limit`` long at most, with the runners-up
        at each level as leaves, best first (see the module's docstring); the slots say which
        nodes the draft's cache holds (the chain's, in order)."""
        kv = self.kv
        tree = Tree([int(history[-1])])
        slot: list[int | None] = [len(history) - 1]
        self._catch_up(history)
        recent = sorted(set(history[-PENALTY_LAST_N:])) if penalty != 1.0 else []
        candidates: list[tuple[float, int, int, int]] = []  # (-score, tie-break, parent, token): the leaves not yet taken
        tip, score, order = 0, 0.0, 0
        for _ in range(max(depth_limit, 0)):
            if len(tree) >= shape.budget:
                break
            ranked = _ranked(kv.logits(-1), recent, penalty, shape.branch, agree)
            best_token, best_score = ranked[0]
            for token, value in ranked[1:]:
                order += 1
                heapq.heappush(candidates, (-(score + value), order, tip, token))
            score += best_score
            if math.exp(score) < shape.min_prob or kv.is_eog(best_token):
                break
            tip = tree.add(best_token, tip)
            slot.append(None)
            if tree.depths[tip] < depth_limit and len(tree) < shape.budget:
                slot[tip] = kv.n
                kv.decode([best_token])
            else:
                break
        while candidates and len(tree) < shape.budget:  # the best runners-up, as leaves
            negative, _, parent, token = heapq.heappop(candidates)
            if math.exp(-negative) < shape.min_prob:
                break
            tree.add(token, parent)
            slot.append(None)
        return tree, slot

    def accept(self, history_len: int, tree: Tree, slot: Sequence[int | None], path: Sequence[int]) -> None:
        """Keep the history and the accepted part of the chain the draft evaluated."""
        keep = history_len
        for node in path:
            if slot[node] is None:
                break
            keep += 1
        self.kv.cut(keep)

    def _catch_up(self, history: Sequence[int]) -> None:
        """Evaluate what of ``history`` the cache lacks (at least its last token)."""
        kv = self.kv
        if len(history) + 1 >= kv.n_ctx:
            raise ValueError("the draft's context is full")  # spec_tokens stops before the target's context ends
        keep = kv.cut(min(common_prefix(kv.held(), history), len(history) - 1))
        for start in range(keep, len(history), kv.n_batch):
            kv.decode(list(history[start : start + kv.n_batch]))

    def reset(self) -> None:
        self.kv.cut(0)

    def close(self) -> None:
        self.kv = None  # type: ignore[assignment]
        self._context.close()


def _ranked(logits: np.ndarray, recent: Sequence[int], penalty: float, branch: int, agree: float | None) -> list[tuple[int, float]]:
    """The ``branch`` best tokens with their log-scores, best first: draft log-probabilities after
    the target's repeat penalty, or the arg-max target's chances (`torch_spec.greedy_scores`)."""
    x = np.array(logits, dtype=np.float64)
    if recent:
        picked = x[list(recent)]
        x[list(recent)] = np.where(picked > 0, picked / penalty, picked * penalty)
    x -= x.max()
    logp = x - math.log(float(np.exp(x).sum()))
    top = np.argpartition(-logp, branch - 1)[:branch] if branch < logp.size else np.arange(logp.size)
    top = top[np.argsort(-logp[top])]
    values = logp[top]
    if agree is not None:
        values = greedy_scores(values, agree)
    return [(int(t), float(v)) for t, v in zip(top, values)]
