"""SpecExec for the torch backend: a resident draft grows a token tree, the offloaded target checks it in one forward.

When most of a target's layers live on disk (or, with a GPU, in RAM), one forward costs about the
same for 1 token as for 30: the time goes to reading the weights, not to arithmetic. SpecExec
(Svirschevski et al., 2024) spends that slack: a small resident draft (the same model in int8, or
a smaller model with the same vocabulary) grows a tree of the most likely continuations, best first
by cumulative draft probability, up to a token budget; the target scores every node of the tree in
ONE forward, with a tree attention mask (each node sees the cached prefix and its own ancestors)
and position ids = prefix length + depth; the longest path the target agrees with is kept, and the
KV entries of the rejected branches are dropped from both caches.

Verification samples the target itself at each node, in order, with the reply's own `Sampler`
(greedy, or seeded sampling with every setting): while the drawn token is a child in the tree, its
logits are already there and the walk goes on; the first drawn token that is not in the tree ends
the step and becomes the next root. Every output token is therefore drawn from the target's own
distribution, in the same order and with the same random draws as plain decoding, so the output is
plain decoding's (up to the float differences between a batched and a one-token forward).

transformers (5.x) takes a prepared 4D mask as is (``masking_utils``: "If the mask is already 4D,
simply return as-is"), so the tree mask is an additive float mask of shape [1, 1, nodes, cached +
nodes] (0 = attend, the dtype's minimum = not), which both the sdpa and the eager attention accept.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.runtime.backends import context as window_policy
from app.runtime.backends.hooks import Speculation

__all__ = ["Draft", "PENALTY_LAST_N", "Pace", "Tree", "TreeShape", "keep_positions", "offloaded_share", "greedy_scores", "spec_tokens", "tree_mask", "verify"]

log = logging.getLogger(__name__)

DRAFT_CHUNK = 256  # the draft evaluates a long pending prompt in chunks of this many tokens
PENALTY_LAST_N = 64  # as torch_sample: the draft's scores get the same repeat penalty the target will


@dataclass(frozen=True)
class TreeShape:
    """How big a tree the draft grows per step.

    ``budget``: nodes the target scores in one forward (the root included); ``max_depth``: draft
    forwards per step (each adds at most one level); ``width``: nodes added per draft forward (the
    best candidates over the whole tree); ``branch``: children proposed per expanded node;
    ``min_prob``: growth stops when the best candidate's cumulative draft probability is below it.
    """

    budget: int = 32
    max_depth: int = 10
    width: int = 4
    branch: int = 4
    min_prob: float = 0.02

    def __post_init__(self) -> None:
        if self.budget < 2 or self.max_depth < 1 or self.width < 1 or self.branch < 1:
            raise ValueError(f"a tree needs budget >= 2 and depth, width, branch >= 1: {self}")


@dataclass
class Tree:
    """Node 0 is the root: the last token of the history, not yet in the target's cache."""

    tokens: list[int]
    parents: list[int] = field(default_factory=lambda: [-1])
    depths: list[int] = field(default_factory=lambda: [0])
    children: list[dict[int, int]] = field(default_factory=lambda: [{}])

    def add(self, token: int, parent: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        self.children.append({})
        node = len(self.tokens) - 1
        self.children[parent][token] = node
        return node

    def __len__(self) -> int:
        return len(self.tokens)

    def path_to(self, node: int) -> list[int]:
        """The nodes from the root's first child down to ``node`` (empty for the root)."""
        path: list[int] = []
        while node > 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]


def tree_mask(rows: Sequence[Sequence[int]], *, cached: int, total: int, dtype: Any, device: Any) -> Any:
    """Additive attention mask [1, 1, len(rows), total]: every row sees the ``cached`` first
    positions and the extra positions its entry of ``rows`` lists (its tree ancestors and itself)."""
    import torch

    allowed = torch.zeros(len(rows), total, dtype=torch.bool, device=device)  # [q, kv]
    allowed[:, :cached] = True
    for i, seen in enumerate(rows):
        allowed[i, list(seen)] = True
    mask = torch.zeros(len(rows), total, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]  # [1, 1, q, kv]


def ancestors_rows(tree: Tree, nodes: Sequence[int], slot: Sequence[int | None]) -> list[list[int]]:
    """For each of ``nodes``: the cache slots of itself and its ancestors (those that have one)."""
    rows = []
    for node in nodes:
        seen: list[int] = []
        while node >= 0:
            where = slot[node]
            if where is not None:
                seen.append(where)
            node = tree.parents[node]
        rows.append(seen)
    return rows


def keep_positions(cache: Any, keep: Sequence[int]) -> None:
    """Keep only the cache entries at ``keep`` (in that order), in every layer: the accepted path's
    KV stays, the rejected branches' goes."""
    import torch

    index = None
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        if index is None or index.device != layer.keys.device:
            index = torch.tensor(list(keep), dtype=torch.long, device=layer.keys.device)
        layer.keys = layer.keys.index_select(-2, index)  # [b, heads, kept, head_dim]
        layer.values = layer.values.index_select(-2, index)


def offloaded_share(device_map: dict[str, Any] | None, n_layers: int) -> float:
    """The share of decoder layers read from a slower place than where they run: disk on a CPU
    machine; the CPU or the disk when the map puts anything on a GPU."""
    if not device_map or n_layers <= 0:
        return 0.0
    on_gpu = any(not isinstance(v, str) or v not in ("cpu", "disk") for v in device_map.values())
    slow = ("cpu", "disk") if on_gpu else ("disk",)
    count = 0
    for i in range(n_layers):
        device = next((d for name, d in device_map.items() if name in (f"model.layers.{i}", "model.layers", "model", "")), None)
        if device is None:
            device = next((d for name, d in device_map.items() if name.startswith(f"model.layers.{i}.")), None)
        count += device in slow
    return count / n_layers


class Draft:
    """The resident draft model and its own KV cache, which keeps the tokens it has evaluated
    across steps and turns (cut back to what the history shares with them)."""

    def __init__(self, model: Any, *, device: Any) -> None:
        from transformers import DynamicCache

        self.model = model
        self.device = device
        self.cache = DynamicCache(config=model.config)
        self.held: list[int] = []

    def _forward(self, ids: Sequence[int], positions: Sequence[int], mask: Any = None) -> Any:
        import torch

        out = self.model(
            input_ids=torch.tensor([list(ids)], device=self.device),
            position_ids=torch.tensor([list(positions)], device=self.device),
            attention_mask=mask, past_key_values=self.cache, use_cache=True,
        )
        return out.logits[0].float()  # [len(ids), vocab]

    def catch_up(self, history: Sequence[int]) -> Any:
        """Evaluate what of ``history`` the cache lacks (at least its last token); that token's logits."""
        common = min(window_policy.common_prefix(self.held, history), len(history) - 1)
        if common == 0:
            self.reset()
        elif common < len(self.held):
            self.cache.crop(common - len(self.held))  # a negative count: drop that many from the end
            del self.held[common:]
        logits = None
        for start in range(common, len(history), DRAFT_CHUNK):
            chunk = list(history[start : start + DRAFT_CHUNK])
            logits = self._forward(chunk, range(start, start + len(chunk)))[-1]
            self.held.extend(chunk)
        return logits

    def grow(self, history: Sequence[int], shape: TreeShape, *, depth_limit: int, penalty: float = 1.0,
             agree: float | None = None) -> tuple[Tree, list[int | None]]:
        """A tree rooted at ``history[-1]``, best first by the estimated chance that the target
        draws each node's path, and the draft-cache slot of every node it evaluated (None for the
        leaves it did not).

        When the target samples, that chance is the draft's own probability (SpecExec). When it
        takes the arg-max (``agree`` given), a draft's probabilities say little: a draft of the
        target's own weights is sure of its first choice however flat its distribution, and the
        target draws exactly that. Then the first choice counts ``agree`` (the measured share of
        levels where the target took a guess) and the others share the rest in proportion to
        their draft probabilities (`_greedy_scores`), so a sure draft grows a deep chain rather
        than a bushy tree whose low-probability branches the target never takes.
        """
        import torch

        tree = Tree([int(history[-1])])
        base = len(history)  # the draft cache holds the history; the root sits at base - 1
        slot: list[int | None] = [base - 1]
        recent = sorted(set(history[-PENALTY_LAST_N:])) if penalty != 1.0 else []
        logprobs = _log_softmax(self.catch_up(history)[None], recent, penalty)  # [1, vocab]
        heap: list[tuple[float, int, int, int]] = []  # (-score, tie-break, parent, token)
        scores = [0.0]
        order = 0
        expanded = [0]
        for _ in range(max(depth_limit, 0)):
            for row, parent in enumerate(expanded):
                values, ids = torch.topk(logprobs[row], shape.branch)
                scores_here = values.tolist() if agree is None else greedy_scores(values.tolist(), agree)
                for value, token in zip(scores_here, ids.tolist()):
                    order += 1
                    heapq.heappush(heap, (-(scores[parent] + value), order, parent, int(token)))
            added: list[int] = []
            while heap and len(added) < shape.width and len(tree) < shape.budget:
                negative, _, parent, token = heapq.heappop(heap)
                if math.exp(-negative) < shape.min_prob:
                    heap.clear()
                    break
                if tree.depths[parent] + 1 > depth_limit:
                    continue
                added.append(tree.add(token, parent))
                scores.append(-negative)
                slot.append(None)
            if not added or len(tree) >= shape.budget:
                break
            if max(tree.depths[n] for n in added) >= depth_limit:  # deeper would overrun the reply or context
                break
            first = len(self.held)  # the slots these nodes take, after the history and earlier nodes
            for k, node in enumerate(added):
                slot[node] = first + k
            rows = ancestors_rows(tree, added, [None if s is None or s < base else s for s in slot])
            mask = tree_mask(rows, cached=base, total=first + len(added), dtype=_dtype(self.model), device=self.device)
            logits = self._forward([tree.tokens[n] for n in added], [base - 1 + tree.depths[n] for n in added], mask)
            self.held.extend(tree.tokens[n] for n in added)  # in cache order; fixed by ``accept``
            logprobs = _log_softmax(logits, recent, penalty)
            expanded = added
        return tree, slot

    def accept(self, history_len: int, tree: Tree, slot: Sequence[int | None], path: Sequence[int]) -> None:
        """Keep the history's entries and the accepted path's (as long as the draft evaluated it)."""
        keep = list(range(history_len))
        tokens: list[int] = []
        for node in path:
            where = slot[node]
            if where is None:
                break
            keep.append(where)
            tokens.append(tree.tokens[node])
        keep_positions(self.cache, keep)
        self.held = self.held[:history_len] + tokens

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.held = []


def _dtype(model: Any) -> Any:
    import torch

    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def greedy_scores(top: Sequence[float], agree: float) -> list[float]:
    """Log-chances that an arg-max target draws each of the draft's best tokens (``top``: their
    log-probabilities, best first): the first ``agree``; the others split ``1 - agree`` in
    proportion to their draft probabilities among all but the first."""
    p = [math.exp(v) for v in top]
    rest = max(1.0 - p[0], 1e-9)
    return [math.log(agree)] + [math.log((1.0 - agree) * q / rest + 1e-30) for q in p[1:]]


def _log_softmax(logits: Any, recent: Sequence[int], penalty: float) -> Any:
    """Row-wise log-probabilities, after the repeat penalty the target's sampler applies."""
    import torch

    logits = logits.float()
    if recent:
        index = torch.tensor(recent, device=logits.device)
        picked = logits[:, index]
        logits[:, index] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return torch.log_softmax(logits, dim=-1)


def verify(model: Any, cache: Any, tree: Tree, *, cached: int, device: Any) -> Any:
    """The target's logits at every tree node ([nodes, vocab]) in one forward over the tree."""
    import torch

    n = len(tree)
    rows = ancestors_rows(tree, range(n), [cached + i for i in range(n)])
    mask = tree_mask(rows, cached=cached, total=cached + n, dtype=_dtype(model), device=device)
    out = model(
        input_ids=torch.tensor([tree.tokens], device=device),
        position_ids=torch.tensor([[cached + d for d in tree.depths]], device=device),
        attention_mask=mask, past_key_values=cache, use_cache=True,
    )
    return out.logits[0]  # [nodes, vocab]


class Pace:
    """How deep the next tree goes, from what this reply has measured (the cost model of
    `planner.speculation`, for a tree): a step yields about ``1 + a + ... + a^D`` tokens for a
    per-level acceptance ``a`` and costs one verify forward plus ``D`` draft forwards, so ``D``
    maximises their ratio. Until a step has been timed, the shape's own depth is used.

    ``a`` is estimated as accepted levels over accepted levels plus misses, where a miss is a step
    whose walk ended at a node with children none of which the target drew. A walk that ends at a
    leaf was not refused: it ran out of tree, and says only that ``a`` may be higher still (counting
    it as a miss would pull ``a`` down, make the next tree shallower, and lock a good draft into
    shallow trees: what a draft of the target's own weights did before this estimate).
    """

    PRIOR = 0.8  # before a step has shown this reply's rate

    def __init__(self) -> None:
        self.draft_s = self.verify_s = None  # type: float | None
        self.kept = self.misses = 0

    def observe(self, *, draft_s: float, verify_s: float, depth: int) -> None:
        per_forward = draft_s / max(depth, 1)
        self.draft_s = per_forward if self.draft_s is None else 0.7 * self.draft_s + 0.3 * per_forward
        self.verify_s = verify_s if self.verify_s is None else 0.7 * self.verify_s + 0.3 * verify_s

    def accepted(self, n: int, *, missed: bool) -> None:
        """A step kept ``n`` guessed tokens; ``missed``: it ended where the tree had other guesses."""
        self.kept += n
        self.misses += missed

    def acceptance(self) -> float:
        """The share of tree levels where the target took a guess (``PRIOR`` before any step)."""
        if not (self.kept or self.misses):
            return self.PRIOR
        return min(max(self.kept / (self.kept + self.misses), 0.05), 0.98)

    def depth(self, most: int) -> int:
        if self.draft_s is None or self.verify_s is None or not (self.kept or self.misses):
            return most
        a = self.acceptance()

        def rate(d: int) -> float:
            return (1 - a ** (d + 1)) / (1 - a) / (self.verify_s + d * self.draft_s)  # type: ignore[operator]

        return max(range(1, most + 1), key=rate)


def spec_tokens(
    *,
    model: Any,
    cache: Any,
    device: Any,
    held: list[int],
    draft: Draft,
    shape: TreeShape,
    first_logits: Any,
    history: list[int],
    sample: Any,
    max_tokens: int,
    n_ctx: int,
    stop_ids: frozenset[int],
    stats: Speculation,
    penalty: float = 1.0,
) -> Iterator[int]:
    """The reply's tokens, one at a time, speculating: the same tokens plain decoding yields.

    ``held`` (the target cache's tokens, which the caller keeps) and ``history`` (prompt + reply)
    are extended in place. The caches are brought up to date before a step's tokens are yielded,
    so the caller may stop at any token. Ends after ``max_tokens`` or at the context's end.
    """
    pace = Pace()
    token = sample(first_logits, history)
    history.append(token)
    produced = 1
    yield token
    while produced < max_tokens and token not in stop_ids:
        cached = len(held)  # the root (the last token) is not in the target cache yet
        room = min(max_tokens - produced - 1, n_ctx - cached - 2)
        if room < 0:
            return
        started = time.perf_counter()
        tree, slot = draft.grow(history, shape, depth_limit=min(room, pace.depth(shape.max_depth)), penalty=penalty,
                                agree=pace.acceptance() if getattr(sample, "greedy", False) else None)
        drafted_at = time.perf_counter()
        logits = verify(model, cache, tree, cached=cached, device=device)
        pace.observe(draft_s=drafted_at - started, verify_s=time.perf_counter() - drafted_at, depth=max(tree.depths))
        node, drawn = 0, []
        while True:  # walk down the tree, drawing from the target at each node
            token = sample(logits[node], history)
            history.append(token)
            drawn.append(token)
            child = tree.children[node].get(token)
            if child is None or token in stop_ids:
                break
            node = child
        path = tree.path_to(node)
        keep_positions(cache, [*range(cached), *(cached + i for i in [0, *path])])
        held.extend(tree.tokens[i] for i in [0, *path])
        draft.accept(len(history) - len(drawn), tree, slot, path)
        stats.steps += 1
        stats.drafted += len(tree) - 1
        stats.accepted += len(path)
        pace.accepted(len(path), missed=bool(tree.children[node]) and token not in stop_ids)
        for token in drawn:
            produced += 1
            yield token

