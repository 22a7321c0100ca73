"""The torch backend's plan: dtype, device map (GPU / CPU / disk), weight quantization, KV policy, compile.

Each decision is a `Choice` with its reason, and a person's preference wins (`TorchPrefs`, the
torch-only keys of the planner preferences). The plan reuses the llama.cpp plan's fields, with
torch values: ``quantization`` = {dtype, weight_quant}, ``gpu_layers`` = the accelerate device map
and what it put where, ``kv_type`` = the cache dtype, ``kv_eviction`` = the KV policy and budget,
``flash_attention`` = the attention implementation, ``batch`` = prefill chunk and fast decode.

When 16-bit weights do not fit the GPU, quantizing on load and offloading layers are compared by
their predicted decode speed (bytes read per token over the bandwidth they are read at: VRAM for
GPU weights, PCIe for CPU-offloaded ones, which accelerate copies to the GPU for every token, the
disk for disk-offloaded ones), scaled by how well each kernel uses its bandwidth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from app.runtime.hardware import Hardware
from app.runtime.library import ModelInfo
from app.runtime.measurements import CPU_DTYPE_SPEED, MeasurementStore
from app.runtime.planner import measured, torch_devices
from app.runtime.planner import speed as speed_model
from app.runtime.planner.layout import Budgets
from app.runtime.planner.memory import fmt_bytes
from app.runtime.planner.schema import Choice, Plan, UserPrefs
from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# bytes per weight after quantizing on load (scales included), and the share of the memory bandwidth
# each kernel reaches in decode: bitsandbytes' LLM.int8 matmul is slow at batch 1, its nf4 GEMV is not.
QUANT_BYTES = {"bnb-int8": 1.0, "bnb-nf4": 0.56, "int8": 1.03, "int4-g64": 0.56}
QUANT_EFFICIENCY = {"none": 0.6, "bnb-int8": 0.2, "bnb-nf4": 0.45}
WEIGHT_QUANTS = ("none", *QUANT_BYTES)
QUANTIZED_KV = ("int8_kv", "int4_kv")  # store every token in int8/int4 (app/kernels/kv_cache), never evict
KV_POLICIES = ("full", "sink_window", "h2o", "snapkv", "keydiff", *QUANTIZED_KV)
DEFAULT_EVICTION = "sink_window"  # StreamingLLM: needs no attention weights, keeps quality past the budget
PCIE_BYTES_PER_S = 12 * GB  # PCIe 4.0 x16 as accelerate's copies reach it
DISK_BYTES_PER_S = 1.5 * GB  # an NVMe SSD reading safetensors
CPU_EFFICIENCY = 0.33  # share of RAM bandwidth an eager torch decode reaches: 0.33 measured for SmolLM2 fp32 on 2 cores
COMPUTE_RESERVE = 512 * 2**20  # activations, logits of a prefill chunk and allocator slack
DEFAULT_MAX_CONTEXT = 8192
PREFILL_CHUNK = 256
CPU_COMPILE_WORDS = "compiling cost 105 s on this kind of CPU for +15% decode speed (measured), so it is off"


@dataclass(frozen=True)
class TorchPrefs:
    """The torch-only preferences; None = Hearth chooses."""

    dtype: str | None = None
    weight_quant: str | None = None  # one of WEIGHT_QUANTS
    offload: bool | None = None  # True: offload rather than quantize; False: never offload
    kv_policy: str | None = None
    kv_budget: int | None = None
    compile: bool | None = None

    def __post_init__(self) -> None:
        checks = (("dtype", DTYPE_BYTES), ("weight_quant", WEIGHT_QUANTS), ("kv_policy", KV_POLICIES))
        for name, allowed in checks:
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.kv_budget is not None and (not isinstance(self.kv_budget, int) or self.kv_budget < 16):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "kv_budget must be a whole number of at least 16 tokens")

    @classmethod
    def split(cls, raw: dict[str, Any]) -> tuple[TorchPrefs, dict[str, Any]]:
        """(the torch preferences, the rest) from one preferences dict."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names}), {k: v for k, v in raw.items() if k not in names}


@dataclass(frozen=True)
class _Option:
    """One way to hold the weights: what it reads per token, where, and how fast that is."""

    weight_quant: str
    where: dict[str, int]  # bytes of weights per device: "gpu", "cpu", "disk"
    tokens_per_s: float


def plan_torch(model: ModelInfo, hw: Hardware, prefs: UserPrefs, *, backend: Choice, torch_prefs: TorchPrefs | None = None,
               measurements: MeasurementStore | None = None,
               dtype_speed: dict[str, float] | None = None, quant_speedup: float | None = None, **_: object) -> Plan:
    """``dtype_speed``/``quant_speedup`` given outright win (tests pass them); else they are read
    from ``measurements`` (the CPU matrix-vector timing ``measure_missing`` takes, and
    `hearth bench kernels`' int8 speed-up), as is `hearth bench kv`'s best eviction policy."""
    tp = torch_prefs or TorchPrefs()
    gpu = next((g for g in hw.gpus if g.vendor in ("nvidia", "amd")), None)
    budgets = Budgets.of(hw, safety_margin=prefs.safety_margin_bytes, ram_margin=prefs.ram_margin_bytes)
    threads = prefs.threads or max(hw.cpu_cores_physical, 1)
    if gpu is None and dtype_speed is None and tp.dtype is None:
        dtype_speed = measured.dtype_speed(hw, measurements, _ffn_rows(model), model.n_embd)
    dtype = choose_dtype(hw, gpu, tp, dtype_speed)
    n_ctx = prefs.context_length or min(model.context_length or 4096, DEFAULT_MAX_CONTEXT)
    kv_per_token = 2 * model.n_layers * model.n_head_kv * model.head_dim * DTYPE_BYTES[dtype.value]
    weights16 = model.parameters * DTYPE_BYTES[dtype.value]
    device_budget = (budgets.gpus[gpu.index] if gpu is not None and gpu.index < len(budgets.gpus) else 0) if gpu else budgets.ram
    # the KV cache takes what the weights leave, or a quarter of the device when they do not fit it
    left = device_budget - COMPUTE_RESERVE - weights16
    kv = choose_kv(model, tp, n_ctx, kv_per_token, max(left if left > device_budget // 4 else device_budget // 4, 0),
                   ranking=measured.kv_ranking(measurements))
    kv_tokens = kv.value["budget_tokens"]
    kv_bytes = kv_tokens * kv_per_token
    if quant_speedup is None and gpu is None:
        quant_speedup = measured.quant_speedup(hw, measurements, "int8")
    option, why = choose_weights(model, hw, budgets, gpu, dtype.value, tp, kv_bytes, quant_speedup)
    placement = choose_device_map(model, gpu, budgets, option, dtype.value, kv_bytes, tp)
    compile_choice = choose_compile(gpu, tp, kv.value["policy"], placement.value)
    memory = _memory(option, budgets, gpu, kv_bytes)
    return Plan(
        model_id=model.id,
        model_name=model.name,
        hardware=hw.source,
        backend=backend,
        quantization=Choice({"dtype": dtype.value, "weight_quant": option.weight_quant}, f"{dtype.reason} {why}",
                            overridden=dtype.overridden or tp.weight_quant is not None or tp.offload is not None),
        gpu_layers=placement,
        context_length=Choice(n_ctx, f"Set by you: {n_ctx:,} tokens." if prefs.context_length else
                              f"{n_ctx:,} tokens: the model's trained context{' (capped at 8,192 by default)' if n_ctx < (model.context_length or 0) else ''}.",
                              overridden=prefs.context_length is not None),
        kv_type=Choice(dtype.value, f"The KV cache is kept in the weights' dtype ({dtype.value}): {fmt_bytes(kv_per_token)} per token."),
        kv_eviction=kv,
        flash_attention=Choice("sdpa", "sdpa: torch's fused attention (a flash or memory-efficient kernel where the device has one)."
                               + (f" The {kv.value['policy']} policy adds an observer that also computes the attention weights it scores tokens by."
                                  if kv.value["policy"] in ("h2o", "snapkv") else "")),
        threads=Choice({"threads": threads, "threads_batch": threads},
                       f"Set by you: {threads} threads." if prefs.threads else f"{threads} torch threads, one per physical core.",
                       overridden=prefs.threads is not None),
        batch=Choice({"prefill_chunk": PREFILL_CHUNK, "compile": compile_choice.value, "static_cache": compile_choice.value},
                     f"Prompts are evaluated {PREFILL_CHUNK} tokens per forward (cancel is checked between them). {compile_choice.reason}",
                     overridden=compile_choice.overridden),
        mmap=Choice(True, "safetensors files are memory-mapped while loading: weights are read once into place."),
        mlock=Choice(False, "Not locked in RAM."),
        memory=memory,
        speed=Choice({"decode_tokens_per_s": round(option.tokens_per_s, 2), "decode_tokens_per_s_full_context": round(option.tokens_per_s, 2),
                      "weights_bytes": dict(option.where)},
                     f"Roofline estimate for the torch backend: about {option.tokens_per_s:.1f} tok/s."),
    )


def _ffn_rows(model: ModelInfo) -> int:
    return torch_devices._ffn_width(model) if model.format != "hf" else max(model.n_embd * 8 // 3, 256)


def measure_missing(model: ModelInfo, hw: Hardware, prefs: UserPrefs, torch_prefs: TorchPrefs | None, measurements: MeasurementStore) -> None:
    """Take what a CPU torch plan of ``model`` would read from ``measurements`` and this machine has
    not measured yet: the matrix-vector speed per dtype at the model's shapes (about a second,
    once per machine and shape). The engine calls it before planning; the plan itself measures nothing."""
    tp = torch_prefs or TorchPrefs()
    gpu = next((g for g in hw.gpus if g.vendor in ("nvidia", "amd")), None)
    if gpu is not None or tp.dtype is not None or not measurements.describes(hw):
        return
    rows, cols = _ffn_rows(model), model.n_embd
    if measured.dtype_speed(hw, measurements, rows, cols) is None:
        result = torch_devices.measure_dtype_speed(rows, cols, threads=prefs.threads or max(hw.cpu_cores_physical, 1))
        if result is not None:
            measurements.put(CPU_DTYPE_SPEED, result, key=measured.dtype_key(rows, cols))


def choose_dtype(hw: Hardware, gpu: Any, tp: TorchPrefs, measured: dict[str, float] | None) -> Choice:
    if tp.dtype is not None:
        return Choice(tp.dtype, f"Set by you ({tp.dtype}).", overridden=True)
    if gpu is not None:
        cc = _capability(gpu.compute_capability)
        if gpu.vendor == "amd" or cc >= 8.0:
            return Choice("bfloat16", f"bfloat16 on the {gpu.name}: half the bytes of fp32 with fp32's range (no overflow).")
        return Choice("float16", f"float16: the {gpu.name} (compute capability {gpu.compute_capability}) has no fast bfloat16.")
    if measured and measured.get("float32") and measured.get("bfloat16"):
        f32, b16 = measured["float32_matvec_per_s"], measured["bfloat16_matvec_per_s"]
        if b16 > f32:
            return Choice("bfloat16", f"bfloat16: measured on this CPU, a matrix-vector product at the model's shapes runs {b16 / f32:.1f}x as fast as fp32 (half the bytes to read).")
        return Choice("float32", f"float32: measured on this CPU, bfloat16 matrix-vector products are {f32 / b16:.1f}x slower than fp32 (no native bf16 arithmetic).")
    if any(flag in hw.simd for flag in ("avx512_bf16", "amx_tile")):
        return Choice("bfloat16", "bfloat16: the CPU has native bf16 instructions (not measured: a hardware profile).")
    return Choice("float32", "float32: without native bf16 instructions a CPU converts bf16 on the fly (not measured: a hardware profile).")


def choose_kv(model: ModelInfo, tp: TorchPrefs, n_ctx: int, per_token: int, room: int, *, ranking: tuple[str, str] | None = None) -> Choice:
    """Full cache when the wanted context's KV fits ``room``; else an eviction policy at what fits
    (``ranking``: the best policy `hearth bench kv` measured, and why)."""
    full = n_ctx * per_token
    if tp.kv_policy is not None or tp.kv_budget is not None:
        policy = tp.kv_policy or DEFAULT_EVICTION
        keeps_all = policy in ("full", *QUANTIZED_KV)  # quantized caches keep every token: no budget to evict to
        budget = n_ctx if keeps_all else min(tp.kv_budget or max(n_ctx // 4, 16), n_ctx)
        return Choice({"policy": policy, "budget_tokens": budget}, f"Set by you: {policy}, {budget:,} tokens of KV cache.", overridden=True)
    if full <= room:
        return Choice({"policy": "full", "budget_tokens": n_ctx},
                      f"Full cache: {n_ctx:,} tokens of KV take {fmt_bytes(full)}, which fits next to the weights.")
    budget = max(16, min(n_ctx, room // max(per_token, 1)))
    policy, why = default_eviction(ranking)
    return Choice(
        {"policy": policy, "budget_tokens": budget},
        f"{policy} with {budget:,} tokens: a {n_ctx:,}-token context's KV needs {fmt_bytes(full)}, and "
        f"{fmt_bytes(room)} is left next to the weights. {why}",
    )


def default_eviction(ranking: tuple[str, str] | None) -> tuple[str, str]:
    """The eviction policy the KV bench measured best (``ranking``), else sink + window."""
    if ranking is not None and ranking[0] in KV_POLICIES and ranking[0] != "full":
        return ranking
    return DEFAULT_EVICTION, ("A few first (sink) tokens and the most recent window are kept, so the model stays "
                              "coherent past the budget (StreamingLLM); not yet measured against the others here.")


def _gpu_speed(gpu: Any) -> float:
    bandwidth, _ = speed_model.gpu_bandwidth(gpu)
    return bandwidth


def choose_weights(model: ModelInfo, hw: Hardware, budgets: Budgets, gpu: Any, dtype: str, tp: TorchPrefs,
                   kv_bytes: int, cpu_int8_speedup: float | None) -> tuple[_Option, str]:
    """How the weights are held: 16-bit (maybe offloaded) or quantized on load; the option and why."""
    params = model.parameters
    ram_bw, _ = speed_model.ram_bandwidth(hw)
    dense = params * DTYPE_BYTES[dtype]
    if gpu is None:
        ram = max(budgets.ram - kv_bytes - COMPUTE_RESERVE, 0)
        int8 = int(params * QUANT_BYTES["int8"])
        wants = tp.weight_quant
        if wants not in (None, "none") and wants.startswith("bnb"):
            raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"{wants} needs a CUDA GPU; this machine has none. Choose int8 or int4-g64.")
        if wants in ("int8", "int4-g64"):
            size = int(params * QUANT_BYTES[wants])
            return _cpu_option(wants, size, ram, ram_bw, 1.0), f"Weights quantized to {wants} on load, as you chose ({fmt_bytes(size)})."
        fast_int8 = cpu_int8_speedup is not None and cpu_int8_speedup >= 1.0
        if wants is None and fast_int8 and tp.offload is not True:
            # The speed-up was measured against fp32 decode, so it scales fp32's time, not int8's bytes.
            return _cpu_option("int8", int8, ram, ram_bw, cpu_int8_speedup or 1.0, read_bytes=params * 4), (
                f"Weights quantized to int8 on load ({fmt_bytes(int8)}): Hearth's int8 kernel measured {cpu_int8_speedup:.2f}x fp32's decode speed here.")
        option = _cpu_option("none", dense, ram, ram_bw, 1.0)
        if option.where.get("disk"):
            if tp.offload is False:
                raise RuntimeFailure(ErrorKind.OUT_OF_MEMORY, f"{model.name} needs {fmt_bytes(dense)} of RAM in {dtype}; {fmt_bytes(ram)} is usable and you turned offload off.")
            note = f"{fmt_bytes(option.where['disk'])} of the {fmt_bytes(dense)} of weights do not fit the {fmt_bytes(ram)} of usable RAM and are read from disk for every token (slow)."
        else:
            note = f"The {fmt_bytes(dense)} of {dtype} weights fit in RAM."
        why = "" if cpu_int8_speedup is None else f" int8 weights measured {cpu_int8_speedup:.2f}x fp32 here, so they are not used."
        if cpu_int8_speedup is None and tp.weight_quant is None:
            why = " Hearth's int8 kernel is not measured on this machine yet, so weights stay unquantized."
        return option, note + why
    vram = max(budgets.gpus[gpu.index] - kv_bytes - COMPUTE_RESERVE, 0)
    vram_bw = _gpu_speed(gpu)
    ram = max(budgets.ram - COMPUTE_RESERVE, 0)
    options = {"none": _gpu_option("none", dense, vram, ram, vram_bw)}
    for scheme in ("bnb-int8", "bnb-nf4"):
        options[scheme] = _gpu_option(scheme, int(params * QUANT_BYTES[scheme]), vram, ram, vram_bw)
    if tp.weight_quant is not None:
        chosen = options.get(tp.weight_quant) or _gpu_option(tp.weight_quant, int(params * QUANT_BYTES[tp.weight_quant]), vram, ram, vram_bw)
        return chosen, f"Weights: {tp.weight_quant}, as you chose (about {chosen.tokens_per_s:.1f} tok/s predicted)."
    if options["none"].where.get("gpu", 0) >= dense:
        return options["none"], f"All {fmt_bytes(dense)} of {dtype} weights fit in {fmt_bytes(vram)} of usable VRAM; nothing is quantized."
    words = "; ".join(f"{k}: {fmt_bytes(sum(o.where.values()))}, {_where_words(o)}, ~{o.tokens_per_s:.1f} tok/s" for k, o in options.items())
    if tp.offload is True:
        return options["none"], f"Offloading {dtype} layers, as you chose. Compared: {words}."
    fitting = [o for o in options.values() if o.weight_quant != "none" and not o.where.get("cpu") and not o.where.get("disk")]
    candidates = ([options["none"]] if tp.offload is not False else []) + (fitting or [options["bnb-nf4"]])
    best = max(candidates, key=lambda o: (o.tokens_per_s, -QUANT_BYTES.get(o.weight_quant, 0) if o.weight_quant != "none" else 1))
    # prefer int8's quality when it is within 10% of nf4's speed
    if best.weight_quant == "bnb-nf4" and options["bnb-int8"] in fitting and options["bnb-int8"].tokens_per_s >= 0.9 * best.tokens_per_s:
        best = options["bnb-int8"]
    quality = {"none": "no quality loss", "bnb-int8": "int8 is near-lossless", "bnb-nf4": "4-bit NF4 costs a little perplexity (about 1-3%), acceptable for chat"}[best.weight_quant]
    return best, (f"The {fmt_bytes(dense)} of {dtype} weights do not fit in {fmt_bytes(vram)} of usable VRAM. Predicted decode "
                  f"(bytes per token over VRAM, PCIe or disk bandwidth): {words}. Chosen: {best.weight_quant} ({quality}).")


def _where_words(o: _Option) -> str:
    parts = [f"{fmt_bytes(v)} on {k}" for k, v in o.where.items() if v]
    return " + ".join(parts) or "nothing"


def _cpu_option(scheme: str, size: int, ram: int, ram_bw: float, speedup: float, *, read_bytes: int | None = None) -> _Option:
    """``read_bytes`` (default ``size``) is what one token's time is computed from, at ``speedup``."""
    in_ram, on_disk = min(size, ram), max(size - ram, 0)
    seconds = (read_bytes or in_ram) / (ram_bw * CPU_EFFICIENCY * speedup) + on_disk / DISK_BYTES_PER_S
    return _Option(scheme, {"cpu": in_ram, "disk": on_disk}, 1.0 / max(seconds, 1e-9))


def _gpu_option(scheme: str, size: int, vram: int, ram: int, vram_bw: float) -> _Option:
    on_gpu = min(size, vram)
    on_cpu = min(size - on_gpu, ram)
    on_disk = size - on_gpu - on_cpu
    efficiency = QUANT_EFFICIENCY.get(scheme, 0.5)
    seconds = on_gpu / (vram_bw * efficiency) + on_cpu / PCIE_BYTES_PER_S + on_disk / DISK_BYTES_PER_S
    return _Option(scheme, {"gpu": on_gpu, "cpu": on_cpu, "disk": on_disk}, 1.0 / max(seconds, 1e-9))


def choose_device_map(model: ModelInfo, gpu: Any, budgets: Budgets, option: _Option, dtype: str, kv_bytes: int, tp: TorchPrefs) -> Choice:
    """accelerate's device map for the chosen option: None when everything sits on one device."""
    n = model.n_layers
    spread = [k for k, v in option.where.items() if v]
    base = {"n_layers": n, "device_map": None, "max_memory": None, "offload_folder": None, "output_on_gpu": False, "per_device": []}
    if spread == ["gpu"] or (gpu is not None and option.weight_quant.startswith("bnb") and spread == ["gpu"]):
        value = {**base, "device_map": {"": gpu.index}, "n_gpu_layers": n + 1, "repeating": n, "output_on_gpu": True}
        return Choice(value, f"Every layer on the {gpu.name}.")
    if spread == ["cpu"]:
        return Choice({**base, "n_gpu_layers": 0, "repeating": 0}, "No GPU torch can use: every layer runs on the CPU, read from RAM." if gpu is None else "Every layer on the CPU.")
    # offloaded: ask accelerate, with the budgets left for weights (the weights' dtype is the load dtype)
    max_memory: dict[Any, int] = {}
    if gpu is not None:
        max_memory[gpu.index] = max(budgets.gpus[gpu.index] - kv_bytes - COMPUTE_RESERVE, 0)
    max_memory["cpu"] = max(budgets.ram - (0 if gpu is not None else kv_bytes) - COMPUTE_RESERVE, 0)
    scale = option_dtype_scale(option, dtype)
    config = torch_devices.config_for(model)
    mapping = torch_devices.device_map(config, max_memory={k: int(v / scale) for k, v in max_memory.items()}, dtype=dtype)
    from app.paths import paths

    folder = str(paths().cache / "torch-offload" / model.id.replace("/", "--"))
    counts = _layer_counts(mapping, n)
    value = {**base, "device_map": {k: v for k, v in mapping.items()}, "max_memory": {str(k): v for k, v in max_memory.items()},
             "offload_folder": folder if "disk" in mapping.values() else None, "n_gpu_layers": counts.get("gpu", 0),
             "repeating": counts.get("gpu", 0), "layers": counts}
    words = ", ".join(f"{c} on {d}" for d, c in counts.items() if c)
    reason = (f"accelerate's device map under the budgets ({', '.join(f'{k}: {fmt_bytes(v)}' for k, v in max_memory.items())}): "
              f"of {n} layers, {words}.")
    if counts.get("disk"):
        reason += f" Disk-offloaded layers are read from {folder} for every token."
    return Choice(value, reason, overridden=tp.offload is not None)


def option_dtype_scale(option: _Option, dtype: str) -> float:
    """How much smaller the loaded weights are than the dtype accelerate sizes them in."""
    if option.weight_quant == "none":
        return 1.0
    return QUANT_BYTES[option.weight_quant] / DTYPE_BYTES[dtype]


def _layer_counts(mapping: dict[str, Any], n_layers: int) -> dict[str, int]:
    """How many decoder layers each kind of device holds ("gpu", "cpu", "disk")."""
    counts = {"gpu": 0, "cpu": 0, "disk": 0}
    for i in range(n_layers):
        device = next((d for name, d in mapping.items() if name in (f"model.layers.{i}", "model.layers", "model", "")), None)
        device = device if device is not None else next((d for name, d in mapping.items() if name.startswith(f"model.layers.{i}.")), "cpu")
        counts["gpu" if isinstance(device, int) else str(device)] += 1
    return counts


def choose_compile(gpu: Any, tp: TorchPrefs, policy: str, placement: dict[str, Any]) -> Choice:
    if tp.compile is not None:
        return Choice(tp.compile, f"Fast decode {'on' if tp.compile else 'off'}: set by you.", overridden=True)
    if gpu is None:
        return Choice(False, f"Fast decode (static cache + torch.compile): {CPU_COMPILE_WORDS}.")
    if policy != "full":
        return Choice(False, f"Fast decode off: a static cache cannot evict, and the {policy} policy does.")
    if placement.get("layers", {}).get("cpu") or placement.get("layers", {}).get("disk"):
        return Choice(False, "Fast decode off: offloaded layers move weights through accelerate's hooks, which a compiled graph cannot capture.")
    return Choice(True, "Fast decode on: a static KV cache and a compiled decode step (gpt-fast style) cut the per-token launch overhead on the GPU; the first reply pays the compile.")


def _memory(option: _Option, budgets: Budgets, gpu: Any, kv_bytes: int) -> Choice:
    devices = []
    if gpu is not None:
        used = option.where.get("gpu", 0) + kv_bytes + COMPUTE_RESERVE
        devices.append({"device": f"gpu{gpu.index}", "name": gpu.name, "budget": budgets.gpus[gpu.index], "weights": option.where.get("gpu", 0),
                        "kv": kv_bytes, "compute": COMPUTE_RESERVE, "total": used})
    cpu_kv = 0 if gpu is not None else kv_bytes
    devices.append({"device": "cpu", "name": "CPU", "budget": budgets.ram, "weights": option.where.get("cpu", 0), "kv": cpu_kv,
                    "compute": COMPUTE_RESERVE, "total": option.where.get("cpu", 0) + cpu_kv + COMPUTE_RESERVE})
    if option.where.get("disk"):
        devices.append({"device": "disk", "name": "disk", "budget": 0, "weights": option.where["disk"], "kv": 0, "compute": 0, "total": option.where["disk"]})
    words = "; ".join(f"{d['name']}: {fmt_bytes(d['total'])}" + (f" of {fmt_bytes(d['budget'])}" if d["budget"] else "") for d in devices)
    return Choice({"devices": devices, "ram_budget": budgets.ram, "source": "estimate"}, f"{words}. Budgets keep their safety margins free.")


def _capability(value: str | None) -> float:
    try:
        return float(value) if value else 8.0
    except ValueError:
        return 8.0


def torch_kwargs(p: Plan) -> dict[str, Any]:
    """The plan as `TorchBackend` settings."""
    if p.backend.value != "torch":
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"this plan is for the {p.backend.value} backend")
    layers, kv, batch = p.gpu_layers.value, p.kv_eviction.value, p.batch.value
    quant = p.quantization.value["weight_quant"]
    settings: dict[str, Any] = {
        "dtype": p.quantization.value["dtype"],
        "n_ctx": p.context_length.value,
        "threads": p.threads.value["threads"],
        "kv_policy": kv["policy"],
        "kv_budget": kv["budget_tokens"],
        "compile": bool(batch["compile"]),
        "attn_implementation": p.flash_attention.value,
        "prefill_chunk": batch["prefill_chunk"],
        "weight_quant": None if quant == "none" else quant,
    }
    if layers.get("device_map"):
        settings["device_map"] = layers["device_map"]
        if layers.get("max_memory"):
            settings["max_memory"] = layers["max_memory"]
        if layers.get("offload_folder"):
            settings["offload_folder"] = layers["offload_folder"]
    return settings


def summary(p: Plan) -> str:
    """"torch · bf16 · CPU only · 8k ctx · sink_window 2k KV · ~20 tok/s"."""
    q = p.quantization.value
    layers = p.gpu_layers.value.get("layers") or {}
    if p.gpu_layers.value.get("device_map") and not layers:
        where = "all on GPU"
    elif layers:
        where = " + ".join(f"{c} {d}" for d, c in layers.items() if c) + " layers"
    else:
        where = "CPU only"
    kv = p.kv_eviction.value
    ctx = p.context_length.value
    kv_words = "full KV" if kv["policy"] == "full" else f"{kv['policy']} {kv['budget_tokens']:,} KV"
    weights = q["dtype"] if q["weight_quant"] == "none" else f"{q['weight_quant']} ({q['dtype']})"
    tps = p.speed.value["decode_tokens_per_s"]
    return " · ".join(("torch", weights, where, f"{ctx:,} ctx", kv_words, f"~{tps:.0f} tok/s" if tps >= 10 else f"~{tps:.1f} tok/s"))
