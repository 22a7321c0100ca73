"""``plan(model, hardware, prefs) -> Plan``: every runtime setting, each with the reason it was chosen.

Pure: the hardware, the model's shape and the measurements come in as values (``profiles.detect()``,
``shape.read_shape()`` and the measurement store's owner do the I/O), so any plan can be made for
any machine and tested anywhere.
A person's override always wins and is marked ``overridden``; one that cannot fit is refused with
what would (``ContextTooLarge``/``TooManyGpuLayers``), never silently cut.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from app.runtime.hardware import Hardware
from app.runtime.library import ModelInfo
from app.runtime.measurements import MeasurementStore
from app.runtime.planner import fitting, measured, quant, reasons
from app.runtime.planner.fitting import Fit, Search
from app.runtime.planner.layout import Budgets
from app.runtime.planner.schema import Choice, ContextTooLarge, Plan, TooManyGpuLayers, UserPrefs
from app.runtime.planner.shape import ModelShape
from app.runtime.planner.speed import Calibration, decode_speed
from app.runtime.protocol import ErrorKind, RuntimeFailure

DEFAULT_CALIBRATION = Calibration()
DEFAULT_UBATCH = 512  # llama.cpp's default micro-batch; the compute buffer scales with it
DEFAULT_BATCH = 2048  # tokens handed to llama.cpp per call; costs no memory beyond the micro-batch
# head sizes llama.cpp's CUDA/Metal flash-attention kernels exist for (the CPU takes any)
FLASH_ATTN_HEAD_DIMS = (64, 80, 96, 112, 128, 256)


def plan(
    model: ModelInfo,
    hw: Hardware,
    prefs: UserPrefs | None = None,
    *,
    shape: ModelShape | None = None,
    calibration: Calibration | None = None,
    measurements: MeasurementStore | None = None,
    torch_prefs: Any = None,
    **torch_measured: Any,
) -> Plan:
    """Choose how to run ``model`` on ``hw``. ``shape``: the exact shape from ``read_shape`` when
    the file is at hand (else estimated from ``model``); ``measurements``: what benches measured
    (`MeasurementStore`; None plans with Hearth's defaults), read only when ``hw`` is the machine
    they were taken on; ``calibration`` given outright wins over the measured one;
    ``torch_prefs``: the torch backend's own preferences (`torch_plan.TorchPrefs`),
    ``torch_measured`` its measured inputs given outright (``dtype_speed``, ``quant_speedup``).
    Raises RuntimeFailure when it cannot run."""
    prefs = prefs or UserPrefs()
    backend = choose_backend(model, prefs)
    if backend.value == "torch":
        return plan_torch(model, hw, prefs, backend=backend, torch_prefs=torch_prefs, measurements=measurements, **torch_measured)
    if calibration is None:
        calibration = measured.calibration(hw, measurements)
    return BACKEND_PLANNERS[backend.value](model, hw, prefs, backend=backend, shape=shape, calibration=calibration)


def choose_backend(model: ModelInfo, prefs: UserPrefs) -> Choice:
    if prefs.backend is not None:
        if prefs.backend == "llama.cpp" and model.format != "gguf":
            raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"llama.cpp runs GGUF files; {model.name} is a {model.format} model. Use the torch backend or convert it to GGUF.")
        return Choice(prefs.backend, f"Set by you ({prefs.backend}).", overridden=True)
    if model.format == "gguf":
        return Choice("llama.cpp", "A GGUF file runs natively in llama.cpp: quantized weights stay quantized, and layers can be split between GPU and CPU.")
    if model.format == "adapter":
        return Choice("torch", "A fine-tune's LoRA adapter runs in the torch backend, applied over its base model (its GGUF export runs in llama.cpp).")
    return Choice("torch", f"A {model.format} model (a transformers folder) runs in the torch backend.")


def plan_torch(model: ModelInfo, hw: Hardware, prefs: UserPrefs, **kwargs: Any) -> Plan:
    """The torch backend's plan (dtype, accelerate device map, weight quantization, KV policy): `torch_plan`."""
    from app.runtime.planner import torch_plan

    kwargs.pop("shape", None)
    kwargs.pop("calibration", None)
    return torch_plan.plan_torch(model, hw, prefs, **kwargs)


def plan_llama_cpp(
    model: ModelInfo,
    hw: Hardware,
    prefs: UserPrefs,
    *,
    backend: Choice,
    shape: ModelShape | None,
    calibration: Calibration,
) -> Plan:
    shape = shape or _estimate_shape(model)
    budgets = Budgets.of(hw, safety_margin=prefs.safety_margin_bytes, ram_margin=prefs.ram_margin_bytes)
    flash = choose_flash_attention(shape, hw, prefs)
    kv_types = _kv_candidates(shape, prefs, flash_attn=flash.value)
    search = Search(
        shape=shape,
        hw=hw,
        budgets=budgets,
        kv_types=kv_types,
        flash_attn=flash.value,
        n_ubatch=min(prefs.ubatch_size or DEFAULT_UBATCH, prefs.batch_size or DEFAULT_BATCH),
        pinned_layers=_pinned_layers(shape, hw, prefs),
    )
    fit, how = _fit(search, prefs)
    threads = choose_threads(hw, prefs)
    speed = decode_speed(shape, hw, fit.placement, fit.settings, threads=threads.value["threads"], calibration=calibration)
    ctx = fit.settings.n_ctx
    return Plan(
        model_id=model.id,
        model_name=model.name,
        hardware=hw.source,
        backend=backend,
        quantization=reasons.quantization(shape),
        gpu_layers=reasons.gpu_layers(search, fit, overridden=search.pinned_layers is not None),
        context_length=reasons.context(search, fit, how, prefs.context_length),
        kv_type=reasons.kv_type(search, fit, pinned=prefs.kv_type),
        kv_eviction=reasons.kv_eviction(shape, ctx),
        flash_attention=flash if flash.overridden else reasons.flash_attention(shape, fit, flash),
        threads=threads,
        batch=choose_batch(prefs, ctx, fit.settings.n_ubatch),
        mmap=choose_mmap(prefs),
        mlock=choose_mlock(prefs),
        memory=reasons.memory_choice(search, fit),
        speed=reasons.speed(speed, calibration, threads.value["threads"]),
    )


BACKEND_PLANNERS: dict[str, Callable[..., Plan]] = {"llama.cpp": plan_llama_cpp, "torch": plan_torch}


def _estimate_shape(model: ModelInfo) -> ModelShape:
    try:
        return ModelShape.estimate(model)
    except ValueError as exc:
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"Hearth cannot plan {model.name}: {exc}.") from exc


def _pinned_layers(shape: ModelShape, hw: Hardware, prefs: UserPrefs) -> int | None:
    pinned = prefs.gpu_layers
    if pinned is None:
        return None
    if pinned == -1 or pinned > shape.n_layers + 1:
        pinned = shape.n_layers + 1
    if pinned and not hw.gpus:
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"You pinned {prefs.gpu_layers} GPU layers, but this machine has no GPU llama.cpp can use. Set GPU layers to automatic or 0.")
    return pinned


def _kv_candidates(shape: ModelShape, prefs: UserPrefs, *, flash_attn: bool) -> tuple[str, ...]:
    if prefs.kv_type is not None:
        if not fitting.quantized_kv_ok(shape, prefs.kv_type):
            raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"A {prefs.kv_type} KV cache needs rows in blocks of 32; {shape.name}'s are {shape.kv_embd} wide. Use f16.")
        return (prefs.kv_type,)
    # q4 is never chosen by itself: its quality loss is measurable; a person may still pin it
    return ("f16", "q8_0") if flash_attn and fitting.quantized_kv_ok(shape, "q8_0") else ("f16",)


def _fit(search: Search, prefs: UserPrefs) -> tuple[Fit, str]:
    """The configuration to run, or the refusal that says what would fit."""
    requested = prefs.context_length
    if requested is None:
        fit, _, how = fitting.auto_context(search)
        if fit is not None:
            return fit, how
        if search.pinned_layers is not None:
            _refuse_pinned_layers(search, fitting.floor_context(search.shape))
        raise reasons.cannot_run(search)
    fit = search.fit(requested)
    if fit is not None:
        return fit, "user"
    if search.pinned_layers is not None:
        _refuse_pinned_layers(search, requested)
    largest = search.largest_context(requested)
    if largest == 0:
        raise reasons.cannot_run(search)
    raise ContextTooLarge(reasons.context_too_large(search, requested, largest), requested=requested, largest_fit=largest)


def _refuse_pinned_layers(search: Search, n_ctx: int) -> None:
    """Raise TooManyGpuLayers with the largest count below the pinned one that fits, if any does."""
    pinned = search.pinned_layers or 0
    for count in range(pinned - 1, -1, -1):
        if dataclasses.replace(search, pinned_layers=count).fit(n_ctx) is not None:
            raise TooManyGpuLayers(
                f"You pinned {pinned} GPU layers, but with a {n_ctx:,}-token context at most {count} fit in "
                f"{reasons.gpu_budget_words(search)}. Lower the pinned layers, or set them to automatic.",
                requested=pinned,
                largest_fit=count,
            )
    # nothing fits at this context whatever the layers: the caller says so


def choose_flash_attention(shape: ModelShape, hw: Hardware, prefs: UserPrefs) -> Choice:
    """On wherever llama.cpp has a kernel for it; the detailed reason is written after the fit."""
    if prefs.flash_attention is not None:
        return Choice(prefs.flash_attention, f"Set by you ({'on' if prefs.flash_attention else 'off'}).", overridden=True)
    if prefs.kv_type is not None and quant.kv_is_quantized(prefs.kv_type):
        return Choice(True, f"On: the {prefs.kv_type} KV cache you chose needs it.")
    old = [g.name for g in hw.gpus if g.vendor == "nvidia" and _capability(g.compute_capability) < 6.0]
    if old:
        return Choice(False, f"Off: llama.cpp's flash attention needs a Pascal or newer NVIDIA GPU ({old[0]} is older).")
    if hw.gpus and shape.head_dim not in FLASH_ATTN_HEAD_DIMS:
        return Choice(False, f"Off: llama.cpp's GPU flash attention has no kernel for head size {shape.head_dim}.")
    return Choice(True, "On.")


def _capability(value: str | None) -> float:
    try:
        return float(value) if value else 99.0
    except ValueError:
        return 99.0  # unreadable: assume a current GPU rather than turn features off


def choose_threads(hw: Hardware, prefs: UserPrefs) -> Choice:
    physical = max(hw.cpu_cores_physical, 1)
    threads = prefs.threads or physical
    batch_threads = prefs.threads_batch or threads
    overridden = prefs.threads is not None or prefs.threads_batch is not None
    if overridden:
        reason = f"Set by you: {threads} threads for generation, {batch_threads} for prompts."
    else:
        reason = (
            f"{threads} threads, one per physical core: decoding is limited by memory bandwidth, and a "
            f"second hyper-thread on a core shares that core's path to memory without adding to it."
        )
    return Choice({"threads": threads, "threads_batch": batch_threads}, reason, overridden)


def choose_batch(prefs: UserPrefs, n_ctx: int, n_ubatch: int) -> Choice:
    n_batch = min(prefs.batch_size or DEFAULT_BATCH, n_ctx)
    overridden = prefs.batch_size is not None or prefs.ubatch_size is not None
    reason = (
        f"Set by you: {n_batch} tokens per call, {n_ubatch} per micro-batch."
        if overridden
        else f"Prompts are processed {n_ubatch} tokens at a time (llama.cpp's default micro-batch: the compute "
        f"buffer grows with it), handed over {n_batch} at a time."
    )
    return Choice({"n_batch": n_batch, "n_ubatch": min(n_ubatch, n_batch)}, reason, overridden)


def choose_mmap(prefs: UserPrefs) -> Choice:
    if prefs.use_mmap is not None:
        return Choice(prefs.use_mmap, f"Set by you ({'on' if prefs.use_mmap else 'off'}).", overridden=True)
    return Choice(True, "The file is mapped, not copied: loading is fast, the OS can share and reclaim the pages, and the pages of layers moved to the GPU are released.")


def choose_mlock(prefs: UserPrefs) -> Choice:
    if prefs.use_mlock is not None:
        return Choice(prefs.use_mlock, f"Set by you ({'on' if prefs.use_mlock else 'off'}).", overridden=True)
    return Choice(False, "Not locked in RAM: locking needs a raised memlock limit and only helps when the system is swapping.")


def summary(p: Plan) -> str:
    """One line for the status bar: "Q4_K_M · 28/32 layers on GPU · 8k ctx · q8 KV · ~21 tok/s"."""
    if p.backend.value == "torch":
        from app.runtime.planner import torch_plan

        return torch_plan.summary(p)
    layers = p.gpu_layers.value
    n = layers["n_layers"]
    if layers["n_gpu_layers"] == 0:
        where = "CPU only"
    elif layers["output_on_gpu"]:
        where = f"{n}/{n} layers on GPU"
    else:
        where = f"{layers['repeating']}/{n} layers on GPU"
    if layers.get("given_to_draft"):  # a Dovetail split (planner.speculation.split_plan)
        where += f" ({layers['given_to_draft']} given to the draft model)"
    ctx = p.context_length.value
    ctx_words = f"{ctx // 1024}k ctx" if ctx % 1024 == 0 else f"{ctx:,} ctx"
    kv = {"q8_0": "q8", "q4_0": "q4"}.get(p.kv_type.value, p.kv_type.value)
    tps = p.speed.value["decode_tokens_per_s"]
    speed = f"~{tps:.0f} tok/s" if tps >= 10 else f"~{tps:.1f} tok/s"
    return " · ".join((p.quantization.value, where, ctx_words, f"{kv} KV", speed))


def llama_cpp_kwargs(p: Plan) -> dict[str, object]:
    """The plan as ``llama_cpp.Llama(...)`` keyword arguments (llama-cpp-python 0.3.x)."""
    if p.backend.value != "llama.cpp":
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"this plan is for the {p.backend.value} backend")
    layers = p.gpu_layers.value
    kv_id = quant.GGML_TYPE_IDS[p.kv_type.value]
    kwargs: dict[str, object] = {
        "n_gpu_layers": layers["n_gpu_layers"],
        "n_ctx": p.context_length.value,
        "n_batch": p.batch.value["n_batch"],
        "n_ubatch": p.batch.value["n_ubatch"],
        "n_threads": p.threads.value["threads"],
        "n_threads_batch": p.threads.value["threads_batch"],
        "flash_attn": p.flash_attention.value,
        "type_k": kv_id,
        "type_v": kv_id,
        "use_mmap": p.mmap.value,
        "use_mlock": p.mlock.value,
        "op_offload": layers["op_offload"],
    }
    if len(layers["tensor_split"]) > 1:
        kwargs["tensor_split"] = layers["tensor_split"]
    return kwargs
