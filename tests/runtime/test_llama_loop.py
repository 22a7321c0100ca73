"""The token loop's hooks on the real model: drafts verified in one batch, and a logits mask.

The drafters here are oracles: they know the reply plain decoding gives (from a first run) and
propose its continuation, right or deliberately wrong, so the test knows exactly how many drafted
tokens the target must accept. Whatever they propose, the reply must be the one plain decoding
gives, and the context must be left holding the same tokens.

Flash attention is on: with it, llama.cpp's CPU build gives bitwise the same logits for a token
decoded alone or inside a batch. Without it they differ (by up to about 0.8 on SmolLM2 Q4_1,
measured on this build: batch and single-token attention take different kernels), so greedy
replies can differ at near-ties, which a test cannot pin down.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from app.runtime.backends.base import Completion
from app.runtime.backends.context import common_prefix
from app.runtime.backends.llama_cpp import LlamaCppBackend
from app.runtime.protocol import Sampling

COUNT = [{"role": "user", "content": "Count from 1 to 30, separated by commas."}]
HELLO = [{"role": "user", "content": "Name three colors."}]
GREEDY = Sampling(temperature=0.0, max_tokens=40)


@pytest.fixture(scope="module")
def backend(model_path: Path) -> Iterator[LlamaCppBackend]:
    loaded = LlamaCppBackend(model_path, {"n_ctx": 1024, "n_threads": 2, "n_threads_batch": 2, "flash_attn": True})
    yield loaded
    loaded.close()


class Oracle:
    """Proposes the known reply's next ``k`` tokens, with the one at ``wrong_at`` changed (never right)."""

    def __init__(self, prompt: list[int], reply: list[int], k: int, wrong_at: int | None = None) -> None:
        self.prompt, self.reply, self.k, self.wrong_at = prompt, reply, k, wrong_at
        self.proposed = 0
        self.must_accept = 0  # the drafted tokens that agree with plain decoding, proposal by proposal
        self.observed: list[tuple[int, int]] = []

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        assert list(tokens[: len(self.prompt)]) == self.prompt and limit > 0
        done = len(tokens) - len(self.prompt)  # reply tokens so far, the pending one included
        assert list(tokens[len(self.prompt) :]) == self.reply[:done]  # the drafter sees exactly the reply so far
        truth = self.reply[done : done + min(self.k, limit)]
        guess = list(truth)
        if self.wrong_at is not None and self.wrong_at < len(guess):
            guess[self.wrong_at] = (guess[self.wrong_at] + 1) % 49152
        self.proposed += len(guess)
        self.must_accept += common_prefix(guess, truth)
        return guess

    def observe(self, proposed: int, accepted: int) -> None:
        self.observed.append((proposed, accepted))


def _run(backend: LlamaCppBackend, messages: list[dict[str, str]], sampling: Sampling, **hooks: object) -> tuple[Completion, list[str], list[int]]:
    pieces: list[str] = []
    result = backend.chat(messages, sampling, on_token=pieces.append, is_cancelled=lambda: False, **hooks)  # type: ignore[arg-type]
    return result, pieces, backend.held_tokens()


def _plain(backend: LlamaCppBackend, messages: list[dict[str, str]], sampling: Sampling) -> tuple[Completion, list[int], list[int]]:
    """Plain decoding's reply, the context it leaves, and the reply's tokens as far as the context holds them."""
    result, _, held = _run(backend, messages, sampling)
    prompt = backend.tokenize_chat(messages)
    assert held[: len(prompt)] == prompt
    return result, held, held[len(prompt) :]


@pytest.mark.parametrize(
    ("messages", "k", "wrong_at"),
    [(COUNT, 4, None), (COUNT, 3, 0), (COUNT, 5, 2), (HELLO, 6, None)],
    ids=["all-right", "all-wrong", "right-then-wrong", "up-to-the-end"],
)
def test_drafts_are_verified_and_the_greedy_reply_is_unchanged(backend: LlamaCppBackend, messages: list[dict[str, str]], k: int, wrong_at: int | None) -> None:
    sampling = GREEDY if messages is COUNT else Sampling(temperature=0.0, max_tokens=80)
    plain, plain_held, reply = _plain(backend, messages, sampling)
    backend.chat(HELLO if messages is COUNT else COUNT, GREEDY, on_token=lambda _: None, is_cancelled=lambda: False)  # a cold start for both
    oracle = Oracle(backend.tokenize_chat(messages), reply, k, wrong_at)
    spec, pieces, spec_held = _run(backend, messages, sampling, drafter=oracle)

    assert spec.text == "".join(pieces) == plain.text and spec.completion_tokens == plain.completion_tokens
    assert spec.finish_reason == plain.finish_reason and spec_held == plain_held  # the same KV left behind
    counts = spec.speculation
    assert counts is not None and counts["drafted"] == oracle.proposed > 0
    assert counts["accepted"] == oracle.must_accept == sum(a for _, a in oracle.observed)
    assert counts["steps"] == len(oracle.observed) and all(0 <= a <= p for p, a in oracle.observed)
    if wrong_at == 0:
        assert counts["accepted"] == 0
    if wrong_at is None:  # every guess right: far fewer decode steps than tokens
        assert counts["accepted"] == counts["drafted"] and counts["steps"] < spec.completion_tokens / 2


def test_stop_strings_and_budgets_inside_a_verified_batch(backend: LlamaCppBackend) -> None:
    for sampling in (Sampling(temperature=0.0, max_tokens=40, stop=("9,",)), Sampling(temperature=0.0, max_tokens=13)):
        reference = Sampling(temperature=0.0, max_tokens=40)
        _, _, reply = _plain(backend, COUNT, reference)
        plain, _, plain_held = _run(backend, COUNT, sampling)
        backend.chat(HELLO, GREEDY, on_token=lambda _: None, is_cancelled=lambda: False)
        spec, _, spec_held = _run(backend, COUNT, sampling, drafter=Oracle(backend.tokenize_chat(COUNT), reply, 6))
        assert (spec.text, spec.finish_reason, spec.completion_tokens) == (plain.text, plain.finish_reason, plain.completion_tokens)
        assert spec_held == plain_held and spec.speculation is not None and spec.speculation["accepted"] > 0


def test_seeded_sampling_gives_the_same_reply_with_drafts(backend: LlamaCppBackend) -> None:
    hot = Sampling(temperature=0.9, max_tokens=32, seed=11)
    plain, _, reply = _plain(backend, HELLO, hot)
    oracle = Oracle(backend.tokenize_chat(HELLO), reply, 4, wrong_at=3)
    spec, _, _ = _run(backend, HELLO, hot, drafter=oracle)
    assert spec.text == plain.text and spec.speculation is not None
    assert spec.speculation["accepted"] == oracle.must_accept


def test_speculation_is_off_while_a_mask_constrains_the_reply(backend: LlamaCppBackend) -> None:
    oracle = Oracle(backend.tokenize_chat(HELLO), [], 4)
    result, _, _ = _run(backend, HELLO, GREEDY, drafter=oracle, mask=lambda generated, logits: None)
    assert result.speculation is not None and result.speculation["drafted"] == 0 and "mask" in result.speculation["off"]
    assert oracle.proposed == 0 and result.completion_tokens > 0
    plain, _, _ = _run(backend, HELLO, GREEDY)
    assert result.text == plain.text  # a mask that allows everything changes nothing


def test_a_logits_mask_decides_what_may_come_next(backend: LlamaCppBackend) -> None:
    llm = backend._llm
    a, b = (llm.tokenize(s.encode(), add_bos=False)[0] for s in ("A", "B"))
    seen: list[list[int]] = []

    def only_a_or_b(generated: Sequence[int], logits: np.ndarray) -> list[int]:
        seen.append(list(generated))
        assert logits.shape == (49152,) and np.isfinite(logits).all()
        return [a, b]

    result, _, _ = _run(backend, HELLO, Sampling(temperature=0.0, max_tokens=6), mask=only_a_or_b)
    assert result.completion_tokens == 6 and result.finish_reason == "length" and set(result.text) <= {"A", "B"}
    assert [len(s) for s in seen] == list(range(6))  # called once per step with the reply so far

    bias = np.zeros(49152, dtype=np.float32)
    bias[b] = 1000.0
    forced, _, _ = _run(backend, HELLO, Sampling(temperature=0.7, max_tokens=5, seed=3), mask=lambda g, logits: bias)
    assert forced.text == "B" * 5

    eog = np.zeros(49152, dtype=bool)
    eog[llm.token_eos()] = True
    ended, _, _ = _run(backend, HELLO, GREEDY, mask=lambda g, logits: eog)
    assert (ended.finish_reason, ended.completion_tokens, ended.text) == ("stop", 0, "")
    nothing, _, _ = _run(backend, HELLO, GREEDY, mask=lambda g, logits: [])
    assert (nothing.finish_reason, nothing.completion_tokens) == ("stop", 0)


def test_an_api_request_keeps_the_conversation_and_refuses_drafts_under_a_grammar(backend: LlamaCppBackend) -> None:
    from app.runtime.services.api_generate import grammar_for

    conversation, _, held = _run(backend, HELLO, GREEDY)
    tokens = backend.tokenize("The capital of France is")
    oracle = Oracle(tokens, [], 4)
    api = backend.complete(tokens, Sampling(temperature=0.0, max_tokens=12), grammar=grammar_for({"type": "json_object"}), drafter=oracle,
                           on_token=lambda _: None, is_cancelled=lambda: False)
    assert api.text.lstrip().startswith("{") and api.kept is not None and api.kept["restore_seconds"] > 0
    assert api.speculation is not None and api.speculation["drafted"] == 0 and oracle.proposed == 0
    assert backend.held_tokens() == held  # the conversation's KV is back
    again, _, _ = _run(backend, HELLO, GREEDY)
    assert again.text == conversation.text and again.cached_tokens == again.prompt_tokens - 1
