"""The official anthropic client against Hearth's /v1/messages with the real SmolLM2: plain and
streamed messages, messages.stream(...).get_final_message(), stop_sequences, tools with
tool_choice any/tool and a tool_result turn, the x-api-key header, and errors in Anthropic's shape.

anthropic 2.16 no longer sends temperature itself: greedy decoding goes in ``extra_body``."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from .conftest import Served

GREEDY = {"temperature": 0}
ASK = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
CITY = {"name": "get_weather", "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}}, "required": ["city"]}}
ADD = {"name": "add", "description": "Add two small numbers",
       "input_schema": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "integer", "minimum": 0, "maximum": 9}},
                        "required": ["a", "b"]}}


@pytest.fixture
def claude(served: Served) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0, timeout=180)


def test_messages_plain_streamed_and_get_final_message(served: Served, claude: anthropic.Anthropic) -> None:
    asked: dict[str, Any] = {"model": served.model, "max_tokens": 8, "system": "Answer briefly.", "messages": ASK, "extra_body": GREEDY}
    answer = claude.messages.create(**asked)
    assert answer.id.startswith("msg_") and answer.role == "assistant" and answer.model == served.model
    assert [b.type for b in answer.content] == ["text"] and answer.content[0].text
    assert answer.stop_reason in ("end_turn", "max_tokens") and 5 < answer.usage.input_tokens and 0 < answer.usage.output_tokens <= 8

    events = list(claude.messages.create(**asked, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    streamed = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert streamed == answer.content[0].text  # greedy: the same reply either way
    final_delta = events[-2]
    assert final_delta.delta.stop_reason == answer.stop_reason and final_delta.usage.input_tokens == answer.usage.input_tokens

    with claude.messages.stream(**asked) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == answer.content[0].text and final.usage.output_tokens == answer.usage.output_tokens


def test_a_stop_sequence_ends_the_reply_and_is_named(served: Served, claude: anthropic.Anthropic) -> None:
    free = claude.messages.create(model=served.model, max_tokens=12, messages=ASK, extra_body=GREEDY).content[0].text
    middle = len(free) // 2
    stop = free[middle:middle + 2]
    expected = free[:free.find(stop)]
    cut = claude.messages.create(model=served.model, max_tokens=12, messages=ASK, stop_sequences=[stop, "never-said"], extra_body=GREEDY)
    assert (cut.content[0].text if cut.content else "") == expected and cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    with claude.messages.stream(model=served.model, max_tokens=12, messages=ASK, stop_sequences=[stop], extra_body=GREEDY) as stream:
        shown = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert shown == expected and final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_tools_any_and_named_and_a_tool_result_turn(served: Served, claude: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = claude.messages.create(model=served.model, max_tokens=60, messages=ask, tools=[CITY, ADD], tool_choice={"type": "any"})
    uses = [b for b in called.content if b.type == "tool_use"]
    assert called.stop_reason == "tool_use" and uses and uses[0].id.startswith("toolu_")
    assert uses[0].name in ("get_weather", "add") and isinstance(uses[0].input, dict)

    named = list(claude.messages.create(model=served.model, max_tokens=60, messages=ask, tools=[CITY, ADD],
                                        tool_choice={"type": "tool", "name": "get_weather"}, stream=True))
    start = next(e for e in named if e.type == "content_block_start" and e.content_block.type == "tool_use")
    assert start.content_block.name == "get_weather" and start.content_block.input == {}
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in named)
    with claude.messages.stream(model=served.model, max_tokens=60, messages=ask, tools=[CITY], tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        final = stream.get_final_message()
    use = final.content[-1]
    assert final.stop_reason == "tool_use" and use.type == "tool_use" and use.input["city"] in ("Paris", "Rome", "Oslo")

    turn = [*ask, {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 degrees"}]}]
    answered = claude.messages.create(model=served.model, max_tokens=8, messages=turn, tools=[CITY], tool_choice={"type": "none"}, extra_body=GREEDY)
    assert answered.stop_reason in ("end_turn", "max_tokens") and answered.content[0].type == "text"
    assert answered.usage.input_tokens > 60  # the question alone is about 35 tokens: the call and its result went in too


def _error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and set(body["error"]) == {"type", "message"}
    return str(body["error"]["message"])


def test_errors_come_in_anthropics_shape(served: Served, claude: anthropic.Anthropic) -> None:
    url = f"{served.url}/v1/messages"
    hi = [{"role": "user", "content": "hi"}]
    assert "max_tokens" in _error(httpx.post(url, json={"model": served.model, "messages": hi}), 400, "invalid_request_error")
    image = [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]
    assert "'image' blocks" in _error(httpx.post(url, json={"model": served.model, "max_tokens": 4, "messages": image}), 400, "invalid_request_error")
    named = {"model": served.model, "max_tokens": 4, "messages": hi, "tools": [CITY], "tool_choice": {"type": "tool", "name": "nope"}}
    assert "'nope'" in _error(httpx.post(url, json=named), 400, "invalid_request_error")
    version = httpx.post(url, json={"model": served.model, "max_tokens": 4, "messages": hi}, headers={"anthropic-version": "latest"})
    assert "anthropic-version" in _error(version, 400, "invalid_request_error")
    many_stops = {"model": served.model, "max_tokens": 4, "messages": hi, "stop_sequences": [f"s{i}" for i in range(40)]}
    assert "stop strings" in _error(httpx.post(url, json=many_stops), 400, "invalid_request_error")  # app.server.limits
    surrogate = b'{"model": "%s", "max_tokens": 4, "messages": [{"role": "user", "content": "\\ud800"}]}' % served.model.encode()
    # pydantic's JSON parser refuses a lone surrogate itself, naming where it is: a 400, never a 500
    assert "column" in _error(httpx.post(url, content=surrogate, headers={"content-type": "application/json"}), 400, "invalid_request_error")
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=hi)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_the_servers_key_is_taken_as_x_api_key(served: Served) -> None:
    url = served.restart(api_key="s3cret-key-for-tests")
    try:
        hi = {"model": served.model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(anthropic.AuthenticationError) as refused:
            anthropic.Anthropic(base_url=url, api_key="wrong-key-here", max_retries=0).messages.create(**hi)
        assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        keyed = anthropic.Anthropic(base_url=url, api_key="s3cret-key-for-tests", max_retries=0, timeout=120).messages.create(**hi)
        assert keyed.usage.output_tokens <= 2
        bearer = httpx.post(f"{url}/v1/messages", json=hi, headers={"Authorization": "Bearer s3cret-key-for-tests"}, timeout=120)
        assert bearer.status_code == 200 and bearer.json()["type"] == "message"
    finally:
        served.restart()
