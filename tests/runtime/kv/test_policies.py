"""KV policies on a tiny random Llama: budgets, positions after eviction, observer errors, registry.

A one-layer model makes positions checkable exactly: its keys and values depend only on each token
and its RoPE position, so a streaming cache's logits must equal a from-scratch forward over the
tokens the policy kept, at the positions the contract says.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.runtime.kv import OBSERVED_ATTENTION, POLICIES, make_cache
from app.runtime.protocol import ErrorKind, RuntimeFailure

EVICTING = [name for name in POLICIES if name != "full"]


def tiny_model(layers: int = 2, attn: str = OBSERVED_ATTENTION) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(attn)
    return model


def step(model: LlamaForCausalLM, cache, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, past_key_values=cache, position_ids=cache.next_positions(ids.shape[1]),
                use_cache=True, **cache.forward_kwargs())
    return out.logits


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_model()


@pytest.mark.parametrize("name", EVICTING)
@torch.no_grad()
def test_each_policy_holds_exactly_its_budget(model: LlamaForCausalLM, name: str) -> None:
    budget = 16
    cache = make_cache(name, budget_tokens=budget, config=model.config)
    ids = torch.randint(0, 97, (1, 80), generator=torch.Generator().manual_seed(1))
    fed = 0
    sizes = []
    for n in [8, 8, 8] + [1] * 40 + [16]:  # prefill chunks, decode steps, another prefill
        before = cache.get_seq_length()
        step(model, cache, ids[:, fed : fed + n])
        fed += n
        assert cache.seen_tokens == fed
        assert cache.get_seq_length() == min(fed, budget)
        for layer in cache.layers:  # this forward's attention saw the kept tokens plus the new ones
            assert layer.stored == before + n
        cache.trim()
        for layer in cache.layers:
            assert layer.keys.shape[-2] == layer.values.shape[-2] == layer.positions.shape[-1] == min(fed, budget)
        sizes.append(cache.kv_bytes())
    assert len(set(sizes[sizes.index(max(sizes)) :])) == 1  # flat once full


@pytest.mark.parametrize("rerotate", [True, False])
@torch.no_grad()
def test_sink_window_past_its_budget_matches_a_recomputation_of_what_it_kept(rerotate: bool) -> None:
    model = tiny_model(layers=1, attn="sdpa")
    budget, sinks = 12, 3
    cache = make_cache("sink_window", budget_tokens=budget, config=model.config, sinks=sinks, rerotate=rerotate)
    tokens = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(2))[0].tolist()
    step(model, cache, torch.tensor([tokens]))
    for i in range(30):  # far past the budget
        new = (tokens[-1] * 7 + i) % 97
        kept_idx = list(range(sinks)) + list(range(len(tokens) - (budget - sinks), len(tokens)))
        kept_idx = sorted(set(kept_idx)) if len(tokens) > budget else list(range(len(tokens)))
        got = step(model, cache, torch.tensor([[new]]))[0, -1]
        context = [tokens[j] for j in kept_idx] + [new]
        positions = list(range(len(context))) if rerotate else kept_idx + [len(tokens)]
        want = model(input_ids=torch.tensor([context]), position_ids=torch.tensor([positions])).logits[0, -1]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        tokens.append(new)
    assert cache.get_seq_length() == budget
    cache.trim()
    stored = cache.layers[0].positions[0, 0].tolist()
    if rerotate:  # positions stay inside the cache: the model never sees one past the budget
        assert max(stored) <= budget
    else:  # original positions: the sinks and the most recent tokens
        assert stored == list(range(sinks)) + list(range(len(tokens) - (budget - sinks), len(tokens)))


@pytest.mark.parametrize("name", ["h2o", "keydiff", "snapkv"])
@torch.no_grad()
def test_per_head_policies_keep_original_positions_in_order(model: LlamaForCausalLM, name: str) -> None:
    budget = 20
    cache = make_cache(name, budget_tokens=budget, config=model.config, rerotate=False)
    ids = torch.randint(0, 97, (1, 70), generator=torch.Generator().manual_seed(3))
    step(model, cache, ids[:, :40])
    for t in range(40, 70):
        step(model, cache, ids[:, t : t + 1])
    cache.trim()
    recent = cache.window if name == "snapkv" else cache.recent
    for layer in cache.layers:
        pos = layer.positions[0]  # [H, budget]: which original tokens each head kept
        assert pos.shape == (2, budget)
        assert bool((pos[:, 1:] > pos[:, :-1]).all())  # distinct, in order
        assert int(pos.max()) == 69 and int(pos.min()) >= 0
        assert pos[:, -recent:].tolist() == [list(range(70 - recent, 70))] * 2  # the recent ones kept


@torch.no_grad()
def test_attention_policies_refuse_to_evict_blind() -> None:
    model = tiny_model(attn="sdpa")  # cannot report attention weights
    cache = make_cache("h2o", budget_tokens=8, config=model.config)
    step(model, cache, torch.arange(12)[None])
    with pytest.raises(RuntimeFailure) as err:
        step(model, cache, torch.tensor([[5]]))
    assert err.value.kind == ErrorKind.UNSUPPORTED
    assert OBSERVED_ATTENTION in str(err.value)


def test_registry_errors_name_what_to_do(model: LlamaForCausalLM) -> None:
    cases = [
        ("lru", {"budget_tokens": 64}),
        ("sink_window", {"budget_tokens": 0}),
        ("sink_window", {"budget_tokens": -5}),
        ("h2o", {"budget_tokens": 12.5}),
        ("keydiff", {"budget_tokens": True}),
        ("snapkv", {"budget_tokens": None}),
        ("sink_window", {"budget_tokens": 4, "sinks": 4}),
        ("sink_window", {"budget_tokens": 64, "sink": 4}),
        ("h2o", {"budget_tokens": 64, "recent": 64}),
    ]
    for name, kwargs in cases:
        with pytest.raises(RuntimeFailure) as err:
            make_cache(name, config=model.config, **kwargs)
        assert err.value.kind == ErrorKind.INVALID_PARAMS, (name, kwargs)
    assert "sink_window" in str(_failure(lambda: make_cache("lru", budget_tokens=64, config=model.config)))
    assert make_cache("full", budget_tokens=None, config=model.config).get_max_length() == -1


def _failure(fn) -> RuntimeFailure:
    with pytest.raises(RuntimeFailure) as err:
        fn()
    return err.value
