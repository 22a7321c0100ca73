"""SpecExec in the torch backend (issue 18) with the real SmolLM2: the tree attention mask gives every
node the logits of its own path, pruning the cache to the accepted path leaves it as plain decoding
would, and a disk-offloaded target speculating replies exactly as it does without speculation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.runtime.backends import torch_spec, torch_spec_setup
from app.runtime.backends.torch_spec import Tree, TreeShape, keep_positions, offloaded_share, verify
from app.runtime.protocol import Sampling

STORY = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def never() -> bool:
    return False


@pytest.fixture(scope="module")
def model(smollm2_hf: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()


def _plain_last_logits(model: Any, ids: list[int]) -> Any:
    import torch

    return model(input_ids=torch.tensor([ids])).logits[0, -1]


def test_the_tree_mask_gives_each_node_the_logits_of_its_own_path(model: Any) -> None:
    import torch
    from transformers import DynamicCache

    prefix = [504, 2365, 6354, 16438, 27003, 690]  # "The quick brown fox jumps over"
    tree = Tree([prefix[-1]])
    a, b = tree.add(260, 0), tree.add(1345, 0)  # two children of the root
    c = tree.add(99, a)
    tree.add(7, c)  # a chain under the first child
    tree.add(500, b)
    tree.add(42, a)  # a sibling of c
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([prefix[:-1]]), past_key_values=cache, use_cache=True)
        logits = verify(model, cache, tree, cached=len(prefix) - 1, device="cpu")  # [7, vocab]
        for node in range(len(tree)):
            path = prefix + [tree.tokens[i] for i in tree.path_to(node)]
            assert torch.allclose(logits[node], _plain_last_logits(model, path), atol=1e-4), node
        # without the tree mask (plain causal attention over the same tokens) siblings would see each other
        causal = model(input_ids=torch.tensor([prefix + tree.tokens[1:]])).logits[0, len(prefix) - 1 :]
        assert not torch.allclose(causal[b], logits[b], atol=1e-2)
        # keep the root and the path a -> c; the next token then sees exactly prefix + a + c
        cached = len(prefix) - 1
        keep_positions(cache, [*range(cached), cached, cached + a, cached + c])
        assert cache.get_seq_length() == len(prefix) + 2
        nxt = model(input_ids=torch.tensor([[7]]), position_ids=torch.tensor([[len(prefix) + 2]]), past_key_values=cache, use_cache=True)
        expected = _plain_last_logits(model, prefix + [260, 99, 7])
        assert torch.allclose(nxt.logits[0, -1], expected, atol=1e-4)


def test_the_draft_grows_a_best_first_tree_within_its_budget(model: Any) -> None:
    import torch

    draft = torch_spec.Draft(model, device=torch.device("cpu"))
    history = [504, 2365, 6354, 16438, 27003, 690]
    with torch.inference_mode():
        tree, slot = draft.grow(history, TreeShape(budget=12, max_depth=4, width=3, branch=3, min_prob=0.0), depth_limit=4)
        greedy = int(torch.argmax(_plain_last_logits(model, history)))
    assert 2 <= len(tree) <= 12 and max(tree.depths) <= 4
    assert greedy in tree.children[0]  # the draft's most likely next token is the root's first child
    assert all(tree.parents[n] < n for n in range(1, len(tree)))
    # the draft cache holds the history and every node it evaluated, at the slots it says
    assert draft.cache.get_seq_length() == len(draft.held) == len(history) + sum(s is not None for s in slot[1:])


def test_which_placements_speculate() -> None:
    layers = {f"model.layers.{i}": ("disk" if i >= 10 else "cpu") for i in range(30)}
    assert offloaded_share(layers, 30) == pytest.approx(2 / 3)
    assert offloaded_share({"": "cpu"}, 30) == 0.0 and offloaded_share(None, 30) == 0.0
    on_gpu = {**{f"model.layers.{i}": (0 if i < 20 else "cpu") for i in range(30)}, "lm_head": 0}
    assert offloaded_share(on_gpu, 30) == pytest.approx(1 / 3)  # with a GPU, RAM is the slow place
    assert torch_spec_setup.mode_of(None) == "auto" and torch_spec_setup.mode_of("draft:x") == "on" and torch_spec_setup.mode_of(False) == "off"
    with pytest.raises(ValueError):
        torch_spec_setup.mode_of("sometimes")


@pytest.fixture(scope="module")
def offloaded(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """SmolLM2 with its last 6 layers on disk (an offload folder in tmp) and an int8 resident draft."""
    from app.runtime.backends.torch import TorchBackend
    from app.runtime.spec.offload import pinned_map

    settings = {"dtype": "float32", "n_ctx": 1024, "threads": 2, "device_map": pinned_map(30, range(24, 30)),
                "offload_folder": str(tmp_path_factory.mktemp("offload")), "speculate": "on", "draft_quant": "int8",
                "spec_tree": {"budget": 12, "max_depth": 5, "width": 2}}
    backend = TorchBackend(smollm2_hf, settings)
    yield backend
    backend.close()


def test_an_offloaded_target_speculates_and_replies_exactly_as_without(offloaded: Any) -> None:
    assert offloaded.spec.draft is not None and "int8" in offloaded.spec.reason
    assert "disk" in offloaded._model.hf_device_map.values()
    greedy = Sampling(temperature=0.0, repeat_penalty=1.1, max_tokens=16)
    plain = offloaded.chat(STORY, greedy, on_token=lambda _: None, is_cancelled=never, speculate="off")
    pieces: list[str] = []
    tree = offloaded.chat(STORY, greedy, on_token=pieces.append, is_cancelled=never)
    assert tree.text == plain.text and tree.completion_tokens == plain.completion_tokens == 16
    assert "".join(pieces) == tree.text
    spec = tree.speculation
    assert spec is not None and spec["steps"] > 0 and spec["accepted"] > 0 and spec["steps"] < 15  # several tokens per forward
    assert plain.speculation is not None and plain.speculation["steps"] == 0 and "off" in plain.speculation["off"]
    # the target cache holds exactly the tokens the backend says (rejected branches gone)
    assert offloaded._cache.get_seq_length() == len(offloaded._held) == offloaded._seen


def test_seeded_sampling_draws_the_same_tokens_with_speculation(offloaded: Any) -> None:
    """Each token is drawn from the target's own distribution in order, so the seed gives the same reply."""
    sampled = Sampling(temperature=0.8, top_k=40, top_p=0.95, seed=11, max_tokens=10)
    plain = offloaded.chat(STORY, sampled, on_token=lambda _: None, is_cancelled=never, speculate="off")
    tree = offloaded.chat(STORY, sampled, on_token=lambda _: None, is_cancelled=never)
    assert tree.text == plain.text and tree.speculation is not None and tree.speculation["steps"] > 0


def test_the_gguf_file_drafts_in_llama_cpp_with_the_same_replies(offloaded: Any, smollm2_hf: Path) -> None:
    """A target converted from a GGUF file gets that file as its draft, in llama.cpp (the default);
    greedy and seeded replies stay plain decoding's, and a greedy reply is checked in long chains."""
    before = offloaded.spec
    offloaded.spec = torch_spec_setup.setup(offloaded._model, smollm2_hf, {**offloaded.settings, "draft_quant": None, "spec_tree": None})
    try:
        assert offloaded.spec.draft is not None and offloaded.spec.draft.kind == "gguf", offloaded.spec.reason
        assert "llama.cpp" in offloaded.spec.reason
        greedy = Sampling(temperature=0.0, repeat_penalty=1.1, max_tokens=24)
        plain = offloaded.chat(STORY, greedy, on_token=lambda _: None, is_cancelled=never, speculate="off")
        tree = offloaded.chat(STORY, greedy, on_token=lambda _: None, is_cancelled=never)
        assert tree.text == plain.text and tree.completion_tokens == plain.completion_tokens
        spec = tree.speculation
        assert spec is not None and spec["accepted"] >= 2 * spec["steps"]  # the same model, quantized: its chains hold
        assert offloaded._cache.get_seq_length() == len(offloaded._held) == offloaded._seen
        sampled = Sampling(temperature=0.8, top_k=40, top_p=0.95, seed=5, max_tokens=8)
        plain = offloaded.chat(STORY, sampled, on_token=lambda _: None, is_cancelled=never, speculate="off")
        tree = offloaded.chat(STORY, sampled, on_token=lambda _: None, is_cancelled=never)
        assert tree.text == plain.text and tree.speculation is not None and tree.speculation["steps"] > 0
    finally:
        offloaded.spec.close()
        offloaded.spec = before


def test_the_gguf_draft_grows_a_chain_with_its_runners_up_as_leaves(model_path: Path) -> None:
    from app.runtime.backends.torch_spec_llama import LlamaDraft

    draft = LlamaDraft(model_path, n_ctx=256, n_threads=2)
    try:
        history = [504, 2365, 6354, 16438, 27003, 690]
        tree, slot = draft.grow(history, TreeShape(budget=12, branch=3, min_prob=0.0), depth_limit=5, agree=0.9)
        chain = [n for n in range(1, len(tree)) if slot[n] is not None]
        assert len(tree) <= 12 and max(tree.depths) == 5
        assert [tree.depths[n] for n in chain] == [1, 2, 3, 4]  # the deepest guess is a leaf: nothing reads its logits
        assert all(tree.children[n] for n in chain) and all(tree.parents[n] == n - 1 for n in chain)
        assert draft.kv.n == len(history) + len(chain) and draft.kv.held()[len(history):] == [tree.tokens[n] for n in chain]
        assert len(tree) > 6  # runners-up were added as leaves
        draft.accept(len(history), tree, slot, chain[:2])
        assert draft.kv.held() == history + [tree.tokens[n] for n in chain[:2]]
    finally:
        draft.close()


def test_the_pace_counts_a_walk_off_the_tree_as_no_miss() -> None:
    pace = torch_spec.Pace()
    assert pace.depth(10) == 10 and pace.acceptance() == torch_spec.Pace.PRIOR
    pace.observe(draft_s=0.2, verify_s=0.4, depth=4)
    for _ in range(5):
        pace.accepted(4, missed=False)  # every guess taken, down to the leaf: no sign of a refusal
    assert pace.acceptance() == 0.98 and pace.depth(10) >= 8
    for _ in range(20):
        pace.accepted(0, missed=True)  # the first guess refused, 20 times: 20 of 40 levels taken
    assert pace.acceptance() < 0.6 and pace.depth(10) < 8
    scores = torch_spec.greedy_scores([-0.2, -2.5, -3.0], 0.9)  # 0.82, 0.08, 0.05 of a distribution
    assert scores[0] == pytest.approx(math.log(0.9)) and scores[1] > scores[2]
    assert sum(math.exp(v) for v in scores) <= 1.0 + 1e-9
