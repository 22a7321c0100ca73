"""The words: each plan field's value with the reason a person reads, and refusals they can act on."""

from __future__ import annotations

from app.runtime.planner import fitting, memory
from app.runtime.planner.fitting import Fit, Search
from app.runtime.planner.layout import ram_used
from app.runtime.planner.memory import fmt_bytes
from app.runtime.planner.schema import Choice
from app.runtime.planner.shape import ModelShape
from app.runtime.planner.speed import Calibration, SpeedEstimate
from app.runtime.protocol import ErrorKind, RuntimeFailure

GB = 1e9


def gpu_budget_words(search: Search) -> str:
    """E.g. "2.6 GiB of usable VRAM on the NVIDIA GeForce GTX 1650 (free VRAM less the 1.0 GiB safety margin)"."""
    hw, budgets = search.hw, search.budgets
    if not hw.gpus:
        return "no GPU"
    margin = fmt_bytes(budgets.safety_margin)
    usable = " + ".join(fmt_bytes(b) for b in budgets.gpus)
    where = f"the {hw.gpus[0].name}" if len(hw.gpus) == 1 else f"{len(hw.gpus)} GPUs"
    shared = ", shared with the RAM" if any(g.unified_memory for g in hw.gpus) else ""
    return f"{usable} of usable VRAM on {where} (free VRAM less the {margin} safety margin{shared})"


def quantization(shape: ModelShape) -> Choice:
    bits = 8 * shape.weights_bytes / max(shape.parameters, 1)
    return Choice(
        shape.quantization,
        f"The file's own quantization ({fmt_bytes(shape.weights_bytes)} of weights, {bits:.1f} bits per weight). "
        f"Before a download, Hearth compares the available variants for this machine.",
    )


def gpu_layers(search: Search, fit: Fit, *, overridden: bool) -> Choice:
    shape, hw, p, s = search.shape, search.hw, fit.placement, fit.settings
    n = shape.n_layers
    per_device = [
        {"device": f"gpu{d}", "name": g.name, "layers": p.gpu_layers[d], "output": p.output_gpu == d} for d, g in enumerate(hw.gpus)
    ]
    value = {
        "n_gpu_layers": p.n_gpu_layers,
        "repeating": p.repeating_on_gpu,
        "n_layers": n,
        "output_on_gpu": p.output_on_gpu,
        "per_device": per_device,
        "tensor_split": p.tensor_split(),
        "op_offload": bool(hw.gpus) and s.op_offload,
    }
    layer = memory.kv_bytes(shape, s.n_ctx, s.kv_type, layers=1) + max(shape.layer_bytes)
    split = ""
    if len(hw.gpus) > 1 and p.n_gpu_layers:
        split = " Split " + " + ".join(str(x["layers"]) for x in per_device) + " across the GPUs"
        split += f", the output layer on GPU {p.output_gpu}." if p.output_on_gpu else "."
    if not hw.gpus:
        reason = "No GPU: every layer runs on the CPU, read from RAM."
    elif p.output_on_gpu:
        reason = f"All {n} layers and the output layer fit on the GPU, in {gpu_budget_words(search)}.{split}"
    elif p.repeating_on_gpu:
        reason = (
            f"{p.repeating_on_gpu} of {n} layers fit in {gpu_budget_words(search)}, at {fmt_bytes(layer)} per layer "
            f"with its KV cache. llama.cpp fills the GPU from the last layer back and moves the "
            f"output layer last; the first {n - p.repeating_on_gpu} layers run on the CPU.{split}"
        )
        if s.op_offload:
            reason += " The GPU also does the prompt's large matrix products for the CPU layers (op offload)."
    elif s.op_offload:
        reason = f"No layer fits in {gpu_budget_words(search)} next to llama.cpp's buffers; the GPU still speeds up prompts (op offload)."
    else:
        reason = f"llama.cpp's prompt buffers do not fit in {gpu_budget_words(search)}, so the model runs on the CPU."
    if overridden:
        reason = f"Pinned by you: {p.n_gpu_layers} (llama.cpp's count; {n + 1} = all). " + reason
    return Choice(value, reason, overridden)


def context(search: Search, fit: Fit, how: str, requested: int | None) -> Choice:
    shape, hw = search.shape, search.hw
    ctx = fit.settings.n_ctx
    trained = fitting.trained_context(shape)
    if requested is not None:
        reason = f"Set by you: {ctx:,} tokens."
        if ctx > trained:
            reason += f" {shape.name} was trained for {trained:,}; past that its answers degrade."
        return Choice(ctx, reason, overridden=True)
    known = "" if shape.context_length else " (the file does not say its trained context; 4,096 assumed)"
    if ctx == trained:
        why = f"the model's whole trained context{known}"
    elif how == "gpu":
        cap = fitting.gpu_context_cap(search, 0)
        vram = fmt_bytes(sum(g.vram_total for g in hw.gpus))
        why = f"Hearth's default limit for {vram} of VRAM" if ctx == cap else "the largest that keeps the whole model on the GPU"
        why += f" (trained for {trained:,})"
    else:
        _, ram_cap = fitting.base_context(search)
        if ctx == min(ram_cap, trained):
            why = f"Hearth's default for {fmt_bytes(hw.ram_total)} of RAM (trained for {trained:,})"
        elif ctx == fitting.floor_context(shape):
            why = f"Hearth's minimum, as the model only just fits this machine's memory (trained for {trained:,})"
        else:
            why = f"the largest that fits in memory (trained for {trained:,})"
    reason = f"{ctx:,} tokens: {why}."
    if fit.placement.n_gpu_layers and not fit.full and ctx < trained:
        reason += " GPU memory goes to layers first: a longer context (set it in Settings) would move layers to the CPU."
    return Choice(ctx, reason)


def kv_type(search: Search, fit: Fit, *, pinned: str | None) -> Choice:
    s, shape = fit.settings, search.shape
    size = fmt_bytes(memory.kv_bytes(shape, s.n_ctx, s.kv_type))
    if pinned is not None:
        return Choice(s.kv_type, f"Set by you: {s.kv_type} ({size} at {s.n_ctx:,} tokens).", overridden=True)
    if s.kv_type == "f16":
        if len(search.kv_types) == 1:
            return Choice("f16", f"f16 ({size}): a quantized cache needs flash attention, which is off.")
        return Choice("f16", f"f16 ({size}): full precision, and the context and layers fit without quantizing the cache.")
    f16 = search.fit_kv(s.n_ctx, "f16")
    half = fmt_bytes(memory.kv_bytes(shape, s.n_ctx, "f16"))
    if f16 is None:
        bought = f"with an f16 cache ({half}) this {s.n_ctx:,}-token context would not fit"
    else:
        bought = f"an f16 cache ({half}) would leave {f16.n_gpu_layers} layers on the GPU instead of {fit.n_gpu_layers}"
    return Choice(s.kv_type, f"{s.kv_type} ({size}, about half of f16, with negligible quality loss): {bought}.")


def kv_eviction(shape: ModelShape, ctx: int) -> Choice:
    trained = fitting.trained_context(shape)
    value = {"policy": "context_shift", "budget_tokens": ctx, "keep": "system_prompt"}
    if ctx < trained:
        reason = (
            f"The model was trained for {trained:,} tokens and {ctx:,} fit: when a conversation grows past "
            f"{ctx:,}, llama.cpp's context shift keeps the system prompt and drops the oldest turns."
        )
    else:
        reason = f"A conversation longer than {ctx:,} tokens drops its oldest turns (context shift), keeping the system prompt."
    return Choice(value, reason)


def flash_attention(shape: ModelShape, fit: Fit, auto: Choice) -> Choice:
    if not auto.value:
        return auto
    s = fit.settings
    saved = s.n_ubatch * memory.padded_context(s.n_ctx) * (shape.n_head * 4 + 2)
    return Choice(
        True,
        f"On: attention runs in tiles instead of through a {s.n_ubatch} × {s.n_ctx:,} × {shape.n_head}-head score "
        f"matrix ({fmt_bytes(saved)} less compute buffer at this context), and a quantized KV cache needs it.",
    )


def memory_choice(search: Search, fit: Fit) -> Choice:
    uses = fit.uses
    parts = []
    for u in uses:
        what = "RAM" if u.device == "cpu" else "VRAM"
        parts.append(
            f"{u.name if u.device != 'cpu' else 'CPU'}: {fmt_bytes(u.total)} of {fmt_bytes(u.budget)} usable {what} "
            f"(weights {fmt_bytes(u.weights)}, KV {fmt_bytes(u.kv)}, buffers {fmt_bytes(u.compute)})"
        )
    if any(u.unified for u in uses):
        parts.append(f"the GPU's memory is the RAM: {fmt_bytes(ram_used(uses))} of {fmt_bytes(search.budgets.ram)} RAM in use in all")
    source = "read from the file's tensor table" if search.shape.source == "file" else "estimated from the model's metadata"
    value = {
        "devices": [u.to_dict() for u in uses],
        "ram_used": ram_used(uses),
        "ram_budget": search.budgets.ram,
        "source": search.shape.source,
    }
    return Choice(value, "; ".join(parts) + f". Sizes {source}; every budget already keeps its safety margin free.")


def speed(est: SpeedEstimate, calibration: Calibration, threads: int) -> Choice:
    value = {
        "decode_tokens_per_s": round(est.tokens_per_s, 2),
        "decode_tokens_per_s_full_context": round(est.tokens_per_s_full, 2),
        "gpu_bytes_per_token": est.gpu_bytes_per_token,
        "cpu_bytes_per_token": est.cpu_bytes_per_token,
        "gpu_effective_bandwidth": est.gpu_bandwidth,
        "cpu_effective_bandwidth": est.cpu_bandwidth,
        "calibration": calibration.to_dict(),
    }
    reads = []
    if est.gpu_bytes_per_token:
        reads.append(f"{fmt_bytes(est.gpu_bytes_per_token)} from VRAM at an effective {est.gpu_bandwidth / GB:.0f} GB/s")
    if est.cpu_bytes_per_token:
        reads.append(f"{fmt_bytes(est.cpu_bytes_per_token)} from RAM at an effective {est.cpu_bandwidth / GB:.0f} GB/s ({threads} threads)")
    measured = "measured on this machine" if calibration.source != "default" else "Hearth's defaults, until a benchmark measures this machine"
    return Choice(
        value,
        f"Roofline estimate: each token reads {' and '.join(reads)}; about {est.tokens_per_s:.0f} tok/s at the start of "
        f"a chat, {est.tokens_per_s_full:.0f} with the context full. Bandwidth factors: {measured}.",
    )


def cannot_run(search: Search) -> RuntimeFailure:
    shape, hw, budgets = search.shape, search.hw, search.budgets
    ctx = fitting.floor_context(shape)
    kv_type = search.kv_types[-1]
    weights = shape.weights_bytes
    kv = memory.kv_bytes(shape, ctx, kv_type)
    buffers = memory.compute_bytes(shape, n_ctx=ctx, n_ubatch=min(search.n_ubatch, ctx), flash_attn=search.flash_attn)
    gpus = "no GPU" if not hw.gpus else gpu_budget_words(search)
    return RuntimeFailure(
        ErrorKind.OUT_OF_MEMORY,
        f"{shape.name} ({shape.quantization}) needs about {fmt_bytes(weights + kv + buffers)} with a {ctx:,}-token context "
        f"({fmt_bytes(weights)} of weights, {fmt_bytes(kv)} of {kv_type} KV cache, {fmt_bytes(buffers)} of buffers); this machine "
        f"has {gpus}, and {fmt_bytes(budgets.ram)} of RAM available after the {fmt_bytes(budgets.ram_margin)} "
        f"margin. Choose a smaller quantization or a smaller model.",
        detail=f"weights={weights} kv={kv} compute={buffers} gpu_budgets={list(budgets.gpus)} ram_budget={budgets.ram}",
    )


def context_too_large(search: Search, requested: int, largest: int) -> str:
    shape = search.shape
    kv_type = search.kv_types[-1]
    return (
        f"A {requested:,}-token context does not fit: its {kv_type} KV cache alone is "
        f"{fmt_bytes(memory.kv_bytes(shape, requested, kv_type))}, and next to {shape.name}'s "
        f"{fmt_bytes(shape.weights_bytes)} of weights the largest context that fits is {largest:,} tokens "
        f"with {gpu_budget_words(search)} and {fmt_bytes(search.budgets.ram)} of usable RAM. "
        f"Choose {largest:,} tokens or fewer, or a smaller quantization."
    )
