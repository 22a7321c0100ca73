"""Speculative decoding on the real model: greedy replies identical with and without it in every
mode (prompt lookup, a draft model: SmolLM2 as its own draft, which shares its vocabulary), stop
strings and cancel inside verified batches, the verify-cost curve measured once into the store,
and a draft model with another vocabulary refused with the reason.

Flash attention is on, as the planner chooses it for this model: llama.cpp's CPU build then gives
bitwise the same logits for a token alone or in a batch (see tests/runtime/test_llama_loop.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.runtime.backends.llama_cpp import LlamaCppBackend
from app.runtime.library import read_gguf
from app.runtime.measurements import Machine, MemoryMeasurementStore
from app.runtime.planner.speculation import VerifyCurve
from app.runtime.protocol import RuntimeFailure, Sampling
from app.runtime.spec import costs
from app.runtime.spec.adaptive import AdaptiveDrafter
from app.runtime.spec.lookup import PromptLookup
from app.runtime.spec.setup import Speculators

TEXT = ("The keeper climbed the stairs at dusk with a brass lantern and a notebook, and wrote down the colour of the sea, "
        "the wind, and the names of the ships.")
COPY = [{"role": "user", "content": "Copy this sentence exactly:\n\n" + TEXT}]
GREEDY = Sampling(temperature=0.0, max_tokens=24)
CHEAP = VerifyCurve({1: 1.0, 2: 1.05, 4: 1.1, 8: 1.2})  # so that auto guesses here whatever the machine's load


@pytest.fixture(scope="module")
def backend(model_path: Path) -> Iterator[LlamaCppBackend]:
    loaded = LlamaCppBackend(model_path, {"n_ctx": 512, "n_threads": 2, "n_threads_batch": 2, "flash_attn": True})
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def speculators() -> Iterator[Speculators]:
    owned = Speculators(MemoryMeasurementStore(Machine("test", 2, 1)))
    yield owned
    owned.close()


def _chat(backend: LlamaCppBackend, drafter: Any = None, *, messages: list[dict[str, str]] = COPY, sampling: Sampling = GREEDY,
          cancel_after: int | None = None) -> tuple[Any, list[int]]:
    pieces: list[str] = []
    cancelled = (lambda: len(pieces) >= cancel_after) if cancel_after is not None else (lambda: False)
    result = backend.chat(messages, sampling, on_token=pieces.append, is_cancelled=cancelled, drafter=drafter)
    assert "".join(pieces) == result.text  # what was streamed is the reply
    return result, backend.held_tokens()


@pytest.fixture(scope="module")
def plain(backend: LlamaCppBackend) -> tuple[Any, list[int]]:
    return _chat(backend)


def _drafters(model_path: Path, speculators: Speculators) -> dict[str, Any]:
    me = read_gguf(model_path, source="embedded")
    draft = speculators.drafter(f"draft:{model_path}", backend="llama.cpp", target=me, n_ctx=512, threads=2)
    draft.fixed_k = 3
    return {
        "lookup": AdaptiveDrafter(PromptLookup(), mode="lookup", kind="lookup", fixed_k=5),
        "auto": AdaptiveDrafter(PromptLookup(), mode="auto", kind="lookup", curve=CHEAP),
        "draft": draft,
    }


@pytest.mark.parametrize("mode", ["lookup", "auto", "draft"])
def test_the_greedy_reply_is_the_same_in_every_mode(backend: LlamaCppBackend, plain: tuple[Any, list[int]], model_path: Path,
                                                    speculators: Speculators, mode: str) -> None:
    plain_result, plain_held = plain
    result, held = _chat(backend, _drafters(model_path, speculators)[mode])
    spec = result.speculation
    assert result.text == plain_result.text and result.completion_tokens == plain_result.completion_tokens
    assert held == plain_held  # the context holds what plain decoding leaves: the next turn reuses the same prefix
    assert spec is not None and not spec.get("off") and spec["accepted"] > 0 and spec["steps"] < result.completion_tokens
    if mode == "draft":
        assert spec["accepted"] == spec["drafted"]  # the model drafting for itself is always right


def test_a_stop_string_inside_an_accepted_guess_ends_the_reply_there(backend: LlamaCppBackend) -> None:
    stopped = Sampling(temperature=0.0, max_tokens=24, stop=("lantern",))
    plain_result, plain_held = _chat(backend, sampling=stopped)
    result, held = _chat(backend, AdaptiveDrafter(PromptLookup(), mode="lookup", kind="lookup", fixed_k=6), sampling=stopped)
    assert plain_result.finish_reason == result.finish_reason == "stop" and "lantern" not in result.text
    assert result.text == plain_result.text and held == plain_held


def test_cancel_with_speculation_keeps_the_partial_reply_and_a_consistent_context(backend: LlamaCppBackend) -> None:
    plain_result, plain_held = _chat(backend, cancel_after=5)
    result, held = _chat(backend, AdaptiveDrafter(PromptLookup(), mode="lookup", kind="lookup", fixed_k=6), cancel_after=5)
    assert plain_result.finish_reason == result.finish_reason == "cancelled"
    assert result.text == plain_result.text and held == plain_held


def test_the_verify_cost_curve_is_measured_once_and_then_read_from_the_store(backend: LlamaCppBackend) -> None:
    store = MemoryMeasurementStore(Machine("test", 2, 1))
    first = AdaptiveDrafter(PromptLookup(), mode="auto", kind="lookup", store=store)
    result, _ = _chat(backend, first, sampling=Sampling(temperature=0.0, max_tokens=4))
    plan = result.speculation["plan"]
    assert plan["curve_source"] == "measured" and set(plan["verify_cost"]) == {str(n) for n in costs.SIZES}
    assert store.get(costs.VERIFY_COST, costs.curve_key(backend._llm)) is not None
    again, _ = _chat(backend, AdaptiveDrafter(PromptLookup(), mode="auto", kind="lookup", store=store), sampling=Sampling(temperature=0.0, max_tokens=4))
    assert again.speculation["plan"]["curve_source"] == "stored"


def test_a_draft_model_with_another_vocabulary_is_refused_with_the_reason(model_path: Path, speculators: Speculators) -> None:
    me = read_gguf(model_path, source="embedded")
    other = dataclasses.replace(me, id="other", name="Other", path="/models/other.gguf")
    speculators.vocabulary_mismatch(me, me)  # the real fingerprint, read from the file
    real = speculators._vocab[me.path]
    speculators._vocab[other.path] = {**real, "n_tokens": real["n_tokens"] + 100}  # as another family's file reads
    with pytest.raises(RuntimeFailure, match="Other cannot draft for .*vocabulary has 49,252 tokens"):
        speculators.drafter("draft:other", backend="llama.cpp", target=me, models=[me, other], n_ctx=512)
    speculators._vocab[other.path] = {**real, "digest": "0" * 64}
    with pytest.raises(RuntimeFailure, match="different token texts"):
        speculators.drafter("draft:other", backend="llama.cpp", target=me, models=[me, other], n_ctx=512)


def test_a_grammar_turns_speculation_off(backend: LlamaCppBackend) -> None:
    tokens = backend.tokenize_chat(COPY)
    drafter = AdaptiveDrafter(PromptLookup(), mode="lookup", kind="lookup", fixed_k=4)
    result = backend.complete(tokens, Sampling(temperature=0.0, max_tokens=4), grammar='root ::= "yes" | "no"',
                              on_token=lambda _: None, is_cancelled=lambda: False, drafter=drafter)
    assert result.speculation is not None and result.speculation["drafted"] == 0 and "grammar" in result.speculation["off"]
