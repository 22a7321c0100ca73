"""GPTQ for the torch int4/int8 targets: exactly round-to-nearest when no error can move (H = I),
a smaller layer output error than round-to-nearest on correlated inputs, and on the real SmolLM2 a
lower held-out perplexity than round-to-nearest in the same saved format."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from app.kernels.quant_linear import Int4Weight, dequantize_int4, dequantize_int8, quantize_int4, quantize_int8
from app.runtime.quantize import evaluate as ev
from app.runtime.quantize import torch_quant as tq
from app.runtime.quantize.gptq import GPTQConfig, gptq_quantize

CAL_CHUNKS, CAL_SIZE = 4, 256  # 1,024 calibration tokens: few, to keep the test short (the figures use more)
EVAL_WINDOWS = 1  # one window of 512: 447 scored held-out tokens


@pytest.mark.parametrize(("bits", "group", "symmetric"), [(8, 0, True), (4, 32, True), (4, 64, False), (4, 128, True), (4, 128, False)])
def test_an_identity_hessian_gives_round_to_nearest_bit_for_bit(bits: int, group: int, symmetric: bool) -> None:
    torch.manual_seed(0)
    weight = torch.randn(48, 200) * 0.05  # 200 columns: the last int4 group of 128 is padded
    ours = gptq_quantize(weight, torch.eye(200), bits, group, symmetric)
    if bits == 8:
        rtn = quantize_int8(weight)
        assert torch.equal(ours.qweight, rtn.qweight) and torch.equal(ours.scale, rtn.scale)
    else:
        rtn = quantize_int4(weight, group, symmetric)
        assert isinstance(ours, Int4Weight)
        assert torch.equal(ours.packed, rtn.packed) and torch.equal(ours.scale, rtn.scale)
        assert (ours.zero is None) == (rtn.zero is None) and (ours.zero is None or torch.equal(ours.zero, rtn.zero))


@pytest.mark.parametrize(("bits", "group", "symmetric"), [(8, 0, True), (4, 64, True), (4, 32, False)])
def test_gptq_keeps_the_layer_output_closer_than_rounding(bits: int, group: int, symmetric: bool) -> None:
    torch.manual_seed(1)
    weight = torch.randn(64, 256) * 0.05
    x = torch.randn(4096, 256) @ (torch.randn(256, 256) * 0.2) + torch.randn(4096, 256)  # correlated inputs
    hessian = 2.0 * x.T @ x / x.shape[0]
    deq = dequantize_int8 if bits == 8 else dequantize_int4
    rtn = quantize_int8(weight) if bits == 8 else quantize_int4(weight, group, symmetric)
    ours = gptq_quantize(weight, hessian, bits, group, symmetric, config=GPTQConfig(block_size=64))
    error = lambda q: float(((x @ weight.T - x @ deq(q).T) ** 2).mean())  # noqa: E731
    assert error(ours) < 0.8 * error(rtn)


def test_settings_validate_themselves() -> None:
    for bad in ({"damp": 0.0}, {"damp": 1.5}, {"block_size": 0}):
        with pytest.raises(ValueError):
            GPTQConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        gptq_quantize(torch.ones(4, 4), torch.eye(4), 3)


def _perplexity(model: torch.nn.Module, chunks: list[list[int]]) -> float:
    scorer = ev.Scorer()
    with torch.inference_mode():
        for chunk in chunks:
            scorer.add(model(torch.tensor([chunk])).logits[0].float().numpy(), chunk)
    return scorer.scores().perplexity


@pytest.mark.quality  # minutes of CPU: `make test-quality`, not `make test`
@pytest.mark.timeout(900)
def test_gptq_beats_rounding_on_smollm2_in_the_same_format(smollm2_hf: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.kernels.quant_linear.module import QuantizedLinear
    from app.runtime.quantize.evaluate_torch import tokenize_hf
    from app.runtime.quantize.imatrix import calibration_chunks
    from app.runtime.texts import long_text

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    held_out = ev.windows(tokenize_hf(smollm2_hf, ev.held_out_text(), ev.WINDOW * EVAL_WINDOWS), 1)[:EVAL_WINDOWS]
    calibration = calibration_chunks(tokenizer, long_text(), CAL_CHUNKS, CAL_SIZE)
    base = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()

    rtn = copy.deepcopy(base)
    tq.quantize_model(rtn, "int4-g64", cpu_dtype=None)
    gptq = copy.deepcopy(base)
    tq.quantize_model(gptq, "int4-g64", cpu_dtype=None, method="gptq", calibration=calibration)
    assert gptq.config.hearth_quantization["algorithm"] == "gptq"
    ppl_rtn, ppl_gptq = _perplexity(rtn, held_out), _perplexity(gptq, held_out)
    assert ppl_gptq < ppl_rtn, (ppl_gptq, ppl_rtn)

    # saved and loaded by the existing int4 path, unchanged: the same weights, the same logits
    folder = tq.save_quantized(gptq, tmp_path / "smollm2-int4-g64-gptq", "int4-g64")
    assert tq.read_scheme(folder).name == "int4-g64"
    loaded = tq.load_quantized(folder)
    assert loaded.config.hearth_quantization["algorithm"] == "gptq"
    layer = loaded.model.layers[3].mlp.down_proj
    assert isinstance(layer, QuantizedLinear) and isinstance(layer.weight_q, Int4Weight)
    assert torch.equal(layer.packed, gptq.model.layers[3].mlp.down_proj.packed)
    probe = torch.tensor([held_out[0][:64]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(probe).logits, gptq(probe).logits, rtol=1e-4, atol=1e-4)
