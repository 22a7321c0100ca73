"""When a real load still runs out of memory: one retry with the next smaller plan, and why.

The plan and its dry run are estimates of what llama.cpp will allocate; what the machine has free
can change between planning and loading (another program starts, the GPU driver holds more). So a
load that fails *for memory* is retried once with the next smaller plan, and the person is told
what changed. The order follows what each step costs: fewer GPU layers first (speed, not quality),
then a q8_0 KV cache (half the cache, negligible quality loss), then a shorter context (the model
forgets sooner). A setting the person pinned is never changed; the final error says which pins
stopped Hearth from going smaller.

Linux's OOM killer ends a process rather than failing an allocation, so a failure is only observable
under a limit: :func:`apply_memory_limit` sets RLIMIT_AS (``HEARTH_MEMORY_LIMIT``, in bytes) at worker
start. RLIMIT_AS counts address space, not resident memory: mappings of the model file, thread
stacks and glibc's 64 MiB per-thread malloc arenas all count, so leave headroom (or set
``MALLOC_ARENA_MAX``). Near the limit llama.cpp can also abort instead of failing cleanly (a small
``ggml_init`` allocation is asserted, not checked), which is one more reason to load in the worker.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

from app.runtime.hardware import Hardware
from app.runtime.library import ModelInfo
from app.runtime.planner import fitting, memory, quant
from app.runtime.planner.fitting import CONTEXT_STEPS
from app.runtime.planner.memory import fmt_bytes
from app.runtime.planner.policy import DEFAULT_CALIBRATION, choose_flash_attention
from app.runtime.planner.policy import plan as make_plan
from app.runtime.planner.schema import Choice, Plan, UserPrefs
from app.runtime.planner.shape import ModelShape
from app.runtime.planner.speed import Calibration
from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

T = TypeVar("T")
MEMORY_LIMIT_ENV = "HEARTH_MEMORY_LIMIT"
LAYER_STEP = 0.25  # share of the GPU layers moved to the CPU: one layer rarely frees enough
_LLAMA_MEMORY_WORDS = ("Failed to create llama_context",)  # llama-cpp-python's ValueError texts
_LLAMA_LOAD_WORDS = ("Failed to load model from file",)


def smaller_plans(
    plan: Plan,
    model: ModelInfo,
    hw: Hardware,
    prefs: UserPrefs | None = None,
    *,
    shape: ModelShape | None = None,
    calibration: Calibration = DEFAULT_CALIBRATION,
) -> Iterator[tuple[Plan, str]]:
    """Plans each smaller than the one before, with what changed from ``plan`` in words.

    Pure: each candidate is ``plan()`` again with the first plan's choices pinned and one of them
    lowered, so its memory figures and reasons are the planner's own. A candidate the planner
    refuses (moving layers to a RAM that cannot hold them) is skipped.
    """
    prefs = prefs or UserPrefs()
    current = plan
    pins = _pins(plan, prefs)

    def attempt(**change: object) -> Plan | None:
        try:
            candidate = make_plan(model, hw, dataclasses.replace(pins, **change), shape=shape, calibration=calibration)
        except RuntimeFailure as exc:
            log.info("fallback candidate %s refused by the planner: %s", change, exc.message)
            return None
        return _relabel(candidate, plan, prefs, shape or ModelShape.estimate(model))

    gpu = current.gpu_layers.value["n_gpu_layers"]
    if gpu > 0 and prefs.gpu_layers is None:
        fewer = max(gpu - max(1, round(gpu * LAYER_STEP)), 0)
        found = attempt(gpu_layers=fewer)
        if found is not None:
            current, pins = found, dataclasses.replace(pins, gpu_layers=fewer)
            yield current, _changes(plan, current)
    if _can_quantize_kv(current, model, hw, prefs, shape):
        found = attempt(kv_type="q8_0", flash_attention=True)
        if found is not None:
            current, pins = found, dataclasses.replace(pins, kv_type="q8_0", flash_attention=True)
            yield current, _changes(plan, current)
    if prefs.context_length is None:
        ctx = current.context_length.value
        for step in sorted((c for c in CONTEXT_STEPS if c <= ctx // 2), reverse=True):
            found = attempt(context_length=step)
            if found is not None:
                current, pins = found, dataclasses.replace(pins, context_length=step)
                yield current, _changes(plan, current)


def load_with_fallback(
    load: Callable[[Plan], T],
    plan: Plan,
    model: ModelInfo,
    hw: Hardware,
    prefs: UserPrefs | None = None,
    *,
    shape: ModelShape | None = None,
    calibration: Calibration = DEFAULT_CALIBRATION,
    check_file: Callable[[ModelInfo], object] | None = None,
) -> tuple[T, Plan, list[str]]:
    """``load(plan)``; if it fails for memory, ``load`` the next smaller plan once.

    Returns (what ``load`` returned, the plan it succeeded with, what changed in words: empty when
    the first plan loaded). ``check_file``: how to tell a damaged file from a failed allocation when
    llama.cpp says only "Failed to load model from file"; by default a dry run, which reads every
    tensor's place in the file without allocating them and raises MODEL_INVALID for a bad file.
    Raises RuntimeFailure(OUT_OF_MEMORY) when the smaller plan fails for memory too.
    """
    prefs = prefs or UserPrefs()
    try:
        return load(plan), plan, []
    except (MemoryError, ValueError, RuntimeFailure) as exc:
        if not is_memory_failure(exc, model, check_file=check_file):
            raise
        first = _failure_words(exc)
    gc.collect()  # the failed load's half-built objects (a loaded model, say) go before the retry
    log.warning("loading %s with %s failed for memory: %s", model.name, describe(plan), first)
    candidate = next(smaller_plans(plan, model, hw, prefs, shape=shape, calibration=calibration), None)
    if candidate is None:
        raise RuntimeFailure(
            ErrorKind.OUT_OF_MEMORY,
            f"{model.name} does not fit in the memory free now: llama.cpp could not allocate its buffers with "
            f"{describe(plan)} ({first}), and Hearth has no smaller plan to try{_pinned_words(prefs)}. Close other "
            f"programs and try again, or choose a smaller quantization of the model.",
        )
    smaller, change = candidate
    try:
        loaded = load(smaller)
    except (MemoryError, ValueError, RuntimeFailure) as exc:
        if not is_memory_failure(exc, model, check_file=lambda _m: None):
            raise
        second = _failure_words(exc)
    else:
        return loaded, smaller, [
            f"{model.name} did not fit in memory with {describe(plan)} ({first}), so Hearth loaded it with {change}. "
            f"Close other programs and reload it to get the first plan back."
        ]
    gc.collect()
    raise RuntimeFailure(
        ErrorKind.OUT_OF_MEMORY,
        f"{model.name} does not fit in the memory free now: llama.cpp could not allocate its buffers with "
        f"{describe(plan)} ({first}), nor with {change} ({second}). Close other programs and try again, or "
        f"choose a smaller quantization of the model or a shorter context in Settings.",
        detail=f"planned: {plan.memory.reason}",
    )


def is_memory_failure(exc: BaseException, model: ModelInfo, *, check_file: Callable[[ModelInfo], object] | None = None) -> bool:
    """Whether a failed load ran out of memory, as opposed to a bad file or bad settings.

    MemoryError (numpy's arrays in ``llama_cpp.Llama``), OUT_OF_MEMORY, and llama.cpp failing to
    create a context (its KV cache and compute buffers) are memory. "Failed to load model from
    file" is either a failed weight allocation or a damaged file: ``check_file`` decides, raising
    for a damaged one (that error then propagates: it says what is wrong better than this one).
    """
    for e in _chain(exc):
        if isinstance(e, MemoryError) or (isinstance(e, RuntimeFailure) and e.kind is ErrorKind.OUT_OF_MEMORY):
            return True
        if isinstance(e, ValueError) and any(w in str(e) for w in _LLAMA_MEMORY_WORDS):
            return True
        if isinstance(e, ValueError) and any(w in str(e) for w in _LLAMA_LOAD_WORDS):
            (check_file or _dry_run_check)(model)
            return True
    return False


def apply_memory_limit(limit_bytes: int) -> None:
    """Cap this process's address space (RLIMIT_AS, soft limit) at ``limit_bytes``, so that an
    allocation past it fails where the load can see it, instead of the OOM killer ending us."""
    try:
        import resource
    except ImportError:  # Windows: no rlimits; the job-object equivalent is not wired up
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, "A memory limit needs a POSIX system (RLIMIT_AS).") from None
    used = _virtual_size()
    if limit_bytes <= used:
        raise RuntimeFailure(
            ErrorKind.INVALID_PARAMS,
            f"A memory limit of {fmt_bytes(limit_bytes)} is below the {fmt_bytes(used)} of address space this process "
            f"already uses; raise {MEMORY_LIMIT_ENV}.",
        )
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and limit_bytes > hard:
        limit_bytes = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, hard))
    log.info("address space limited to %s (%s)", fmt_bytes(limit_bytes), MEMORY_LIMIT_ENV)


def memory_limit_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """``HEARTH_MEMORY_LIMIT`` in bytes, or None when unset; a bad value is INVALID_PARAMS."""
    raw = (os.environ if env is None else env).get(MEMORY_LIMIT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{MEMORY_LIMIT_ENV} must be a number of bytes, not {raw!r}.")
    return int(raw)


def describe(p: Plan) -> str:
    """E.g. "a 8,192-token context, an f16 KV cache and everything on the CPU"."""
    layers = p.gpu_layers.value
    if layers["n_gpu_layers"] == 0:
        where = "everything on the CPU"
    elif layers["output_on_gpu"]:
        where = f"all {layers['n_layers']} layers on the GPU"
    else:
        where = f"{layers['repeating']} of {layers['n_layers']} layers on the GPU"
    return f"a {p.context_length.value:,}-token context, an {p.kv_type.value} KV cache and {where}"


# ---- helpers ------------------------------------------------------------------------------------

# the plan's choices the fallback may lower (UserPrefs has a field of the same name), as a person reads them
_PINNABLE = {"gpu_layers": "GPU layers", "context_length": "context length", "kv_type": "KV cache type", "flash_attention": "flash attention"}


def _pins(p: Plan, prefs: UserPrefs) -> UserPrefs:
    """The person's preferences with the plan's own choices pinned, so a re-plan moves only what
    the fallback lowers."""
    return dataclasses.replace(
        prefs,
        gpu_layers=p.gpu_layers.value["n_gpu_layers"],
        context_length=p.context_length.value,
        kv_type=p.kv_type.value,
        flash_attention=p.flash_attention.value,
    )


def _relabel(new: Plan, first: Plan, prefs: UserPrefs, shape: ModelShape) -> Plan:
    """Pins the fallback set are not the person's: say why each moved, keep the rest's reasons."""
    updates: dict[str, Choice] = {}
    for name in _PINNABLE:
        if getattr(prefs, name) is not None:
            continue
        old, now = getattr(first, name), getattr(new, name)
        if now.value == old.value:
            updates[name] = old
        else:
            updates[name] = Choice(now.value, f"Lowered after llama.cpp ran out of memory with {describe(first)}.")
    if "kv_type" in updates and new.context_length.value != first.context_length.value and new.kv_type.value == first.kv_type.value:
        size = fmt_bytes(memory.kv_bytes(shape, new.context_length.value, new.kv_type.value))
        updates["kv_type"] = Choice(new.kv_type.value, f"{new.kv_type.value} ({size} at {new.context_length.value:,} tokens), as first planned.")
    if "flash_attention" in updates and new.flash_attention.value and not first.flash_attention.value:
        updates["flash_attention"] = Choice(True, "On: the q8_0 KV cache Hearth fell back to needs it.")
    return dataclasses.replace(new, **updates)


def _can_quantize_kv(p: Plan, model: ModelInfo, hw: Hardware, prefs: UserPrefs, shape: ModelShape | None) -> bool:
    if prefs.kv_type is not None or prefs.flash_attention is False or quant.kv_is_quantized(p.kv_type.value):
        return False
    shape = shape or ModelShape.estimate(model)
    # flash attention must be possible here: an old GPU or an unsupported head size rules it out
    flash_ok = bool(choose_flash_attention(shape, hw, UserPrefs()).value)
    return flash_ok and fitting.quantized_kv_ok(shape, "q8_0")


def _changes(first: Plan, now: Plan) -> str:
    words = []
    a, b = first.gpu_layers.value, now.gpu_layers.value
    if a["n_gpu_layers"] != b["n_gpu_layers"]:
        words.append(f"{b['repeating']} of {b['n_layers']} layers on the GPU instead of {a['repeating']}")
    if first.kv_type.value != now.kv_type.value:
        words.append(f"a {now.kv_type.value} KV cache instead of {first.kv_type.value}")
    if first.context_length.value != now.context_length.value:
        words.append(f"a {now.context_length.value:,}-token context instead of {first.context_length.value:,}")
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _pinned_words(prefs: UserPrefs) -> str:
    values = {name: getattr(prefs, name) for name in _PINNABLE}
    shown = {n: ("on" if v else "off") if isinstance(v, bool) else f"{v:,}" if isinstance(v, int) else v for n, v in values.items()}
    pinned = [f"{label} ({shown[name]})" for name, label in _PINNABLE.items() if values[name] is not None]
    return f" while you have pinned {', '.join(pinned)}: unpin them in Settings and Hearth can go smaller" if pinned else ""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _failure_words(exc: BaseException) -> str:
    for e in _chain(exc):
        if isinstance(e, (MemoryError, ValueError)) and str(e):
            return f"{type(e).__name__}: {str(e)[:200]}"
    return str(exc)[:200] or type(exc).__name__


def _dry_run_check(model: ModelInfo) -> None:
    from app.runtime.planner.dryrun import dry_run

    dry_run(model.path, {"n_ctx": 512, "n_gpu_layers": 0})


def _virtual_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process().memory_info().vms)
