"""The memory model: what llama.cpp allocates for weights, KV cache and compute, before it loads.

Calibrated against llama.cpp's own buffer report (llama-cpp-python 0.3.36, CPU) for
SmolLM2-135M Q4_1 (30 layers, n_embd 576, 9 heads, 3 KV heads of 64, vocabulary 49,152):

=====================  =======================  ==============  ==========
n_ctx, KV, flash attn  llama.cpp compute (MiB)  this model      error
=====================  =======================  ==============  ==========
512, f16, off          98.25                    98.25           0.0%
2048, f16, off         99.38                    98.25           -1.1%
8192, f16, off         166.38                   166.38          0.0%
16384, f16, off        326.38                   326.38          0.0%
8192, f16, on          98.25                    98.25           0.0%
2048 / 8192, q8_0, on  99.38                    98.25           -1.1%
8192, f16, off, ub1024 332.77                   332.75          0.0%
4096, f16, off, ub256  49.69                    49.13           -1.1%
=====================  =======================  ==============  ==========

KV: 11.25 / 45 / 180 MiB (f16) and 5.98 / 23.91 / 95.62 MiB (q8_0) at 512 / 2048 / 8192, exactly.

The compute buffer is the peak of ggml's graph allocator, which reuses memory once a tensor's last
reader has run, so it is the largest of a few moments in the graph, not a sum:

- the output: logits ``n_ubatch * n_vocab * 4`` plus two activation blocks (the final norm's input and
  output); dominant for small models and large vocabularies;
- attention: without flash attention the scores ``n_ubatch * n_kv * n_head * 4`` (softmax runs in
  place) and an f32 mask ``n_ubatch * n_kv * 4``; with flash attention only an f16 mask; plus five
  activation blocks and the current token's K and V;
- the feed-forward: gate, up and their product, ``n_ubatch * n_ff * 4`` each.

llama.cpp pads the KV cache to a multiple of 256 tokens, so ``n_kv`` is the padded context. With a GPU
and weights left on the CPU, llama.cpp's *op offload* runs the big prompt-processing matrix products
on the GPU, copying each CPU weight across first: the first GPU's buffer then also holds the output
matrix (and the logits it produces). Not modelled: CUDA's pool for temporary buffers and cuBLAS
workspaces, which grow outside these buffers — that is what the per-GPU safety margin is for.
"""

from __future__ import annotations

import math

from app.runtime.planner import quant
from app.runtime.planner.shape import ModelShape

MiB = 1 << 20
GiB = 1 << 30
KV_PAD = 256  # llama.cpp rounds the KV cache up to this many cells
MASK_ROW_PAD = 64  # GGML_KQ_MASK_PAD
F32 = 4


def padded_context(n_ctx: int) -> int:
    return math.ceil(n_ctx / KV_PAD) * KV_PAD


def kv_bytes_per_token(shape: ModelShape, kv_type: str, *, layers: int | None = None) -> float:
    """K and V for one token: 2 * layers * n_head_kv * head_dim * bytes per element."""
    n = shape.n_layers if layers is None else layers
    return 2 * n * shape.kv_embd * quant.kv_bytes_per_element(kv_type)


def kv_bytes(shape: ModelShape, n_ctx: int, kv_type: str, *, layers: int | None = None) -> int:
    """The KV cache llama.cpp allocates for ``n_ctx`` tokens (padded) over ``layers`` layers."""
    return int(math.ceil(padded_context(n_ctx) * kv_bytes_per_token(shape, kv_type, layers=layers)))


def output_peak(shape: ModelShape, n_ubatch: int) -> int:
    """Logits for a whole micro-batch (llama.cpp reserves for every token wanting logits)."""
    return n_ubatch * shape.vocab_size * F32 + 2 * n_ubatch * shape.n_embd * F32


def attention_peak(shape: ModelShape, *, n_ctx: int, n_ubatch: int, flash_attn: bool) -> int:
    n_kv = padded_context(n_ctx)
    rows = math.ceil(n_ubatch / MASK_ROW_PAD) * MASK_ROW_PAD
    scores = 0 if flash_attn else n_ubatch * n_kv * shape.n_head * F32
    mask = rows * n_kv * (2 if flash_attn else F32)
    activations = 5 * n_ubatch * shape.n_embd * F32 + 2 * n_ubatch * shape.kv_embd * F32
    return scores + mask + activations


def ffn_peak(shape: ModelShape, n_ubatch: int) -> int:
    width = shape.n_ff * max(shape.n_expert_used, 1)
    return n_ubatch * (3 * width + 2 * shape.n_embd) * F32


def compute_bytes(
    shape: ModelShape,
    *,
    n_ctx: int,
    n_ubatch: int,
    flash_attn: bool,
    holds_layers: bool = True,
    holds_output: bool = True,
    staged_output: int = 0,
    staged_layer: int = 0,
) -> int:
    """One device's compute buffer: the largest of the moments it takes part in.

    ``staged_output``/``staged_layer``: bytes of CPU weights this device receives through op
    offload (then it also computes what those weights produce). ``shape.compute_scale`` is a
    correction measured by a dry run (1.0 until one disagrees with this formula).
    """
    peaks = [0]
    if holds_layers:
        peaks.append(attention_peak(shape, n_ctx=n_ctx, n_ubatch=n_ubatch, flash_attn=flash_attn))
        peaks.append(ffn_peak(shape, n_ubatch))
    if staged_layer:
        peaks.append(staged_layer + ffn_peak(shape, n_ubatch))
    if holds_output or staged_output:
        peaks.append(output_peak(shape, n_ubatch) + staged_output)
    return int(math.ceil(max(peaks) * shape.compute_scale))


def host_buffers(shape: ModelShape, *, n_ctx: int, n_ubatch: int, flash_attn: bool, with_gpu: bool) -> int:
    """Host-side buffers besides the CPU compute buffer: the output buffer for one sequence's
    logits, and with a GPU the pinned inputs (embeddings of the batch and the mask)."""
    out = shape.vocab_size * F32
    if not with_gpu:
        return out
    rows = math.ceil(n_ubatch / MASK_ROW_PAD) * MASK_ROW_PAD
    mask = rows * padded_context(n_ctx) * (2 if flash_attn else F32)
    return out + n_ubatch * shape.n_embd * F32 + mask


def fmt_bytes(n: float) -> str:
    """Bytes for a person: GiB with one decimal above 1 GiB, else MiB."""
    if abs(n) >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB"
