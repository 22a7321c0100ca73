"""An API request between two turns of the studio's conversation leaves its cached prefix intact."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import Served

GREEDY = {"temperature": 0, "max_tokens": 8, "seed": 5}
SYSTEM = {"role": "system", "content": "You are a patient teacher who answers in one short sentence."}


def _chat(served: Served, messages: list[dict[str, str]]) -> dict[str, Any]:
    return served.client.call("chat", {"messages": messages, "sampling": GREEDY})


def test_the_gui_conversation_keeps_its_cache_across_an_api_request(served: Served) -> None:
    first = [SYSTEM, {"role": "user", "content": "What do bees make?"}]
    reply = _chat(served, first)
    second = [*first, {"role": "assistant", "content": reply["text"]}, {"role": "user", "content": "And spiders?"}]
    reference = _chat(served, second)  # turn two straight after turn one

    assert _chat(served, first)["text"] == reply["text"]  # the same turn one again (from its cache)
    api = httpx.post(
        f"{served.v1}/chat/completions",
        json={"model": served.model, "messages": [{"role": "user", "content": "Write about the moon."}], "max_tokens": 6},
        timeout=300,
    )
    assert api.status_code == 200
    after = _chat(served, second)

    # Without the kept copy the API prompt would have replaced all but its first few tokens.
    assert after["usage"]["cached_tokens"] == reference["usage"]["cached_tokens"] >= reply["usage"]["prompt_tokens"]
    assert after["text"] == reference["text"]
