"""Tool calling through the OpenAI API with the official openai client and the real SmolLM2:
tool_choice required and named, streamed (the client assembles delta.tool_calls) and not, and a
tool result sent back as a role "tool" message."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from .conftest import Served

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                                                           "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now in a timezone",
                                         "parameters": {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
                                                        "required": ["tz"]}}}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


@pytest.fixture
def oai(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=300)


def _valid(call: openai.types.chat.ChatCompletionMessageToolCall, tool: dict) -> dict:
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return args


def test_required_call_then_its_result_goes_back_as_a_tool_message(served: Served, oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(model=served.model, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                         temperature=0, max_tokens=48)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name in ("get_weather", "get_time")
    _valid(call, WEATHER if call.function.name == "get_weather" else TIME)

    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "{\"temperature\": 18, \"sky\": \"clear\"}"}]
    final = oai.chat.completions.create(model=served.model, messages=history, tools=[WEATHER, TIME], tool_choice="none", temperature=0, max_tokens=12)
    assert final.choices[0].finish_reason in ("stop", "length") and final.choices[0].message.content
    assert not final.choices[0].message.tool_calls
    alone = oai.chat.completions.create(model=served.model, messages=ASK, tools=[WEATHER, TIME], tool_choice="none", max_tokens=1)
    assert final.usage.prompt_tokens > alone.usage.prompt_tokens + 20  # the call and its result are in the prompt


def test_a_named_call_streams_as_delta_tool_calls_the_client_assembles(served: Served, oai: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    chunks = list(oai.chat.completions.create(model=served.model, messages=[{"role": "user", "content": "What time is it in Berlin?"}],
                                              tools=[WEATHER, TIME], tool_choice=named, temperature=0, max_tokens=48, stream=True))
    assert not any(c.choices and c.choices[0].delta.content for c in chunks)  # the call's text never arrives as content
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    with oai.chat.completions.stream(model=served.model, messages=[{"role": "user", "content": "What time is it in Berlin?"}],
                                     tools=[WEATHER, TIME], tool_choice=named, temperature=0, max_tokens=48) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls" and call.function.name == "get_time" and call.id.startswith("call_")
    assert _valid(call, TIME)["tz"] in ("UTC", "CET", "PST")
