"""Long conversations on the real model: rolling window with in-place shift, prefix reuse, policies,
chat template override and fallback, and a clear message for an unknown architecture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.runtime.backends.base import Completion
from app.runtime.backends.llama_cpp import LlamaCppBackend
from app.runtime.backends.templates import ChatTemplates
from app.runtime.protocol import ErrorKind, RuntimeFailure, Sampling

SYSTEM = {"role": "system", "content": "You are a friendly assistant. Answer in one or two short sentences."}
TOPICS = ("cats", "the sea", "bread", "mountains", "trains", "music", "rain", "gardens", "stars", "coffee")
SHORT = Sampling(temperature=0.0, repeat_penalty=1.1, max_tokens=40)
LONG_ANSWER = {"role": "user", "content": "Write a numbered list of 50 different fruits, one per line, each with one sentence about where it grows."}


def _settings(n_ctx: int) -> dict[str, int]:
    return {"n_ctx": n_ctx, "n_threads": 2, "n_threads_batch": 2}


@pytest.fixture(scope="module")
def small(model_path: Path) -> Iterator[LlamaCppBackend]:
    loaded = LlamaCppBackend(model_path, _settings(512))
    yield loaded
    loaded.close()


def _chat(backend: LlamaCppBackend, messages: list[dict[str, str]], sampling: Sampling = SHORT, **extra: str) -> Completion:
    return backend.chat(messages, sampling, on_token=lambda _: None, is_cancelled=lambda: False, **extra)  # type: ignore[arg-type]


def _user(i: int) -> dict[str, str]:
    return {"role": "user", "content": f"Tell me one fact about {TOPICS[i % len(TOPICS)]}. Keep it short, please."}


def _history(turns: int) -> list[dict[str, str]]:
    """A conversation with made-up replies (no generation needed), about 45 tokens a turn."""
    msgs = [SYSTEM]
    for i in range(turns):
        msgs += [_user(i), {"role": "assistant", "content": f"Here is a short fact about {TOPICS[i % len(TOPICS)]}: people have written about it for centuries."}]
    return msgs


def _system_tokens(backend: LlamaCppBackend) -> list[int]:
    text = f"<|im_start|>system\n{SYSTEM['content']}<|im_end|>\n"
    return backend._llm.tokenize(text.encode(), add_bos=False, special=True)


def test_thirty_turns_in_512_tokens_roll_the_window_in_place(small: LlamaCppBackend) -> None:
    messages, results = [SYSTEM], []
    for i in range(30):
        messages.append(_user(i))
        result = _chat(small, messages)
        assert result.text.strip(), f"turn {i + 1} gave an empty answer"
        messages.append({"role": "assistant", "content": result.text})
        results.append(result)
    contexts = [r.context for r in results]
    assert all(c is not None and c["prompt_tokens"] + 40 <= 512 for c in contexts)
    system = _system_tokens(small)
    assert small.held_tokens()[: len(system)] == system
    dropped = [c["dropped_messages"] for c in contexts]  # type: ignore[index]
    assert dropped[0] == 0 and dropped[-1] > 0 and dropped == sorted(dropped)
    assert all(d % 2 == 0 for d in dropped)  # whole turns: a question with its answer
    shifts = [c for c in contexts if c["shifted"]]  # type: ignore[index]
    assert shifts, "the window never moved in place"
    # An in-place shift evaluates only the new turn, however long the conversation is.
    assert all(c["evaluated_tokens"] < 60 and c["evaluated_tokens"] == c["prompt_tokens"] - c["cached_tokens"] for c in shifts)  # type: ignore[index]
    assert results[-1].to_dict()["context"]["dropped_range"] == [1, 1 + dropped[-1]]


def test_turn_twenty_evaluates_only_its_new_tokens(model_path: Path) -> None:
    backend = LlamaCppBackend(model_path, _settings(4096))
    try:
        messages = [SYSTEM]
        for i in range(20):
            messages.append(_user(i))
            result = _chat(backend, messages, Sampling(temperature=0.0, repeat_penalty=1.1, max_tokens=24))
            messages.append({"role": "assistant", "content": result.text})
        context = result.context
        assert context is not None and context["dropped_messages"] == 0 and not context["shifted"]
        assert context["evaluated_tokens"] == context["prompt_tokens"] - context["cached_tokens"]
        # The cache holds the last reply's tokens; what is new is its end marker, the new question and
        # the assistant header (plus the reply's last token when it was cut by max_tokens).
        new_text = f"<|im_end|>\n<|im_start|>user\n{messages[-2]['content']}<|im_end|>\n<|im_start|>assistant\n"
        expected = len(backend._llm.tokenize(new_text.encode(), add_bos=False, special=True))
        assert expected <= context["evaluated_tokens"] <= expected + 1
        assert context["prompt_tokens"] > 20 * expected  # against a prompt of the whole conversation
    finally:
        backend.close()


def test_truncate_middle_keeps_the_system_prompt_and_first_turn(small: LlamaCppBackend) -> None:
    messages = [*_history(14), _user(14)]
    result = _chat(small, messages, Sampling(temperature=0.0, max_tokens=8), context_policy="truncate_middle")
    context = result.context
    assert context is not None and context["dropped_range"][0] == 3 and context["dropped_messages"] > 0
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages[:3])
    first_turn = small._llm.tokenize(text.encode(), add_bos=False, special=True)
    assert small.held_tokens()[: len(first_turn)] == first_turn and result.completion_tokens > 0


def test_stop_at_limit_refuses_before_generating(small: LlamaCppBackend) -> None:
    with pytest.raises(RuntimeFailure, match="context is full") as caught:
        _chat(small, [*_history(14), _user(14)], context_policy="stop_at_limit")
    assert caught.value.kind is ErrorKind.INVALID_PARAMS


def test_a_reply_that_fills_the_context_forgets_the_oldest_turn(model_path: Path) -> None:
    backend = LlamaCppBackend(model_path, _settings(256))
    try:
        # Replies that ask for nothing long: the model then keeps to the list (a 135M model stops early otherwise).
        messages = [{"role": "system", "content": "You are a helpful assistant."}]
        for i in range(8):
            messages += [
                {"role": "user", "content": f"Question {i}: what colour is item number {i}?"},
                {"role": "assistant", "content": f"Item number {i} is painted a bright shade of blue, like the sky on a clear summer day."},
            ]
        messages.append(LONG_ANSWER)
        sampling = Sampling(temperature=0.0, max_tokens=170)
        rolled = _chat(backend, messages, sampling)
        assert rolled.context is not None and rolled.context["shifted"]
        assert rolled.completion_tokens + rolled.prompt_tokens > 256  # longer than the context held
        assert rolled.context["dropped_messages"] >= 2  # fresh cache: the shift happened during the reply
        # One old turn: the prompt leaves the reserve (128) free, but not the 200 tokens asked for.
        stopped = _chat(backend, [messages[0], *messages[-3:]], Sampling(temperature=0.0, max_tokens=200), context_policy="stop_at_limit")
        assert stopped.finish_reason == "length" and stopped.completion_tokens + stopped.prompt_tokens <= 257
        assert stopped.completion_tokens < 200 and stopped.context is not None and not stopped.context["shifted"]
    finally:
        backend.close()


def test_a_chat_template_override_is_used(small: LlamaCppBackend) -> None:
    template = (
        "<|im_start|>system\nYou are Hearth's test model.<|im_end|>\n"
        "{% for m in messages if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    result = _chat(small, [SYSTEM, _user(0)], Sampling(temperature=0.0, max_tokens=8), chat_template=template)
    head = small._llm.tokenize(b"<|im_start|>system\nYou are Hearth's test model.<|im_end|>\n", add_bos=False, special=True)
    assert result.template == "override" and small.held_tokens()[: len(head)] == head
    assert _chat(small, [SYSTEM, _user(0)], Sampling(temperature=0.0, max_tokens=8)).template == "model" and "im_start" in (small.chat_template or "")
    with pytest.raises(RuntimeFailure, match="override does not compile") as caught:
        _chat(small, [SYSTEM, _user(0)], chat_template="{% for m in messages %}")
    assert caught.value.kind is ErrorKind.INVALID_PARAMS


def test_a_broken_model_template_falls_back_to_chatml(small: LlamaCppBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = {"eos_token": "<|im_end|>", "bos_token": ""}
    does_not_compile = ChatTemplates("{% for m in messages %}{{ m }", **tokens)
    assert does_not_compile.source == "fallback (ChatML)" and "compile" in does_not_compile.model_error
    raises = ChatTemplates("{{ raise_exception('this template only takes tools') }}", **tokens)
    monkeypatch.setattr(small, "_templates", raises)
    result = _chat(small, [SYSTEM, _user(0)], Sampling(temperature=0.0, max_tokens=8))
    assert result.template == "fallback" and result.to_dict()["template"] == "fallback" and result.completion_tokens > 0


def test_an_unknown_architecture_is_named(tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "future.gguf"
    writer = GGUFWriter(path, "hearthnet")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(RuntimeFailure) as caught:
        LlamaCppBackend(path, _settings(64))
    assert caught.value.kind is ErrorKind.UNSUPPORTED
    assert "architecture 'hearthnet' is not supported by this llama.cpp build" in caught.value.message
