"""The dry run: llama.cpp sizes its own buffers for a plan without allocating them.

The planner's memory model is a formula; before a real load Hearth asks llama.cpp itself. With
``no_alloc`` set, ``llama_model_load_from_file`` and ``llama_init_from_model`` build every tensor
and reserve the compute graph but allocate nothing (about 0.1 s and 60 MB for SmolLM2), and:

- ``llama_model_size()`` is the weights, exactly;
- the log's "<device> compute buffer size" lines are the compute buffers the real load will take;
- the log prints 0 MiB for the model and KV *buffers* (nothing was allocated), so the KV cache comes
  from the planner's formula, which is exact (the log's logical "llama_kv_cache: size" line is kept
  as a cross-check).

``no_alloc`` only works with ``load_mode = LLAMA_LOAD_MODE_NONE``: with the default mmap mode
llama.cpp stops on ``GGML_ASSERT(!ml.no_alloc)``, a C abort that ends the whole process. A future
llama.cpp may abort somewhere else, so the dry run never runs in a process anyone wants to keep:
:func:`dry_run` runs it as the ``dry-run`` role of the one child-job helper (`app.runtime.childjob`,
started through the launcher, frozen-build aware). A child that crashes, hangs or answers garbage
becomes a RuntimeFailure (LOAD_FAILED, naming the signal); the parent never waits past its timeout.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.runtime.childjob import ChildFailed, run_child
from app.runtime.hardware import Hardware
from app.runtime.jobs import JobContext
from app.runtime.library import ModelInfo
from app.runtime.planner import memory
from app.runtime.planner.policy import DEFAULT_CALIBRATION
from app.runtime.planner.policy import plan as make_plan
from app.runtime.planner.schema import Plan, UserPrefs
from app.runtime.planner.shape import ModelShape
from app.runtime.planner.speed import Calibration
from app.runtime.protocol import ErrorKind, RuntimeFailure

ROLE = "dry-run"  # its role in app.__main__'s table of child jobs
MiB = 1 << 20
TOLERANCE = 0.02  # the planner's stated accuracy for compute buffers; within it, an estimate stands
DEFAULT_TIMEOUT = 60.0
_COMPUTE = re.compile(r"(\S+) compute buffer size =\s*([\d.]+) MiB")
_OUTPUT = re.compile(r"(\S+)\s+output buffer size =\s*([\d.]+) MiB")
_KV = re.compile(r"llama_kv_cache\S*: size =\s*([\d.]+) MiB")
_ERROR = re.compile(r"error|failed|unable|cannot|not supported|requires", re.IGNORECASE)


@dataclass(frozen=True)
class DryRun:
    """What llama.cpp reported for one model and one set of ``Llama(...)`` keyword arguments.

    ``compute_bytes`` and ``output_bytes`` are keyed by llama.cpp's device names ("CPU", "CUDA0",
    "CUDA_Host"...). The log rounds to 0.01 MiB, so those are exact to about 5 KiB.
    """

    model_bytes: int
    compute_bytes: dict[str, int]
    seconds: float
    log_lines: tuple[str, ...]  # the lines the figures (or the failure) came from
    output_bytes: dict[str, int] = field(default_factory=dict)
    kv_bytes: int | None = None  # llama.cpp's logical KV size (its buffer prints as 0 MiB here)

    @property
    def compute_total(self) -> int:
        return sum(self.compute_bytes.values())

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "log_lines": list(self.log_lines)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DryRun:
        def sizes(d: Any) -> dict[str, int]:
            return {str(k): int(v) for k, v in dict(d).items()}

        kv = raw.get("kv_bytes")
        lines = tuple(str(line) for line in raw.get("log_lines", ()))
        return cls(int(raw["model_bytes"]), sizes(raw["compute_bytes"]), float(raw["seconds"]), lines, sizes(raw.get("output_bytes", {})), None if kv is None else int(kv))


# ---- confirming a plan ----------------------------------------------------------------------------


def confirm(
    plan: Plan,
    model: ModelInfo,
    hw: Hardware,
    prefs: UserPrefs | None,
    measured: DryRun,
    *,
    shape: ModelShape | None = None,
    calibration: Calibration = DEFAULT_CALIBRATION,
) -> tuple[Plan, str]:
    """Check ``plan`` against a dry run of it; re-plan with the measured sizes when they are larger.

    ``shape``: the shape the plan was made with (None: estimated from ``model``, as ``plan()`` does).
    A measurement within :data:`TOLERANCE` of the estimate confirms it: the planner claims that
    accuracy, and the budgets' margins absorb it. Larger weights scale the shape's tensor sizes;
    larger compute buffers set ``shape.compute_scale``; then the planner runs again, so the new
    plan's memory figures and its fit are the measured ones. Raises what ``plan()`` raises when the
    measured sizes no longer fit at all, with the measurement in the message.
    """
    shape = shape or ModelShape.estimate(model)
    weights_ratio = measured.model_bytes / max(shape.weights_bytes, 1)
    compute_ratio, compute_note = _compute_ratio(plan, shape, hw, measured)
    found = f"weights {_mib(measured.model_bytes)}, compute {_mib(measured.compute_total)}"
    if weights_ratio <= 1 + TOLERANCE and compute_ratio <= 1 + TOLERANCE:
        return plan, f"The dry run confirmed the estimate ({found}).{compute_note}"
    changes: dict[str, Any] = {}
    said = []
    if weights_ratio > 1 + TOLERANCE:
        changes.update(
            layer_bytes=tuple(math.ceil(b * weights_ratio) for b in shape.layer_bytes),
            token_embd_bytes=math.ceil(shape.token_embd_bytes * weights_ratio),
            output_bytes=math.ceil(shape.output_bytes * weights_ratio),
        )
        said.append(f"{_mib(measured.model_bytes)} of weights where Hearth estimated {_mib(shape.weights_bytes)}")
    if compute_ratio > 1 + TOLERANCE:
        changes["compute_scale"] = shape.compute_scale * compute_ratio
        said.append(f"compute buffers {compute_ratio:.2f} times the estimate ({_mib(measured.compute_total)})")
    why = f"The dry run measured {' and '.join(said)}"
    corrected = dataclasses.replace(shape, notes=(*shape.notes, f"dry run: {' and '.join(said)}"), **changes)
    try:
        new = make_plan(model, hw, prefs, shape=corrected, calibration=calibration)
    except RuntimeFailure as exc:  # keep its type (ContextTooLarge carries largest_fit): add the cause
        exc.message = f"{why}. {exc.message}"
        exc.args = (exc.message,)
        raise
    memory_choice = dataclasses.replace(new.memory, reason=f"{new.memory.reason} {why}; these figures include it.")
    new = dataclasses.replace(new, memory=memory_choice)
    moved = _differences(plan, new)
    if moved:
        return new, f"{why}, so Hearth changed the plan: {moved}."
    return new, f"{why}; the plan still fits with that, unchanged."


def _compute_ratio(plan: Plan, shape: ModelShape, hw: Hardware, measured: DryRun) -> tuple[float, str]:
    """The largest measured/estimated compute ratio over the devices both name, and a note when
    the devices do not match (a dry run on a machine without the plan's GPU measures only the CPU)."""
    devices = {d["device"]: d for d in plan.memory.value["devices"]}
    layers = plan.gpu_layers.value
    ctx, batch = plan.context_length.value, plan.batch.value
    with_gpu = bool(hw.gpus) and (layers["n_gpu_layers"] > 0 or layers["op_offload"])
    host = memory.host_buffers(shape, n_ctx=ctx, n_ubatch=batch["n_ubatch"], flash_attn=plan.flash_attention.value, with_gpu=with_gpu)
    gpu_names = [n for n in measured.compute_bytes if n != "CPU" and not n.endswith("_Host")]
    pairs = {"cpu": "CPU", **{f"gpu{i}": n for i, n in enumerate(gpu_names)}}
    planned = {d for d, use in devices.items() if use["compute"] > (host if d == "cpu" else 0)}
    if not measured.compute_bytes:
        return 0.0, " (llama.cpp reported no compute buffer, so only the weights were checked.)"
    if {pairs.get(d) for d in planned} != {n for n in measured.compute_bytes if not n.endswith("_Host")}:
        return 0.0, f" (The dry run's devices, {', '.join(measured.compute_bytes)}, are not the plan's, so only the weights were checked.)"
    ratios = [measured.compute_bytes[pairs[d]] / (devices[d]["compute"] - (host if d == "cpu" else 0)) for d in planned]
    return max(ratios, default=0.0), ""


def _differences(old: Plan, new: Plan) -> str:
    words = []
    if old.context_length.value != new.context_length.value:
        words.append(f"a {new.context_length.value:,}-token context instead of {old.context_length.value:,}")
    if old.kv_type.value != new.kv_type.value:
        words.append(f"a {new.kv_type.value} KV cache instead of {old.kv_type.value}")
    if old.flash_attention.value != new.flash_attention.value:
        words.append(f"flash attention {'on' if new.flash_attention.value else 'off'}")
    a, b = old.gpu_layers.value["n_gpu_layers"], new.gpu_layers.value["n_gpu_layers"]
    if a != b:
        words.append(f"{b} GPU layers instead of {a}")
    if old.batch.value != new.batch.value:
        words.append(f"prompts in micro-batches of {new.batch.value['n_ubatch']} instead of {old.batch.value['n_ubatch']}")
    return ", ".join(words)


def _mib(n: float) -> str:
    return f"{n / MiB:.2f} MiB"


# ---- the parent side ------------------------------------------------------------------------------


def dry_run(
    model_path: str | Path,
    llama_kwargs: Mapping[str, Any],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    child: tuple[str, Mapping[str, Any]] | None = None,
) -> DryRun:
    """Measure ``model_path`` under ``llama_kwargs`` (``planner.llama_cpp_kwargs(plan)``) in a child.

    ``child``: another child role and its params to run instead of the dry run (tests swap in the
    child-job helper's ``selftest-child``, which crashes, hangs or answers garbage on request).
    Raises RuntimeFailure: MODEL_NOT_FOUND, MODEL_INVALID (llama.cpp cannot read the file),
    LOAD_FAILED (settings refused, crash, timeout).
    """
    path = Path(model_path)
    if not path.is_file():
        raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"There is no model file at {path}.")
    request: dict[str, Any] = {"model_path": str(path), "llama_kwargs": dict(llama_kwargs)}
    try:
        json.dumps(request)
    except (TypeError, ValueError) as exc:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"The dry run takes JSON-like llama.cpp settings: {exc}") from exc
    role, params = child if child is not None else (ROLE, request)
    try:
        reply = run_child(role, params, None, what=f"the dry run of {path.name}", timeout=timeout)
    except ChildFailed as exc:
        if exc.timed_out:
            raise RuntimeFailure(
                ErrorKind.LOAD_FAILED,
                f"The dry run of {path.name} did not finish within {timeout:g} s and was stopped. Hearth will not "
                f"load a model it could not check; try again, and if it keeps happening report it with the log.",
                detail=exc.detail,
            ) from None
        raise RuntimeFailure(
            ErrorKind.LOAD_FAILED,
            f"llama.cpp crashed while checking {path.name} ({_exit_words(exc.exit_code)}). The file or these "
            f"settings would crash a real load too; try another quantization of the model or report it with the log.",
            detail=exc.detail,
        ) from None
    except RuntimeFailure as exc:
        if exc.kind is ErrorKind.INTERNAL:  # an exception in the child other than a worded failure
            raise RuntimeFailure(ErrorKind.LOAD_FAILED, f"The dry run of {path.name} failed: {exc.message}", detail=exc.detail) from None
        raise
    try:
        return DryRun.from_dict(reply["dry_run"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeFailure(ErrorKind.LOAD_FAILED, f"The dry run of {path.name} answered with an incomplete result ({exc}).") from exc


def _exit_words(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# ---- the child side -------------------------------------------------------------------------------


def child_entry(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The ``dry-run`` child role (`app.runtime.childjob.serve`): one measurement, as a dict.

    It runs in a throw-away process because a C abort in llama.cpp ends whatever process runs it.
    """
    if not isinstance(params.get("model_path"), str):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "a dry-run request needs a 'model_path' string")
    kwargs = params.get("llama_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'llama_kwargs' must be an object")
    return {"dry_run": measure_in_this_process(params["model_path"], kwargs).to_dict()}


_MODEL_FIELDS = ("n_gpu_layers", "main_gpu", "split_mode")
_CONTEXT_FIELDS = ("n_threads", "n_threads_batch", "type_k", "type_v", "op_offload", "offload_kqv", "swa_full")


def measure_in_this_process(model_path: str, kwargs: Mapping[str, Any]) -> DryRun:
    """The dry run itself, in the calling process. Only the ``dry-run`` child calls this: a C
    abort in llama.cpp would end whatever process runs it."""
    import ctypes

    import llama_cpp

    log = _LogCapture()
    callback = llama_cpp.llama_log_callback(log.write)  # kept referenced until the end
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    name = Path(model_path).name

    mp = llama_cpp.llama_model_default_params()
    _set(mp, "no_alloc", True)
    _set(mp, "load_mode", llama_cpp.LLAMA_LOAD_MODE_NONE)  # the mmap mode aborts with no_alloc
    for key in _MODEL_FIELDS:
        if kwargs.get(key) is not None:
            _set(mp, key, int(kwargs[key]))
    if kwargs.get("n_gpu_layers") == -1:
        _set(mp, "n_gpu_layers", 0x7FFFFFFF)  # llama-cpp-python's "all"
    split = kwargs.get("tensor_split")
    if split:
        split_array = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*[float(x) for x in split])
        _set(mp, "tensor_split", split_array)

    cp = llama_cpp.llama_context_default_params()
    n_ctx = int(kwargs.get("n_ctx", 512))
    n_batch = min(n_ctx, int(kwargs.get("n_batch", 512)))  # as llama_cpp.Llama computes them
    _set(cp, "n_ctx", n_ctx)
    _set(cp, "n_batch", n_batch)
    _set(cp, "n_ubatch", min(n_batch, int(kwargs.get("n_ubatch", 512))))
    _set(cp, "flash_attn_type", llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if kwargs.get("flash_attn") else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    for key in _CONTEXT_FIELDS:
        if kwargs.get(key) is not None:
            _set(cp, key, kwargs[key])

    started = time.perf_counter()
    model = llama_cpp.llama_model_load_from_file(model_path.encode("utf-8"), mp)
    if not model:
        raise RuntimeFailure(
            ErrorKind.MODEL_INVALID,
            f"llama.cpp cannot read {name}: {log.reason() or 'it refused the file'}. The file may be damaged or "
            f"truncated (download it again), or its architecture may be newer than Hearth's llama.cpp.",
            detail="\n".join(log.lines[-20:]),
        )
    try:
        model_bytes = int(llama_cpp.llama_model_size(model))
        ctx = llama_cpp.llama_init_from_model(model, cp)
        if not ctx:
            raise RuntimeFailure(
                ErrorKind.LOAD_FAILED,
                f"llama.cpp refused these settings for {name}: {log.reason() or 'it could not create a context'}.",
                detail="\n".join(log.lines[-20:]),
            )
        llama_cpp.llama_free(ctx)
    finally:
        llama_cpp.llama_model_free(model)
    seconds = time.perf_counter() - started
    del callback
    return log.result(model_bytes, seconds)


def _set(struct: Any, name: str, value: Any) -> None:
    """ctypes ignores an unknown attribute silently; a renamed field must fail loudly instead."""
    if name not in {f[0] for f in type(struct)._fields_}:
        raise RuntimeFailure(
            ErrorKind.INTERNAL,
            f"This llama-cpp-python has no {type(struct).__name__}.{name}; Hearth's dry run needs updating for it.",
        )
    setattr(struct, name, value)


class _LogCapture:
    """llama.cpp's log, assembled into whole lines (a message may arrive in pieces)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial = ""

    def write(self, level: int, text: bytes | None, user_data: object) -> None:
        self._partial += (text or b"").decode("utf-8", "replace")
        *done, self._partial = self._partial.split("\n")
        self.lines.extend(line.rstrip() for line in done)

    def reason(self) -> str:
        errors = [line.split(": ", 1)[-1] for line in self.lines if _ERROR.search(line)]
        return "; ".join(dict.fromkeys(errors))[:400]

    def result(self, model_bytes: int, seconds: float) -> DryRun:
        compute: dict[str, int] = {}
        output: dict[str, int] = {}
        kv: int | None = None
        kept: list[str] = []
        for line in self.lines:
            if m := _COMPUTE.search(line):
                compute[m[1]] = max(compute.get(m[1], 0), _parse_mib(m[2]))  # a re-reserve replaces
            elif m := _OUTPUT.search(line):
                output[m[1]] = _parse_mib(m[2])
            elif m := _KV.search(line):
                kv = (kv or 0) + _parse_mib(m[1])  # one line per cache (two for sliding-window models)
            elif "model buffer size" not in line:
                continue
            kept.append(line.strip())
        return DryRun(model_bytes, compute, seconds, tuple(kept), output, kv)


def _parse_mib(text: str) -> int:
    return int(round(float(text) * MiB))
