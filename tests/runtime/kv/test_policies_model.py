"""KV policies on the real SmolLM2 (transformers' own LlamaForCausalLM), and the shipped long text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.runtime.kv import OBSERVED_ATTENTION, POLICIES, make_cache
from app.runtime.kv import bench as kv_bench
from app.runtime.measurements import KV_RANKING, Machine, MemoryMeasurementStore
from app.runtime.texts import held_out_text, long_text

N_NEW = 20
# The shared smollm2_hf fixture converts the GGUF once per session (20 s alone, minutes on a busy
# machine); it counts against the first test here.


@pytest.fixture(scope="module")
def smollm2(smollm2_hf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    return model, tokenizer


def prompt_ids(tokenizer) -> torch.Tensor:
    messages = [{"role": "user", "content": "Describe a walk by the sea in three sentences."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt").input_ids


@torch.no_grad()
def greedy(model, cache, ids: torch.Tensor, n: int) -> list[int]:
    """The decode-loop contract of app.runtime.kv, greedily."""
    out: list[int] = []
    x = ids
    for _ in range(n):
        logits = model(input_ids=x, past_key_values=cache, position_ids=cache.next_positions(x.shape[1]),
                       use_cache=True, **cache.forward_kwargs()).logits
        x = logits[:, -1:].argmax(-1)
        out.append(int(x))
    return out


def test_under_budget_every_policy_decodes_exactly_like_transformers(smollm2) -> None:
    model, tokenizer = smollm2
    ids = prompt_ids(tokenizer)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        reference = model.generate(ids, max_new_tokens=N_NEW, do_sample=False)[0, ids.shape[1] :].tolist()
    n = len(reference)  # generate() stops early at the end-of-turn token
    assert n >= 10
    model.set_attn_implementation(OBSERVED_ATTENTION)
    budget = ids.shape[1] + N_NEW + 8
    for name in POLICIES:
        cache = make_cache(name, budget_tokens=budget, config=model.config)
        assert greedy(model, cache, ids, n) == reference, name
        assert cache.get_seq_length() == ids.shape[1] + n - 1


@torch.no_grad()
def test_positions_after_eviction_are_transformers_own_defaults(smollm2) -> None:
    """With re-rotation, next_positions() is what LlamaModel uses when position_ids is omitted, so a
    caller that omits them gets the same logits, step after step past the budget."""
    model, tokenizer = smollm2
    model.set_attn_implementation(OBSERVED_ATTENTION)
    ids = tokenizer(long_text()[:600], return_tensors="pt").input_ids[:, :48]
    explicit = make_cache("sink_window", budget_tokens=24, config=model.config)
    implicit = make_cache("sink_window", budget_tokens=24, config=model.config)
    a = model(input_ids=ids, past_key_values=explicit, position_ids=explicit.next_positions(48)).logits
    b = model(input_ids=ids, past_key_values=implicit).logits
    torch.testing.assert_close(a, b)
    token = a[:, -1:].argmax(-1)
    for _ in range(6):
        a = model(input_ids=token, past_key_values=explicit, position_ids=explicit.next_positions(1)).logits
        b = model(input_ids=token, past_key_values=implicit).logits
        torch.testing.assert_close(a, b)
        assert explicit.next_positions(1).item() == explicit.get_seq_length() == 24
        token = a[:, -1:].argmax(-1)
    assert explicit.seen_tokens == 54
    assert len({tuple(p.positions.shape) for p in explicit.layers}) == 1


def test_the_long_text_is_long_natural_english_in_two_disjoint_parts(smollm2) -> None:
    _, tokenizer = smollm2
    first, second = long_text(), held_out_text()
    assert first.startswith("Persuasion") and second.startswith("Chapter 13")
    assert first[-2000:] not in second and second[:2000] not in first
    for text in (first, second):
        assert len(tokenizer(text).input_ids) >= 16_000
        words = text.split()
        assert sum(w.lower() in {"the", "and", "of", "to"} for w in words) > len(words) / 20  # English prose


def test_the_torch_plan_evicts_with_the_best_measured_policy() -> None:
    from app.runtime.library import ModelInfo
    from app.runtime.planner import UserPrefs, load_profile, plan

    store = MemoryMeasurementStore(Machine("test-cpu", 2, 2**33))
    model = ModelInfo(id="m", name="m", path="/m", format="hf", source="folder", file_size=1, architecture="llama",
                      parameters=135_000_000, quantization=None, context_length=8192, n_layers=30, n_embd=576, n_head=9, n_head_kv=3, head_dim=64,
                      vocab_size=49152, has_chat_template=True)
    huge = UserPrefs(backend="torch", context_length=1_000_000)  # 1M tokens of KV fit no 4 GB GPU: the plan evicts

    def eviction() -> tuple[str, str]:
        made = plan(model, load_profile("gtx1650-4gb"), huge, measurements=store)
        return made.kv_eviction.value["policy"], made.kv_eviction.reason

    name, reason = eviction()
    assert name == "sink_window" and "StreamingLLM" in reason  # nothing measured yet
    budgets = kv_bench.budgets_for(400)
    long_nll = {"full": [2.0] * 399, "sink_window": [2.2] * 399, "h2o": [2.1] * 399, "snapkv": [2.3] * 399, "keydiff": [2.4] * 399}
    runs = {"policies": {p: {"10%": 50.0, "50%": 8.0} for p in kv_bench.EVICTING}, "window": 90.0}
    within = kv_bench.within_section(400, budgets, long_nll, runs)
    summary = kv_bench.summarise(within, {})
    kv_bench.keep_ranking(summary, store)
    assert store.get(KV_RANKING)["best"] == "h2o" == summary["best_per_budget"]["25%"]["policy"]
    name, reason = eviction()
    assert name == "h2o" and "h2o measured best" in reason
    store.forget(KV_RANKING)
    assert eviction()[0] == "sink_window"
