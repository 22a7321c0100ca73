"""Weight-only int8/int4 on the real SmolLM2 (fp32 transformers): greedy agreement, perplexity,
save/load round trip, and the saved bench figures that the planner reads."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from app.kernels.bench import decode_tokens_per_s
from app.kernels.quant_linear.module import QuantizedLinear
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.quantize import torch_quant as tq
from app.runtime.texts import held_out_text

GREEDY_TOKENS = 10  # tokens of greedy output that must match fp32 exactly (the brief asks >= 8)
PPL_TOKENS = 256  # held-out tokens scored for perplexity (one forward: the test budget)
PROMPT = "Write a short poem about the sea."


@pytest.fixture(scope="module")
def smol(smollm2_hf: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    prompt = tokenizer(text, return_tensors="pt").input_ids  # [1, T]
    held_out = tokenizer(held_out_text()[:20_000], return_tensors="pt").input_ids[:, :PPL_TOKENS]
    assert held_out.shape[1] == PPL_TOKENS
    _, greedy = decode_tokens_per_s(model, prompt, tokens=GREEDY_TOKENS)
    return {"model": model, "tokenizer": tokenizer, "prompt": prompt, "held_out": held_out,
            "greedy": greedy, "ppl": perplexity(model, held_out)}


def perplexity(model: nn.Module, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        return math.exp(float(model(input_ids=ids, labels=ids).loss))


def quantized(smol, scheme: str) -> nn.Module:  # type: ignore[no-untyped-def]
    model = copy.deepcopy(smol["model"])
    tq.quantize_model(model, scheme)
    return model


def test_schemes_validate_themselves() -> None:
    assert {"int8", "int4-g32", "int4-g64", "int4-g128", "int4-g64-asym"} <= set(tq.SCHEMES)
    for bad in ((8, 32, True), (4, 48, True), (3, 0, True), (8, 0, False)):
        with pytest.raises(ValueError):
            tq.WeightOnlyConfig(*bad)
    with pytest.raises(RuntimeFailure) as info:
        tq.get_scheme("int3")
    assert info.value.kind == ErrorKind.INVALID_PARAMS
    assert tq.WeightOnlyConfig.from_dict(tq.SCHEMES["int4-g128-asym"].to_dict()) == tq.SCHEMES["int4-g128-asym"]


def test_int8_matches_fp32_greedy_and_perplexity(smol, capsys) -> None:  # type: ignore[no-untyped-def]
    model = quantized(smol, "int8")
    swapped = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(swapped) == 30 * 7  # q, k, v, o, gate, up, down in each of 30 layers
    # the output head stays a dense fp32 Linear, still tied to the embedding
    assert isinstance(model.lm_head, nn.Linear)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.hearth_quantization["scheme"] == "int8"
    _, greedy = decode_tokens_per_s(model, smol["prompt"], tokens=GREEDY_TOKENS)
    assert greedy == smol["greedy"]
    ppl = perplexity(model, smol["held_out"])
    rise = ppl / smol["ppl"] - 1
    with capsys.disabled():
        print(f"\n[torch_quant] fp32 ppl {smol['ppl']:.3f}, int8 ppl {ppl:.3f} ({100 * rise:+.2f}%)")
    assert rise < 0.02


def test_int4_is_measured_and_stays_sane(smol, capsys) -> None:  # type: ignore[no-untyped-def]
    model = quantized(smol, "int4-g64")
    ppl = perplexity(model, smol["held_out"])
    rise = ppl / smol["ppl"] - 1
    with capsys.disabled():
        print(f"\n[torch_quant] int4-g64 ppl {ppl:.3f} ({100 * rise:+.2f}%)")
    assert rise < 0.5  # reported, not a target: a broken int4 path would be off by orders of magnitude


def test_save_load_round_trip(smol, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # groups of 128 over 576 inputs (padded last group) with zero points: the hardest layout
    scheme = "int4-g128-asym"
    model = quantized(smol, scheme)
    folder = tmp_path / "plain-name"  # nothing about the scheme in the name
    tq.save_quantized(model, folder, scheme, tokenizer=smol["tokenizer"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain-name"]  # no staging left behind
    config = json.loads((folder / "config.json").read_text())
    assert config["hearth_quantization"]["scheme"] == scheme
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        assert json.loads(fh.metadata()["hearth_quantization"]) == config["hearth_quantization"]
        assert "lm_head.weight" not in set(fh.keys())  # tied: stored once
    loaded = tq.load_quantized(folder)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = smol["held_out"][:, :24]  # more than 16 rows: the fp32 reference path
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
        # one row: the decode path (bf16 activations where torch's ops run). Same quantized
        # layers bit for bit; only the fp32 output head's GEMV may differ in its last bits, as
        # MKL's reduction order depends on where the reloaded embedding sits in memory.
        one = ids[:, :1]
        a, b = loaded(one).logits, model(one).logits
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    # a folder whose two records disagree is refused, not guessed at
    config["hearth_quantization"]["group_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeFailure) as info:
        tq.load_quantized(folder)
    assert info.value.kind == ErrorKind.MODEL_INVALID


def test_cpu_speedup_reads_the_saved_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path))
    assert tq.cpu_speedup("int8") is None  # never measured
    tq.save_bench({"cpu_decode_speedup": {"int8": 1.25, "int4-g64": 0.8}, "cpu_compute_dtype": "float32"})
    assert tq.cpu_speedup("int8") == 1.25
    assert tq.cpu_speedup(tq.SCHEMES["int4-g64"]) == 0.8
    assert tq.cpu_speedup("int4-g64-asym") == 0.8  # same kernel and bytes as symmetric
    assert tq.cpu_speedup("int4-g32") is None
    assert tq.cpu_compute_dtype() is None  # the bench found fp32 faster: keep fp32 activations
    tq.bench_file().write_text("{not json")
    assert tq.cpu_speedup("int8") is None


def test_a_saved_int8_folder_chats_in_the_torch_backend_like_int8_on_load(smol, smollm2_hf: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What the quantize wizard writes is a library model: the torch backend rebuilds it as saved."""
    from app.runtime.backends.torch import TorchBackend
    from app.runtime.protocol import Sampling

    folder = tmp_path / "smol-small"
    tq.save_quantized(quantized(smol, "int8"), folder, "int8", tokenizer=smol["tokenizer"])
    greedy = Sampling(temperature=0.0, max_tokens=12, repeat_penalty=1.1)
    answers = []
    for source, settings in ((folder, {}), (smollm2_hf, {"weight_quant": "int8"})):
        backend = TorchBackend(source, {"dtype": "float32", "n_ctx": 512, "threads": 2, **settings})
        try:
            assert any(isinstance(m, QuantizedLinear) for m in backend._model.modules())
            done = backend.chat([{"role": "user", "content": PROMPT}], greedy, on_token=lambda _: None, is_cancelled=lambda: False)
            answers.append(done.text)
        finally:
            backend.close()
    assert answers[0] and answers[0] == answers[1]
