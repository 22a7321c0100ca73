"""``auto`` looks in the library for a draft model (issue 18, parts 2 and 3), on the real model:
with SmolLM2 alone it finds none and stays prompt lookup, saying why; with an F16 copy of SmolLM2
as the target, the Q4_1 file is considered as its draft and the decision is the planner's from the
same numbers; forced on, the greedy reply is plain decoding's; and on a hardware profile where the
F16 target is mostly on the CPU, taking the draft reloads the target with fewer GPU layers
(Dovetail's split: llama.cpp's CPU build ignores n_gpu_layers, so the plan and the settings the
reload used are what is checked), until the draft is dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.runtime import planner
from app.runtime.backends.llama_cpp import LlamaCppBackend
from app.runtime.hardware import Hardware
from app.runtime.jobs import JobContext
from app.runtime.library import ModelInfo, read_gguf
from app.runtime.measurements import VERIFY_COST, Machine, MemoryMeasurementStore
from app.runtime.planner import speculation as plan
from app.runtime.planner.speculation import VerifyCurve
from app.runtime.chat_params import ChatParams
from app.runtime.protocol import Sampling
from app.runtime.services.engine import EngineService
from app.runtime.spec import costs
from app.runtime.spec.setup import Speculators, cost_key

TEXT = ("The keeper climbed the stairs at dusk with a brass lantern and a notebook, and wrote down the colour of the sea, "
        "the wind, and the names of the ships.")
COPY = [{"role": "user", "content": "Copy this sentence exactly:\n\n" + TEXT}]
GREEDY = Sampling(temperature=0.0, max_tokens=16)
FORCED = {"acceptance": {"draft": 1.0, "lookup": 0.0}, "cost": 0.01}  # the draft wins on any measured curve
CHEAP = VerifyCurve({1: 1.0, 2: 1.05, 4: 1.1, 8: 1.2})


@pytest.fixture(scope="module")
def q41(model_path: Path) -> ModelInfo:
    return read_gguf(model_path, source="embedded", model_id="smollm2-q4_1")


@pytest.fixture(scope="module")
def f16(requantized: Any) -> ModelInfo:
    return read_gguf(requantized("F16"), source="folder", model_id="smollm2-f16")


def _store() -> MemoryMeasurementStore:
    return MemoryMeasurementStore(Machine("test", 2, 1))


def _chat_params(speculate: str, max_tokens: int = 12) -> ChatParams:
    return ChatParams.from_dict({"messages": COPY, "sampling": {"temperature": 0.0, "max_tokens": max_tokens}, "speculate": speculate})


# ---- SmolLM2 alone: no smaller model, auto stays lookup ------------------------------------------


def test_auto_with_only_smollm2_in_the_library_stays_prompt_lookup_and_says_why(q41: ModelInfo, hardware_here: Hardware) -> None:
    scans: list[int] = []

    def models() -> list[ModelInfo]:
        scans.append(1)
        return [q41]

    engine = EngineService(models=models, hardware=lambda: hardware_here, default_prefs=lambda: {"threads": 2, "kv_type": "f16"},
                           measurements=_store())
    try:
        first = engine.chat(_chat_params("auto", 4), JobContext.detached())
        again = engine.chat(_chat_params("auto", 4), JobContext.detached())
    finally:
        engine.close()
    for result in (first, again):
        decided = result.speculation["plan"]
        assert decided["drafter"] in ("lookup", None)  # lookup, or off where this machine's verify cost says it cannot pay
        assert "no draft model: no library model shares this model's vocabulary at most 50% of its size" in decided["reason"]
        assert "auto_draft" not in decided
    assert len(scans) == 2  # one for the chat's own model lookup, one for auto's draft search: not one per reply
    assert engine._speculators._vocab == {}  # the only model is the target itself: no vocabulary was read


# ---- an F16 target with the Q4_1 file in the library -----------------------------------------------


@pytest.fixture(scope="module")
def target(f16: ModelInfo) -> Iterator[LlamaCppBackend]:
    loaded = LlamaCppBackend(f16.path, {"n_ctx": 512, "n_threads": 2, "n_threads_batch": 2, "flash_attn": True, "n_gpu_layers": 0})
    yield loaded
    loaded.close()


def _reply(backend: LlamaCppBackend, drafter: Any = None) -> Any:
    return backend.chat(COPY, GREEDY, on_token=lambda _: None, is_cancelled=lambda: False, drafter=drafter)


def test_auto_considers_the_smaller_file_and_decides_as_the_planner_predicts(q41: ModelInfo, f16: ModelInfo, target: LlamaCppBackend) -> None:
    store = _store()
    assert cost_key(f16.path, 0, 2) == costs.curve_key(target._llm)  # the engine reads the measured curve by this key
    # a memory-bound target's curve (test_spec_decoding measures a real one; here the decision's inputs matter)
    store.put(VERIFY_COST, CHEAP.to_dict(), key=cost_key(f16.path, 0, 2))
    curve = Speculators(store).stored_curve(f16.path, 0, 2)
    assert curve == CHEAP
    speculators = Speculators(store)
    try:
        assert speculators.candidates(f16, [q41, f16]) == [q41]
        assert speculators.candidates(q41, [q41, f16]) == []  # the bigger file never drafts for the smaller
        pick = speculators.pick("auto", target=f16, models=[q41, f16], curve=curve, threads=2)
        assert pick is not None and pick.auto is not None
        expected = plan.choose_draft([plan.DraftOption(q41.id, q41.file_size / f16.file_size, "estimate")], curve=curve)
        assert pick.auto == expected and (pick.info == q41) == (expected.draft is not None)
        result = _reply(target, speculators.drafter("auto", backend="llama.cpp", target=f16, pick=pick, n_ctx=512, threads=2))
        decided = result.speculation["plan"]
        assert f"draft model {q41.id} considered" in decided["reason"] and decided["auto_draft"]["considered"]["source"] == "estimate"
        assert decided["drafter"] == (f"draft:{q41.id}" if expected.draft else decided["drafter"])
        if expected.draft is None:
            assert decided["drafter"] in ("lookup", None) and "not used" in decided["reason"]
    finally:
        speculators.close()


def test_a_draft_forced_on_gives_plain_decodings_greedy_reply(q41: ModelInfo, f16: ModelInfo, target: LlamaCppBackend) -> None:
    plain = _reply(target)
    speculators = Speculators(_store())
    speculators.overrides = FORCED
    try:
        drafter = speculators.drafter("auto", backend="llama.cpp", target=f16, models=[q41, f16], curve=CHEAP, n_ctx=512, threads=2)
        drafter.fixed_k = 3  # guess every step, whatever this machine's verify cost says about k
        result = _reply(target, drafter)
    finally:
        speculators.close()
    spec = result.speculation
    assert result.text == plain.text and result.completion_tokens == plain.completion_tokens
    assert spec["plan"]["drafter"] == f"draft:{q41.id}" and spec["plan"]["auto_draft"]["used"]
    assert spec["drafted"] > 0 and spec["accepted"] > 0
    assert speculators.store.get("draft_cost", cost_key(q41.path, 0, 2))["seconds_per_token"] > 0  # auto's next estimate is measured


# ---- Dovetail: the target gives up GPU layers for its draft ------------------------------------------


def _small_gpu() -> Hardware:
    """The GTX 1650 profile with 336 MiB of its GPU left to Hearth (after the planner's 1 GiB margin):
    the F16 SmolLM2 at an 8k context (f16 KV: llama.cpp's CPU build spends seconds on a q8 KV cache's
    first reply) then has 14 of its 30 layers there, mostly on the CPU, and its Q4_1 draft (98 MiB)
    fits only if the target gives up some of them."""
    base = planner.load_profile("gtx1650-4gb")
    return dataclasses.replace(base, gpus=(dataclasses.replace(base.gpus[0], vram_free=2**30 + 336 * 2**20),))


def test_the_engine_turns_a_placement_into_the_reload_prefs() -> None:
    split = plan.DraftPlacement("gpu", -1, 3, "Dovetail split")
    assert EngineService._dovetail_prefs(split, planner.UserPrefs(context_length=8192)) == planner.UserPrefs(context_length=8192, gpu_layers=3)
    assert EngineService._dovetail_prefs(split, planner.UserPrefs(gpu_layers=10)) is None  # the person's pin wins
    assert EngineService._dovetail_prefs(plan.DraftPlacement("gpu", -1, None, "fits"), planner.UserPrefs()) is None


def test_taking_a_draft_reloads_a_mostly_cpu_target_with_fewer_gpu_layers_until_the_draft_is_dropped(q41: ModelInfo, f16: ModelInfo) -> None:
    store = _store()
    engine = EngineService(models=lambda: [q41, f16], hardware=_small_gpu, default_prefs=lambda: {"threads": 2, "context_length": 8192, "kv_type": "f16"},
                           measurements=store)
    engine._speculators.overrides = FORCED
    try:
        plain = engine.chat(dataclasses.replace(_chat_params("off"), model=f16.id), JobContext.detached())
        before = engine._plan
        assert before is not None and 0 < before.gpu_layers.value["n_gpu_layers"] < before.gpu_layers.value["n_layers"] / 2
        placement = plan.place_draft(before, q41.file_size)
        assert placement.device == "gpu" and placement.target_gpu_layers is not None and placement.target_gpu_layers > 0
        # the verify cost of the target as loaded and as split, as the first auto replies would have measured them
        for layers in (before.gpu_layers.value["n_gpu_layers"], placement.target_gpu_layers):
            store.put(VERIFY_COST, CHEAP.to_dict(), key=cost_key(f16.path, layers, 2))
        drafted = engine.chat(_chat_params("auto"), JobContext.detached())
        after, backend = engine._plan, engine._backend
        assert after is not None and backend is not None
        gave = before.gpu_layers.value["n_gpu_layers"] - placement.target_gpu_layers
        assert after.gpu_layers.value["n_gpu_layers"] == placement.target_gpu_layers and after.gpu_layers.value["given_to_draft"] == gave
        assert backend.settings == planner.llama_cpp_kwargs(after) and backend.settings["n_gpu_layers"] == placement.target_gpu_layers
        assert f"gave up {gave} GPU layer(s)" in after.gpu_layers.reason and f"({gave} given to the draft model)" in planner.summary(after)
        decided = drafted.speculation["plan"]
        assert decided["drafter"] == f"draft:{q41.id}" and f"gave up {gave} GPU layer(s) to it (Dovetail split)" in decided["reason"]
        assert decided["placement"]["target_gpu_layers"] == placement.target_gpu_layers
        assert drafted.text == plain.text  # greedy: what plain decoding wrote
        draft = engine._speculators._draft
        engine.chat(_chat_params("auto", 2), JobContext.detached())  # the next reply keeps the split and the draft
        assert engine._backend is backend and engine._speculators._draft is draft and engine._plan.gpu_layers.value["given_to_draft"] == gave
        engine.chat(_chat_params("off", 2), JobContext.detached())  # the draft is dropped: the target takes its layers back
        restored = engine._plan
        assert restored is not None and restored.gpu_layers.value["n_gpu_layers"] == before.gpu_layers.value["n_gpu_layers"]
        assert "given_to_draft" not in restored.gpu_layers.value and engine._backend.settings == planner.llama_cpp_kwargs(before)
    finally:
        engine.close()
