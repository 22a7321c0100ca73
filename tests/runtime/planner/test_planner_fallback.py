"""The fallback after a real load runs out of memory: the order of smaller plans, their words,
what counts as a memory failure, and one real retry under an address-space limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from app.runtime.library import ModelInfo
from app.runtime.planner import Plan, UserPrefs, load_profile, plan
from app.runtime.planner.fallback import (
    apply_memory_limit,
    describe,
    is_memory_failure,
    load_with_fallback,
    memory_limit_from_env,
    smaller_plans,
)
from app.runtime.protocol import ErrorKind, RuntimeFailure

MiB = 1 << 20
NO_CONTEXT = ValueError("Failed to create llama_context")


def key(p: Plan) -> tuple[int, str, int]:
    return (p.gpu_layers.value["n_gpu_layers"], p.kv_type.value, p.context_length.value)


@pytest.fixture
def llama8b(models):
    name, q = "Llama-3-8B", "Q4_K_M"
    return models.info(name, q), models.shape(name, q)


def test_layers_go_first_then_the_cache_then_the_context(llama8b):
    info, shape = llama8b
    hw = load_profile("rtx3060-12gb")
    first = plan(info, hw, shape=shape)
    assert key(first) == (33, "f16", 8192)  # the whole model on the GPU at its trained context

    steps = list(smaller_plans(first, info, hw, shape=shape))
    assert [key(p) for p, _ in steps][:4] == [(25, "f16", 8192), (25, "q8_0", 8192), (25, "q8_0", 4096), (25, "q8_0", 2048)]
    assert steps[0][1] == "25 of 32 layers on the GPU instead of 32"
    assert steps[1][1] == "25 of 32 layers on the GPU instead of 32 and a q8_0 KV cache instead of f16"
    assert steps[2][1] == "25 of 32 layers on the GPU instead of 32, a q8_0 KV cache instead of f16 and a 4,096-token context instead of 8,192"
    contexts = [p.context_length.value for p, _ in steps]
    assert contexts == sorted(contexts, reverse=True) and contexts[-1] == 512
    gpu = [next(d for d in p.memory.value["devices"] if d["device"] == "gpu0")["total"] for p in [first] + [p for p, _ in steps]]
    assert gpu == sorted(gpu, reverse=True) and len(set(gpu)) == len(gpu)  # each step frees VRAM

    # what moved is Hearth's choice, with the reason; what did not move keeps its first reason
    layers = steps[0][0].gpu_layers
    assert not layers.overridden and layers.reason.startswith("Lowered after llama.cpp ran out of memory with a 8,192-token context")
    assert steps[0][0].context_length == first.context_length
    assert steps[1][0].flash_attention.value is True and not steps[1][0].kv_type.overridden
    assert steps[2][0].kv_type.reason.startswith("Lowered")


def test_a_cpu_machine_starts_with_the_cache(smollm2: ModelInfo):
    hw = load_profile("cpu-16gb")
    first = plan(smollm2, hw)
    (p, words), *_ = smaller_plans(first, smollm2, hw)
    assert key(p) == (0, "q8_0", 8192) and words == "a q8_0 KV cache instead of f16"


def test_pins_are_never_lowered(smollm2: ModelInfo, llama8b):
    hw = load_profile("cpu-16gb")
    pinned = UserPrefs(kv_type="f16", context_length=2048)
    assert list(smaller_plans(plan(smollm2, hw, pinned), smollm2, hw, pinned)) == []

    no_flash = UserPrefs(flash_attention=False)  # no q8_0 without flash attention: the context goes
    (p, words), *_ = smaller_plans(plan(smollm2, hw, no_flash), smollm2, hw, no_flash)
    assert key(p) == (0, "f16", 4096) and words == "a 4,096-token context instead of 8,192"
    assert p.flash_attention.overridden and p.flash_attention.value is False

    info, shape = llama8b
    gpu, layers = load_profile("rtx3060-12gb"), UserPrefs(gpu_layers=20)
    (p, _), *_ = smaller_plans(plan(info, gpu, layers, shape=shape), info, gpu, layers, shape=shape)
    assert key(p) == (20, "q8_0", 8192) and p.gpu_layers.overridden


class Loader:
    """Stands in for ``llama_cpp.Llama``: fails the first ``failures`` loads with the given errors."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.plans: list[Plan] = []

    def __call__(self, p: Plan) -> str:
        self.plans.append(p)
        if self.errors:
            raise self.errors.pop(0)
        return "loaded"


def test_a_memory_failure_is_retried_once_with_the_next_smaller_plan(smollm2: ModelInfo):
    hw = load_profile("cpu-16gb")
    first = plan(smollm2, hw)
    load = Loader(NO_CONTEXT)
    result, used, changes = load_with_fallback(load, first, smollm2, hw)
    assert result == "loaded" and key(used) == (0, "q8_0", 8192) and load.plans == [first, used]
    assert changes == [
        f"{smollm2.name} did not fit in memory with a 8,192-token context, an f16 KV cache and everything on the CPU "
        "(ValueError: Failed to create llama_context), so Hearth loaded it with a q8_0 KV cache instead of f16. "
        "Close other programs and reload it to get the first plan back."
    ]
    assert load_with_fallback(Loader(), first, smollm2, hw) == ("loaded", first, [])


def test_two_memory_failures_give_out_of_memory_in_words(smollm2: ModelInfo):
    hw = load_profile("cpu-16gb")
    first = plan(smollm2, hw)
    load = Loader(MemoryError("Unable to allocate 96.0 MiB"), NO_CONTEXT)
    with pytest.raises(RuntimeFailure) as caught:
        load_with_fallback(load, first, smollm2, hw)
    assert caught.value.kind is ErrorKind.OUT_OF_MEMORY and len(load.plans) == 2
    assert "nor with a q8_0 KV cache instead of f16 (ValueError: Failed to create llama_context)" in caught.value.message
    assert "Close other programs" in caught.value.message

    pinned = UserPrefs(kv_type="f16", context_length=2048)
    with pytest.raises(RuntimeFailure) as caught:
        load_with_fallback(Loader(NO_CONTEXT), plan(smollm2, hw, pinned), smollm2, hw, pinned)
    assert "while you have pinned context length (2,048), KV cache type (f16): unpin them" in caught.value.message


def test_other_failures_are_not_retried(smollm2: ModelInfo):
    hw = load_profile("cpu-16gb")
    first = plan(smollm2, hw)
    bad = RuntimeFailure(ErrorKind.INVALID_PARAMS, "no")
    load = Loader(bad)
    with pytest.raises(RuntimeFailure) as caught:
        load_with_fallback(load, first, smollm2, hw)
    assert caught.value is bad and len(load.plans) == 1


def test_a_failed_model_load_asks_the_file_check_first(smollm2: ModelInfo):
    hw = load_profile("cpu-16gb")
    first = plan(smollm2, hw)
    damaged = RuntimeFailure(ErrorKind.MODEL_INVALID, "damaged")

    def check(_: ModelInfo) -> None:
        raise damaged

    wrapped = RuntimeFailure(ErrorKind.LOAD_FAILED, "llama.cpp could not load it")
    wrapped.__cause__ = ValueError("Failed to load model from file: x.gguf")  # as the llama.cpp backend raises it
    with pytest.raises(RuntimeFailure) as caught:
        load_with_fallback(Loader(wrapped), first, smollm2, hw, check_file=check)
    assert caught.value is damaged
    assert is_memory_failure(wrapped, smollm2, check_file=lambda _m: None)  # a sound file: memory it was
    assert not is_memory_failure(ValueError("something else"), smollm2)


def test_the_real_file_check_passes_the_real_model(smollm2: ModelInfo):
    assert is_memory_failure(ValueError("Failed to load model from file: x"), smollm2)  # a dry run in a child


def test_describe_and_the_memory_limit_helpers(smollm2: ModelInfo):
    assert describe(plan(smollm2, load_profile("cpu-16gb"))) == "a 8,192-token context, an f16 KV cache and everything on the CPU"
    assert memory_limit_from_env({}) is None
    assert memory_limit_from_env({"HEARTH_MEMORY_LIMIT": "4000000000"}) == 4_000_000_000
    with pytest.raises(RuntimeFailure):
        memory_limit_from_env({"HEARTH_MEMORY_LIMIT": "4 GB"})
    with pytest.raises(RuntimeFailure) as caught:
        apply_memory_limit(1 * MiB)  # below what this process already maps: refused, nothing set
    assert caught.value.kind is ErrorKind.INVALID_PARAMS


# One child process per run: it plans SmolLM2 at 8,192 tokens (f16 KV, flash attention pinned off so
# that the context is what must give), limits its own address space, and loads with llama_cpp.Llama.
CHILD = r"""
import json, sys
import llama_cpp
from app.runtime.library import ModelInfo
from app.runtime.planner import UserPrefs, llama_cpp_kwargs, load_profile, plan
from app.runtime.planner.fallback import apply_memory_limit, load_with_fallback, smaller_plans

def virtual():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

mode, extra, model = sys.argv[1], int(sys.argv[2]), ModelInfo.from_dict(json.loads(sys.argv[3]))
hw = load_profile("cpu-16gb")
prefs = UserPrefs(use_mmap=False, threads=2, batch_size=512, flash_attention=False)  # no file mapping in RLIMIT_AS
first = plan(model, hw, prefs)

def load(p):
    return llama_cpp.Llama(model.path, verbose=False, **llama_cpp_kwargs(p))

base = virtual()
if mode == "measure":  # what the smaller plan takes, with no limit
    smaller, _ = next(smaller_plans(first, model, hw, prefs))
    llm = load(smaller)
    print(json.dumps({"grew": virtual() - base, "n_ctx": llm.n_ctx()}))
else:
    apply_memory_limit(base + extra)
    llm, used, changes = load_with_fallback(load, first, model, hw, prefs)
    print(json.dumps({"first_ctx": first.context_length.value, "n_ctx": llm.n_ctx(), "plan_ctx": used.context_length.value, "changes": changes}))
"""


def run_child(mode: str, extra: int, model: ModelInfo) -> dict:
    # one malloc arena: glibc otherwise reserves 64 MiB of address space per thread, unpredictably
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(extra), json.dumps(model.to_dict())],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_a_real_load_under_a_memory_limit_falls_back_to_a_shorter_context(smollm2: ModelInfo):
    small = run_child("measure", 0, smollm2)
    assert small["n_ctx"] == 4096
    # Measured here: the 4,096-token plan grows the address space by about 447 MiB, the 8,192-token
    # one by 612 MiB (92 weights + 180 KV + 166 compute + 96 logits + threads and heap); between
    # 450 and 490 MiB llama.cpp's context creation fails cleanly for 8,192 tokens.
    result = run_child("limit", small["grew"] + 24 * MiB, smollm2)
    assert result["first_ctx"] == 8192
    assert result["n_ctx"] == result["plan_ctx"] == 4096
    (change,) = result["changes"]
    assert "did not fit in memory with a 8,192-token context" in change
    assert "(ValueError: Failed to create llama_context)" in change or "(MemoryError: " in change  # a real failure, named
    assert "so Hearth loaded it with a 4,096-token context instead of 8,192" in change
