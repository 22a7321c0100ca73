"""Anthropic Messages -> the engine's chat contract, and the stop-sequence watch (no model needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.server import anthropic_convert as convert
from app.server.anthropic_schemas import MessagesRequest

TOOL = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def _body(**fields: Any) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **fields})


def test_system_text_tool_use_and_tool_result_map_onto_the_engine_messages() -> None:
    body = _body(system=[{"type": "text", "text": "Be brief."}], messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "rain"}], "is_error": True},
                                     {"type": "text", "text": "And tomorrow?"}]},
    ])
    assert convert.engine_messages(body) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: rain"},
        {"role": "user", "content": "And tomorrow?"},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    (None, {}),
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False}),
])
def test_tool_choice_maps_onto_the_engines(choice: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    got = convert.engine_tools(_body(tools=[TOOL], **({"tool_choice": choice} if choice else {})))
    assert got.pop("tools") == [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": TOOL["input_schema"]}}]
    assert got == expected


@pytest.mark.parametrize(("fields", "words"), [
    ({"tool_choice": {"type": "any"}}, "tool_choice needs tools"),
    ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "other"}}, "'other'"),
    ({"tools": [{**TOOL, "type": "web_search_20250305"}]}, "server tools"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "'document' blocks"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is"}]}, "prefill"),
])
def test_what_the_engine_cannot_take_is_a_bad_request_in_words(fields: dict[str, Any], words: str) -> None:
    body = _body(**fields)
    with pytest.raises(convert.BadRequest, match=words):
        convert.engine_messages(body)
        convert.engine_tools(body)


def test_the_result_becomes_a_message_with_tool_use_blocks() -> None:
    data = {"text": "", "finish_reason": "tool_calls", "usage": {"prompt_tokens": 30, "completion_tokens": 12},
            "tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}
    made = convert.message("msg_1", "m", "", data, None)
    assert made["content"] == [{"type": "tool_use", "id": "toolu_abc", "name": "get_weather", "input": {"city": "Rome"}}]
    assert made["stop_reason"] == "tool_use" and made["usage"] == {"input_tokens": 30, "output_tokens": 12}
    assert convert.stop_reason({"finish_reason": "length"}, None) == "max_tokens"
    assert convert.stop_reason({"finish_reason": "stop"}, "END") == "stop_sequence"


def test_the_stop_watch_holds_back_a_possible_start_and_cuts_at_the_first_sequence() -> None:
    watch = convert.StopWatch(["END", "##"])
    shown = [watch.feed(piece) for piece in ("Hello E", "N", "o, #", "x then E", "ND and more")]
    assert shown == ["Hello ", "", "ENo, ", "#x then ", ""] and watch.matched == "END"
    assert watch.text == "Hello ENo, #x then " and watch.feed("more") == "" and watch.flush() == ""
    free = convert.StopWatch(["END"])
    assert free.feed("the E") == "the " and free.flush() == "E" and free.matched is None and free.text == "the E"
