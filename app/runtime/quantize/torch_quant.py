"""Weight-only int8/int4 quantization of a transformers model for the torch backend.

Two steps, torchao style: a scheme (a validating config, looked up by name in ``SCHEMES``) makes
the quantized state of each weight, and :func:`quantize_model` swaps every ``nn.Linear`` for an
:class:`~app.kernels.quant_linear.module.QuantizedLinear` over that state, which runs
``app.kernels.quant_linear.linear`` (Triton on a GPU; on the CPU torch's own int8/int4 matmuls or
the torch reference, as the dispatcher and the measured figures decide).

What stays in full precision, and why: the token embedding is a lookup, not a matmul, and reading
one row per token costs nothing; the output head (``lm_head``) is tied to that embedding in
SmolLM2 and most small models, so quantizing it would either untie it (a second, quantized copy of
the largest matrix) or quantize the embedding with it, and it is also the layer whose error moves
the argmax most directly.

The scheme is recorded in the saved folder's metadata (``config.json`` key
``hearth_quantization`` and the safetensors header), never parsed from a file name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.kernels import dispatch
from app.kernels.quant_linear import (
    INT4_GROUP_SIZES,
    Int4Weight,
    Int8Weight,
    QuantizedWeight,
    quantize_int4,
    quantize_int8,
)
from app.kernels.quant_linear.module import QuantizedLinear
from app.paths import paths
from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

METADATA_KEY = "hearth_quantization"
WEIGHTS_FILE = "model.safetensors"
BENCH_FILE = "kernels-bench.json"  # in paths().cache, written by `hearth bench kernels`


@dataclass(frozen=True)
class WeightOnlyConfig:
    """One weight-only scheme: int8 per output channel, or int4 in groups of input channels."""

    bits: int
    group_size: int = 0  # 0: one scale per output channel (int8)
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits == 8:
            if self.group_size != 0 or not self.symmetric:
                raise ValueError("int8 is symmetric with one scale per output channel (group_size=0)")
        elif self.bits == 4:
            if self.group_size not in INT4_GROUP_SIZES:
                raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size}")
        else:
            raise ValueError(f"weight-only quantization takes 8 or 4 bits, got {self.bits}")

    @property
    def name(self) -> str:
        if self.bits == 8:
            return "int8"
        return f"int4-g{self.group_size}" + ("" if self.symmetric else "-asym")

    def quantize(self, weight: torch.Tensor) -> QuantizedWeight:
        """The quantized state of one [out, in] weight."""
        if self.bits == 8:
            return quantize_int8(weight)
        return quantize_int4(weight, self.group_size, self.symmetric)

    def placeholder(self, out_features: int, in_features: int) -> QuantizedWeight:
        """An empty weight of the right shapes, for loading a saved state into."""
        if self.bits == 8:
            return Int8Weight(
                torch.zeros(out_features, in_features, dtype=torch.int8), torch.ones(out_features)
            )
        n_groups = -(-in_features // self.group_size)
        packed = torch.zeros(out_features, n_groups * self.group_size // 2, dtype=torch.uint8)
        zero = None if self.symmetric else torch.zeros(out_features, n_groups, dtype=torch.uint8)
        scale = torch.ones(out_features, n_groups)
        return Int4Weight(packed, scale, zero, self.group_size, in_features)

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.name, "method": "weight_only", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightOnlyConfig:
        try:
            return cls(int(data["bits"]), int(data.get("group_size", 0)), bool(data.get("symmetric", True)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a Hearth weight-only scheme: {data!r} ({exc})") from exc


SCHEMES: dict[str, WeightOnlyConfig] = {
    c.name: c
    for c in [WeightOnlyConfig(8)]
    + [WeightOnlyConfig(4, g, sym) for sym in (True, False) for g in INT4_GROUP_SIZES]
}


def get_scheme(scheme: str | WeightOnlyConfig) -> WeightOnlyConfig:
    if isinstance(scheme, WeightOnlyConfig):
        return scheme
    if scheme not in SCHEMES:
        raise RuntimeFailure(
            ErrorKind.INVALID_PARAMS,
            f"Unknown weight-only scheme {scheme!r}; choose one of {', '.join(SCHEMES)}.",
        )
    return SCHEMES[scheme]


# --- the bench's saved result ----------------------------------------------------------------------


def bench_file() -> Path:
    return paths().cache / BENCH_FILE


def saved_bench() -> dict[str, Any] | None:
    """The last `hearth bench kernels` result on this machine, or None (never run, or unreadable)."""
    path = bench_file()
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("ignoring an unreadable kernel bench result at %s", path, exc_info=True)
        return None
    return data if isinstance(data, dict) else None


def save_bench(result: dict[str, Any]) -> Path:
    """Store the bench result for :func:`cpu_speedup` (temp file renamed into place)."""
    path = bench_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def cpu_speedup(scheme: str | WeightOnlyConfig) -> float | None:
    """Measured decode speed of ``scheme`` over fp32 on this machine's CPU; None if never measured.

    The planner chooses int8/int4 on the CPU only where this is >= 1.0.
    """
    data = saved_bench()
    if data is None:
        return None
    config = get_scheme(scheme)
    speedups = data.get("cpu_decode_speedup", {})
    value = speedups.get(config.name)
    if value is None and not config.symmetric:
        # torch's int4 CPU kernel always takes float zeros: asymmetric runs the very same code and
        # reads the same bytes as symmetric, so the symmetric figure stands for it.
        value = speedups.get(WeightOnlyConfig(4, config.group_size).name)
    return float(value) if isinstance(value, (int, float)) else None


def cpu_compute_dtype() -> torch.dtype | None:
    """bf16 activations for small CPU batches where torch's CPU int8/int4 kernels run (they are
    vectorized for bf16 only), unless the saved bench found fp32 faster; None: keep fp32."""
    if dispatch.cpu_half_status().get(torch.bfloat16) is not None:
        return None
    data = saved_bench() or {}
    return None if data.get("cpu_compute_dtype") == "float32" else torch.bfloat16


# --- converting a model ---------------------------------------------------------------------------


def _kept_in_full_precision(model: nn.Module) -> set[int]:
    """ids of the modules never quantized: input and output embeddings (see the module doc)."""
    kept: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            kept.add(id(module))
    return kept


def _swap_linears(model: nn.Module, make: Callable[[nn.Linear], QuantizedLinear]) -> int:
    kept = _kept_in_full_precision(model)
    targets = [
        (parent, child_name, child)
        for parent in model.modules()
        for child_name, child in parent.named_children()
        if isinstance(child, nn.Linear) and id(child) not in kept
    ]
    for parent, child_name, child in targets:
        setattr(parent, child_name, make(child))
    return len(targets)


def quantize_model(
    model: nn.Module,
    scheme: str | WeightOnlyConfig,
    *,
    cpu_dtype: torch.dtype | None | str = "auto",
    method: str = "rtn",
    calibration: list[list[int]] | None = None,
    ctx: Any = None,
) -> None:
    """Replace every ``nn.Linear`` but the embeddings/head with a ``QuantizedLinear``, in place.

    ``cpu_dtype``: the activation dtype of small CPU batches ("auto": :func:`cpu_compute_dtype`).
    ``method``: "rtn" (round to nearest) or "gptq" (`app.runtime.quantize.gptq`, which needs
    ``calibration``: token windows; same saved format either way).
    The scheme is recorded on ``model.config`` (``hearth_quantization``) when the model has one.
    """
    config = get_scheme(scheme)
    half = cpu_compute_dtype() if cpu_dtype == "auto" else cpu_dtype
    if isinstance(half, str) or half == torch.float32:
        half = None
    made: dict[int, QuantizedWeight] = {}
    if method == "gptq":
        from app.runtime.quantize.gptq import gptq_weights

        if not calibration:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "GPTQ needs calibration text (token windows).")
        made = gptq_weights(model, calibration, config.bits, config.group_size, config.symmetric,
                            skip=_kept_in_full_precision(model), ctx=ctx)
    elif method != "rtn":
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown quantization method {method!r}; choose rtn or gptq.")

    def make(linear: nn.Linear) -> QuantizedLinear:
        qw = made.get(id(linear)) or config.quantize(linear.weight.data)
        return QuantizedLinear(qw.to(linear.weight.device), linear.bias, cpu_compute_dtype=half)

    with torch.no_grad():
        count = _swap_linears(model, make)
    if count == 0:
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, "This model has no linear layers to quantize.")
    if getattr(model, "config", None) is not None:
        setattr(model.config, METADATA_KEY, {**config.to_dict(), "algorithm": method})
    log.info("quantized %d linear layers to %s by %s (CPU activations: %s)", count, config.name, method, half)


def save_quantized(
    model: nn.Module, folder: str | Path, scheme: str | WeightOnlyConfig, *, tokenizer: Any = None
) -> Path:
    """Write a quantized model (config.json + model.safetensors [+ tokenizer]) to ``folder``.

    Everything is written to a temporary sibling folder renamed into place at the end, so a failed
    save never leaves a folder that :func:`load_quantized` would trust.
    """
    from safetensors.torch import save_file

    config = get_scheme(scheme)
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        state: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen:  # a tied weight (lm_head = embedding): stored once
                continue
            seen.add(tensor.data_ptr())
            state[name] = tensor.detach().to("cpu").contiguous()
        model_config = model.config  # type: ignore[attr-defined]
        algorithm = (getattr(model_config, METADATA_KEY, None) or {}).get("algorithm", "rtn")
        record = {**config.to_dict(), "algorithm": algorithm}  # how it was made; the format is the scheme
        meta = {METADATA_KEY: json.dumps(record), "format": "pt"}
        save_file(state, str(staging / WEIGHTS_FILE), metadata=meta)
        setattr(model_config, METADATA_KEY, record)
        model_config.save_pretrained(staging)
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_scheme(folder: str | Path) -> WeightOnlyConfig:
    """The scheme a saved folder records; both records must be present and agree."""
    from safetensors import safe_open

    folder = Path(folder)
    try:
        in_config = json.loads((folder / "config.json").read_text(encoding="utf-8")).get(METADATA_KEY)
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as fh:
            in_weights = json.loads((fh.metadata() or {}).get(METADATA_KEY, "null"))
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(
            ErrorKind.MODEL_INVALID, f"{folder} is not a readable Hearth quantized model: {exc}"
        ) from exc
    if in_config is None or in_weights is None or in_config != in_weights:
        raise RuntimeFailure(
            ErrorKind.MODEL_INVALID,
            f"{folder} does not record its quantization consistently (config.json: {in_config!r}, "
            f"weights: {in_weights!r}); quantize the model again.",
        )
    try:
        return WeightOnlyConfig.from_dict(in_config)
    except ValueError as exc:
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"{folder}: {exc}") from exc


def load_quantized(folder: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_quantized`: QuantizedLinear modules over its tensors."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    folder = Path(folder)
    config = read_scheme(folder)
    model_config = AutoConfig.from_pretrained(folder)
    with no_init_weights():  # every tensor is about to be replaced by a stored one
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    half = cpu_compute_dtype()
    _swap_linears(
        model,
        lambda lin: QuantizedLinear(
            config.placeholder(lin.out_features, lin.in_features),
            None if lin.bias is None else torch.zeros_like(lin.bias),
            cpu_compute_dtype=half,
        ),
    )
    state = load_file(str(folder / WEIGHTS_FILE))
    result = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(
        name for name, _ in model.named_parameters()
    )
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise RuntimeFailure(
            ErrorKind.MODEL_INVALID,
            f"{folder} does not match its config: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}; quantize the model again.",
        )
    return model.to(device).eval()


# --- `hearth bench kernels` -----------------------------------------------------------------------

BENCH_SCHEMES = ("int8", "int4-g32", "int4-g64", "int4-g128")
BENCH_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def bench_from_args(args: Any) -> dict[str, Any]:
    """`hearth bench kernels`: the kernels at SmolLM2's shapes, then SmolLM2's greedy decode in
    fp32 and with each scheme (runs alternate between variants so that drift hits all alike);
    the decode speedups are saved for :func:`cpu_speedup`."""
    import statistics

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.kernels import bench
    from app.runtime.hf_folder import hf_folder_for_gguf
    from app.runtime.library import embedded_model_path

    kernels = bench.run_from_args(args)
    report: dict[str, Any] = {"kernels": kernels, "cpu_compute_dtype": _faster_cpu_dtype(kernels)}
    cpu_dtype = torch.bfloat16 if report["cpu_compute_dtype"] == "bfloat16" else None
    tokens = max(2, int(getattr(args, "tokens", 64)))
    runs = max(1, int(getattr(args, "runs", 3)))
    folder = hf_folder_for_gguf(embedded_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": BENCH_PROMPT}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids  # [1, T]
    models: dict[str, nn.Module] = {}
    for name in ("fp32", *BENCH_SCHEMES):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        if name != "fp32":
            quantize_model(model, name, cpu_dtype=cpu_dtype)
        models[name] = model
    speeds: dict[str, list[float]] = {name: [] for name in models}
    outputs: dict[str, list[int]] = {}
    for _ in range(runs):
        for name, model in models.items():
            tok_s, ids = bench.decode_tokens_per_s(model, prompt_ids, tokens=tokens)
            speeds[name].append(tok_s)
            outputs[name] = ids
    median = {name: statistics.median(values) for name, values in speeds.items()}
    reference = outputs["fp32"]
    report["decode"] = {
        "model": "SmolLM2-135M-Instruct (fp32 HF folder from the embedded GGUF)",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "prompt_tokens": int(prompt_ids.shape[1]),
        "tokens": tokens,
        "runs": runs,
        "tok_per_s": {name: round(v, 2) for name, v in median.items()},
        "tok_per_s_runs": {name: [round(v, 2) for v in values] for name, values in speeds.items()},
        "greedy_tokens_matching_fp32": {
            name: next((i for i, (a, b) in enumerate(zip(ids, reference)) if a != b), len(ids))
            for name, ids in outputs.items()
        },
    }
    report["cpu_decode_speedup"] = {
        name: round(median[name] / median["fp32"], 3) for name in BENCH_SCHEMES
    }
    report["saved_to"] = str(save_bench(report))
    return report


def _faster_cpu_dtype(kernels: dict[str, Any]) -> str:
    """"bfloat16" where the dispatched bf16 int8/int4 paths beat the fp32 reference over SmolLM2's
    shapes, summed (what a decode step runs); else "float32"."""
    try:
        totals = {
            dtype: sum(
                entry[kind]["dispatched"]["us"]
                for entry in kernels[dtype]["shapes"]
                for kind in ("int8", "int4")
            )
            for dtype in ("float32", "bfloat16")
        }
    except (KeyError, TypeError):
        return "float32"  # not measured (a GPU machine, or a path that failed): keep fp32
    return "bfloat16" if totals["bfloat16"] < totals["float32"] else "float32"
