"""The llama.cpp backend on the real model: template, sampling, stop strings, prefix reuse."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.runtime.backends.llama_cpp import LlamaCppBackend
from app.runtime.backends.streaming import ByteStopText
from app.runtime.protocol import Sampling

GREEDY = Sampling(temperature=0.0, max_tokens=24)
HELLO = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def backend(model_path: Path) -> Iterator[LlamaCppBackend]:
    loaded = LlamaCppBackend(model_path, {"n_ctx": 1024, "n_threads": 2, "n_threads_batch": 2})
    yield loaded
    loaded.close()


def _chat(backend: LlamaCppBackend, messages, sampling: Sampling) -> tuple[list[str], object]:  # type: ignore[no-untyped-def]
    pieces: list[str] = []
    result = backend.chat(messages, sampling, on_token=pieces.append, is_cancelled=lambda: False)
    return pieces, result


def test_greedy_answers_repeat_and_stream_exactly(backend: LlamaCppBackend) -> None:
    pieces, first = _chat(backend, HELLO, GREEDY)
    _, second = _chat(backend, HELLO, GREEDY)
    assert "".join(pieces) == first.text == second.text and first.text.strip()
    assert first.completion_tokens <= 24 and first.finish_reason in ("stop", "length")


def test_chat_template_is_the_models_own(backend: LlamaCppBackend) -> None:
    assert backend.template_source == "model"
    prompt = backend._llm.detokenize(backend.tokenize_chat(HELLO), special=True).decode()
    assert "<|im_start|>user\nName three colors.<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_max_tokens_and_stop_strings(backend: LlamaCppBackend) -> None:
    _, capped = _chat(backend, [{"role": "user", "content": "Count from 1 to 50, separated by commas."}], Sampling(temperature=0, max_tokens=5))
    assert capped.completion_tokens == 5 and capped.finish_reason == "length"
    _, stopped = _chat(backend, [{"role": "user", "content": "Count from 1 to 50, separated by commas."}], Sampling(temperature=0, max_tokens=80, stop=("5",)))
    assert "5" not in stopped.text and stopped.finish_reason == "stop"


def test_the_next_turn_reuses_the_cached_prefix(backend: LlamaCppBackend) -> None:
    _, first = _chat(backend, HELLO, GREEDY)
    follow = [*HELLO, {"role": "assistant", "content": first.text}, {"role": "user", "content": "And three animals?"}]
    _, second = _chat(backend, follow, GREEDY)
    assert second.cached_tokens >= first.prompt_tokens


def test_seeded_sampling_is_repeatable(backend: LlamaCppBackend) -> None:
    hot = Sampling(temperature=1.0, max_tokens=16, seed=7)
    assert _chat(backend, HELLO, hot)[1].text == _chat(backend, HELLO, hot)[1].text


def test_cancel_stops_after_the_current_token(backend: LlamaCppBackend) -> None:
    pieces: list[str] = []
    result = backend.chat(HELLO, Sampling(max_tokens=200), on_token=pieces.append, is_cancelled=lambda: len(pieces) >= 2)
    assert result.finish_reason == "cancelled" and result.completion_tokens <= 3


def test_stream_text_holds_back_partial_characters_and_stop_strings() -> None:
    text = ByteStopText(stop=["</s>"])
    assert text.feed("é".encode()[:1]) == ("", False)  # half a character waits
    assert text.feed("é".encode()[1:] + b"ok<") == ("éok", False)  # "<" may start the stop string
    assert text.feed(b"/s> tail") == ("", True)
    assert text.text == "éok"
    plain = ByteStopText(stop=[])
    plain.feed(b"a<")
    assert plain.flush(False) == "" and plain.text == "a<"


def test_a_long_prompt_can_be_cancelled_before_the_first_token(backend: LlamaCppBackend) -> None:
    long_prompt = [{"role": "user", "content": "Summarise this: " + "The quick brown fox jumps over the lazy dog. " * 60}]
    checks: list[bool] = []

    def cancel_on_second_check() -> bool:
        checks.append(True)
        return len(checks) >= 2

    result = backend.chat(long_prompt, GREEDY, on_token=lambda _: None, is_cancelled=cancel_on_second_check)
    assert result.prompt_tokens > 512 and result.finish_reason == "cancelled" and result.completion_tokens == 0
    # The half-processed prompt leaves the context consistent: the same greedy answer as a clean run.
    _, after = _chat(backend, long_prompt, GREEDY)
    _chat(backend, HELLO, GREEDY)  # something else in between, so the last run starts cold
    _, again = _chat(backend, long_prompt, GREEDY)
    assert after.text == again.text and after.text.strip()
