"""Context policies on a fake ChatML-like tokenizer: which messages stay, and how the cache lines up."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from app.runtime.backends import context as ctxw
from app.runtime.chat_params import ChatParams
from app.runtime.protocol import ErrorKind, RuntimeFailure

ROLE = {"system": 1, "user": 2, "assistant": 3}
START, END = 10, 11


def render(messages: Sequence[dict[str, str]]) -> list[int]:
    """Each message renders on its own: START role words... END; then the generation prompt."""
    out: list[int] = []
    for m in messages:
        out += [START, ROLE[m["role"]], *(1000 + hash(w) % 5000 for w in m["content"].split()), END]
    return [*out, START, ROLE["assistant"]]


def conversation(turns: int, words: int = 8) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "be brief"}]
    for i in range(turns):
        msgs += [{"role": "user", "content": " ".join(f"q{i}w{j}" for j in range(words))}, {"role": "assistant", "content": f"a{i} " * words}]
    return [*msgs, {"role": "user", "content": "last question"}]


def test_a_conversation_that_fits_keeps_everything() -> None:
    msgs = conversation(3)
    window = ctxw.fit_window(msgs, ctxw.ROLLING_WINDOW, n_ctx=200, reserve=20, render=render)
    assert window.dropped == 0 and window.tokens == render(msgs)


def test_rolling_window_forgets_the_fewest_oldest_whole_turns() -> None:
    msgs = conversation(10)  # 12 tokens a message
    window = ctxw.fit_window(msgs, ctxw.ROLLING_WINDOW, n_ctx=120, reserve=20, render=render)
    assert window.start == 1 and window.dropped % 2 == 0 and window.dropped > 0
    assert len(window.tokens) + 20 <= 120
    one_less = ctxw.Window(tuple(msgs), 1, window.end - 2, render([msgs[0], *msgs[window.end - 2 :]]))
    assert len(one_less.tokens) + 20 > 120  # forgetting one turn fewer would not fit
    assert window.kept[0]["role"] == "system" and window.kept[1]["role"] == "user" and window.kept[-1]["content"] == "last question"


def test_truncate_middle_keeps_the_first_turn() -> None:
    msgs = conversation(10)
    window = ctxw.fit_window(msgs, ctxw.TRUNCATE_MIDDLE, n_ctx=120, reserve=20, render=render)
    assert window.start == 3 and window.kept[:3] == msgs[:3] and window.dropped > 0


def test_stop_at_limit_refuses_and_a_too_long_message_says_so() -> None:
    with pytest.raises(RuntimeFailure, match="context is full") as caught:
        ctxw.fit_window(conversation(10), ctxw.STOP_AT_LIMIT, n_ctx=120, reserve=20, render=render)
    assert caught.value.kind is ErrorKind.INVALID_PARAMS
    huge = [{"role": "system", "content": "x"}, {"role": "user", "content": "w " * 300}]
    with pytest.raises(RuntimeFailure, match="newest message is too long"):
        ctxw.fit_window(huge, ctxw.ROLLING_WINDOW, n_ctx=120, reserve=20, render=render)


def test_an_earlier_gap_is_never_brought_back() -> None:
    msgs = conversation(10)
    window = ctxw.fit_window(msgs, ctxw.ROLLING_WINDOW, n_ctx=120, reserve=20, render=render, floor=(1, 9))
    assert window.end >= 9


def test_the_cache_is_reused_across_a_forgotten_span() -> None:
    msgs = conversation(6)
    held = render(msgs[:-1])[:-2]  # what the previous turn left in the cache (its reply, no generation prompt)
    window = ctxw.Window(tuple(msgs), 1, 5, render([msgs[0], *msgs[5:]]))
    keep = ctxw.boundary(window.tokens, msgs[:1], render)
    assert window.tokens[:keep] == render(msgs[:1])[:-2] + [START, ROLE["user"]]
    plan = ctxw.plan_reuse(held, window.tokens, keep)
    assert plan.keep == keep and plan.drop == len(render(msgs[1:5])) - 2
    assert held[: plan.keep] + held[plan.keep + plan.drop :] == window.tokens[: plan.reused]
    assert plan.reused == len(window.tokens) - len(render(msgs[-1:]))  # all but the new turn


def test_a_cache_that_does_not_line_up_is_not_shifted() -> None:
    msgs = conversation(4)
    other = render([{"role": "system", "content": "something else entirely"}, *msgs[1:]])
    prompt = render([msgs[0], *msgs[3:]])
    plan = ctxw.plan_reuse(other, prompt, ctxw.boundary(prompt, msgs[:1], render))
    assert plan.drop == 0


def test_chat_params_validate_the_policy_and_template() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}]}
    params = ChatParams.from_dict({**base, "context_policy": "truncate_middle", "chat_template": "{{ messages }}"})
    assert params.context_policy == "truncate_middle" and ChatParams.from_dict(params.to_dict()) == params
    assert ChatParams.from_dict(base).context_policy == "rolling_window"
    for bad in ({"context_policy": "forget_all"}, {"context_policy": 3}, {"chat_template": ""}, {"chat_template": 5}):
        with pytest.raises(RuntimeFailure) as caught:
            ChatParams.from_dict({**base, **bad})
        assert caught.value.kind is ErrorKind.INVALID_PARAMS


def test_the_context_budget_shares_out_the_context() -> None:
    chat = ctxw.ContextBudget.for_chat(512, max_tokens=40)
    assert (chat.reply, chat.conversation) == (40, 472)
    assert ctxw.ContextBudget.for_chat(512, max_tokens=4096).reply == 256  # at most half: room stays for the conversation
    shared = ctxw.ContextBudget.for_chat(1000, max_tokens=100, tools=200, documents=300)
    assert shared.conversation == 400
    msgs = conversation(10)
    # Tool schemas and documents take their share: the conversation forgets as if the context were that much smaller.
    assert ctxw.fit(msgs, ctxw.ROLLING_WINDOW, ctxw.ContextBudget(320, 20, tools=100, documents=100), render=render) == ctxw.fit_window(
        msgs, ctxw.ROLLING_WINDOW, n_ctx=120, reserve=20, render=render
    )
    api = ctxw.ContextBudget.for_prompt(512, prompt_tokens=500, max_tokens=100)
    assert api.reply == 12 and api.conversation == 500
    with pytest.raises(RuntimeFailure, match="context_length_exceeded") as caught:
        ctxw.ContextBudget.for_prompt(512, prompt_tokens=512, max_tokens=1)
    assert caught.value.kind is ErrorKind.INVALID_PARAMS
    with pytest.raises(RuntimeFailure, match="cannot hold"):
        ctxw.ContextBudget(512, 100, tools=300, documents=200)
