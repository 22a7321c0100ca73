"""The memory model against llama.cpp's own buffer sizes for SmolLM2-135M Q4_1."""

from __future__ import annotations

import pytest

from app.runtime.planner import memory, quant
from app.runtime.planner.shape import ModelShape

MiB = 1 << 20

# llama-cpp-python 0.3.36 on CPU, n_ubatch 512 (ENVIRONMENT.md; re-measured for this module):
# model buffer 92.10 MiB; (n_ctx, kv type, flash attention) -> (KV MiB, compute MiB)
MEASURED_MODEL_MIB = 92.10
MEASURED = {
    (512, "f16", False): (11.25, 98.25),
    (2048, "f16", False): (45.0, 99.38),
    (8192, "f16", False): (180.0, 166.38),
    (512, "q8_0", True): (5.98, 98.25),
    (2048, "q8_0", True): (23.91, 99.38),
    (8192, "q8_0", True): (95.62, 99.38),
}
# more compute-buffer points: (n_ctx, flash attention, n_ubatch) -> MiB
MEASURED_COMPUTE_MORE = {
    (8192, True, 512): 98.25,
    (16384, False, 512): 326.38,
    (16384, True, 512): 98.25,
    (8192, False, 1024): 332.77,
    (8192, True, 2048): 393.01,
    (4096, False, 256): 49.69,
}


def within(estimate: float, measured: float, tolerance: float) -> bool:
    return abs(estimate - measured) <= tolerance * measured


@pytest.mark.parametrize(("n_ctx", "kv_type", "flash_attn"), list(MEASURED))
def test_pre_load_estimates_within_10_percent_of_llama_cpp(smollm2, n_ctx, kv_type, flash_attn):
    shape = ModelShape.estimate(smollm2)  # from ModelInfo only: what the planner knows before loading
    kv_mib, compute_mib = MEASURED[(n_ctx, kv_type, flash_attn)]

    model = shape.weights_bytes / MiB
    kv = memory.kv_bytes(shape, n_ctx, kv_type) / MiB
    compute = memory.compute_bytes(shape, n_ctx=n_ctx, n_ubatch=512, flash_attn=flash_attn) / MiB

    assert within(model, MEASURED_MODEL_MIB, 0.10), model
    assert within(kv, kv_mib, 0.10), kv
    assert within(compute, compute_mib, 0.10), compute
    # and in fact much closer than the 10% the issue asks for
    assert within(model, MEASURED_MODEL_MIB, 0.005) and within(kv, kv_mib, 0.005) and within(compute, compute_mib, 0.02)


@pytest.mark.parametrize(("n_ctx", "flash_attn", "n_ubatch"), list(MEASURED_COMPUTE_MORE))
def test_compute_formula_follows_context_ubatch_and_flash_attention(smollm2, n_ctx, flash_attn, n_ubatch):
    shape = ModelShape.estimate(smollm2)
    compute = memory.compute_bytes(shape, n_ctx=n_ctx, n_ubatch=n_ubatch, flash_attn=flash_attn) / MiB
    assert within(compute, MEASURED_COMPUTE_MORE[(n_ctx, flash_attn, n_ubatch)], 0.02), compute


def test_kv_bytes_are_the_textbook_formula(smollm2):
    shape = ModelShape.estimate(smollm2)
    per_token_f16 = 2 * 30 * 3 * 64 * 2
    assert memory.kv_bytes_per_token(shape, "f16") == per_token_f16 == 22.5 * 1024
    assert memory.kv_bytes(shape, 4096, "f16") == 4096 * per_token_f16
    assert memory.kv_bytes(shape, 4096, "q8_0") == 4096 * 2 * 30 * 192 * 34 // 32
    assert memory.kv_bytes(shape, 4096, "q4_0") == 4096 * 2 * 30 * 192 * 18 // 32
    assert memory.kv_bytes(shape, 1000, "f16") == memory.kv_bytes(shape, 1024, "f16")  # llama.cpp pads to 256


def test_scores_vanish_with_flash_attention_and_logits_dominate_short_contexts(smollm2):
    shape = ModelShape.estimate(smollm2)
    short = memory.compute_bytes(shape, n_ctx=512, n_ubatch=512, flash_attn=False)
    assert short == memory.output_peak(shape, 512)  # logits: 512 tokens x 49,152 x 4 bytes and two activations
    long_off = memory.compute_bytes(shape, n_ctx=32768, n_ubatch=512, flash_attn=False)
    long_on = memory.compute_bytes(shape, n_ctx=32768, n_ubatch=512, flash_attn=True)
    assert long_off - long_on > 512 * 32768 * 9 * 4 * 0.9
    assert memory.compute_bytes(shape, n_ctx=8192, n_ubatch=1024, flash_attn=True) > 1.9 * short


def test_estimated_shape_matches_the_files_tensor_table(smollm2, smollm2_exact):
    estimate, exact = ModelShape.estimate(smollm2), smollm2_exact
    assert exact.source == "file" and exact.tied_embeddings and exact.n_ff == 1536
    assert estimate.tied_embeddings
    assert estimate.token_embd_bytes == exact.token_embd_bytes  # q8_0: 576 is not a multiple of 256
    assert estimate.output_bytes == exact.output_bytes
    assert within(estimate.layer_bytes[0], exact.layer_bytes[0], 0.01)
    assert within(estimate.weights_bytes, exact.weights_bytes, 0.001)
    assert exact.weights_bytes / MiB == pytest.approx(MEASURED_MODEL_MIB, abs=0.01)


@pytest.mark.parametrize(
    ("file_type", "n_embd", "output", "embedding"),
    [
        ("Q4_K_M", 4096, "q6_K", "q4_K"),
        ("Q4_1", 576, "q8_0", "q4_1"),
        ("Q8_0", 4096, "q8_0", "q8_0"),
        ("F16", 4096, "f16", "f16"),
        ("IQ2_XS", 8192, "q5_K", "q2_K"),
        ("Q4_K_M", 576, "q8_0", "q5_0"),
    ],
)
def test_output_and_embedding_types_follow_llama_cpp_quantizer(file_type, n_embd, output, embedding):
    assert quant.output_type(file_type, n_embd) == output
    assert quant.embedding_type(file_type, n_embd) == embedding


def test_a_shape_without_layers_is_rejected(smollm2):
    import dataclasses

    with pytest.raises(ValueError, match="does not describe its shape"):
        ModelShape.estimate(dataclasses.replace(smollm2, n_layers=0))
