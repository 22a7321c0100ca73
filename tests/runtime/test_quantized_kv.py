"""The int8/int4 KIVI KV cache on the real SmolLM2 (fp32 transformers): greedy agreement with the
plain cache, perplexity over a chunked held-out text (later chunks read the quantized past), the
fused one-token attention, memory, and its refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from app.kernels.bench import decode_tokens_per_s
from app.runtime.kv.quantized import KV_CACHES, QUANTIZED_ATTENTION, Int4KVCache, Int8KVCache
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.texts import held_out_text

GREEDY_TOKENS = 12  # tokens of greedy output that must match the plain cache exactly (>= 8)
CHUNK, CHUNKS = 32, 8  # 256 held-out tokens fed 32 at a time: each chunk attends to a quantized past
SMALL = {"group_size": 16, "residual": 16}  # small groups, so that a short test quantizes most tokens


@pytest.fixture(scope="module")
def smol(smollm2_hf: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a short poem about the sea."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    prompt = tokenizer(text, return_tensors="pt").input_ids  # [1, T]
    held_out = tokenizer(held_out_text()[:20_000], return_tensors="pt").input_ids[:, : CHUNK * CHUNKS]
    _, greedy = decode_tokens_per_s(model, prompt, tokens=GREEDY_TOKENS)
    return {"model": model, "prompt": prompt, "held_out": held_out, "greedy": greedy}


def chunked_perplexity(model, ids: torch.Tensor, cache) -> float:  # type: ignore[no-untyped-def]
    """Perplexity of ids [1, T] fed CHUNK tokens at a time through ``cache`` (None: the default)."""
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, ids.shape[1], CHUNK):
            chunk = ids[:, start : start + CHUNK]
            out = model(input_ids=chunk, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
            nll -= float(logp.gather(1, chunk[0, 1:, None]).sum())
            count += chunk.shape[1] - 1
    return math.exp(nll / count)


def test_int8_kv_matches_plain_cache(smol, capsys) -> None:  # type: ignore[no-untyped-def]
    model = smol["model"]
    cache = Int8KVCache(config=model.config, **SMALL)
    _, greedy = decode_tokens_per_s(model, smol["prompt"], tokens=GREEDY_TOKENS, cache_factory=lambda: cache)
    assert greedy == smol["greedy"]
    store = cache.layers[0].store
    assert store.n_quantized >= 32 and store.n_tail <= 16 + 16  # most tokens live quantized
    fp32_bytes = 2 * 30 * 3 * 64 * 4 * cache.get_seq_length()  # k and v, 30 layers, 3 heads of 64
    assert cache.kv_bytes() < 0.6 * fp32_bytes

    base = chunked_perplexity(model, smol["held_out"], None)
    ppl8 = chunked_perplexity(model, smol["held_out"], Int8KVCache(config=model.config, **SMALL))
    ppl4 = chunked_perplexity(model, smol["held_out"], Int4KVCache(config=model.config, **SMALL))
    with capsys.disabled():
        print(
            f"\n[quantized_kv] ppl over {CHUNKS} chunks of {CHUNK}: plain {base:.3f}, "
            f"int8_kv {ppl8:.3f} ({100 * (ppl8 / base - 1):+.2f}%), "
            f"int4_kv {ppl4:.3f} ({100 * (ppl4 / base - 1):+.2f}%)"
        )
    assert ppl8 / base - 1 < 0.02
    assert ppl4 / base - 1 < 0.5  # reported; a broken int4 store would be far off


def test_fused_decode_attention_reads_the_store(smol) -> None:  # type: ignore[no-untyped-def]
    model = smol["model"]
    previous = model.config._attn_implementation
    model.set_attn_implementation(QUANTIZED_ATTENTION)
    try:
        cache = Int8KVCache(config=model.config, **SMALL)
        ids: list[int] = []
        with torch.inference_mode():
            step = smol["prompt"]
            for _ in range(GREEDY_TOKENS):
                out = model(input_ids=step, past_key_values=cache, use_cache=True, **cache.forward_kwargs())
                ids.append(int(out.logits[0, -1].argmax()))
                step = torch.tensor([[ids[-1]]])
        assert all(layer.fused for layer in cache.layers)  # decode went through decode_attention
        assert ids == smol["greedy"]
    finally:
        model.set_attn_implementation(previous)


def test_registry_names_and_refusals(smol) -> None:  # type: ignore[no-untyped-def]
    config = smol["model"].config
    assert set(KV_CACHES) == {"int8_kv", "int4_kv"}
    assert KV_CACHES["int4_kv"](config=config).bits == 4
    for bad in ({"bits": 3}, {"group_size": 20}, {"budget_tokens": 0}):
        with pytest.raises(RuntimeFailure) as info:
            Int8KVCache(config=config, **bad)
        assert info.value.kind == ErrorKind.INVALID_PARAMS
    capped = Int8KVCache(config=config, budget_tokens=8)
    with pytest.raises(RuntimeFailure, match="cap"):
        with torch.inference_mode():
            smol["model"](input_ids=smol["prompt"][:, :9], past_key_values=capped, use_cache=True)
    assert capped.next_positions(3).tolist() == [[0, 1, 2]]
