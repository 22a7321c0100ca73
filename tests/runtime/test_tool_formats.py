"""Tool-call formats with the real chat templates (tests/data/templates) and canned model outputs:
detection, rendering a conversation with calls and results, parsing calls back, the schema subset,
and what streams. No model: the weights of these models are not reachable here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.runtime.backends.base import Completion
from app.runtime.chat_params import ChatParams
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.tools import formats, schema
from app.runtime.tools.calls import ToolRun, new_call_id

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "templates"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                                                           "required": ["city"]}}}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0123456789abcdef01234567", "type": "function",
                                                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_0123456789abcdef01234567", "content": "{\"temp_c\": 21}"},
]
# template file -> (format, what the model writes for one call, as that model family writes it)
CASES = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("llama3", '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "c"}}'),
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>'),
    "Qwen-Qwen3-0.6B.jinja": ("hermes", '<think>\n\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>'),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": ("hermes", '<tool_call>\n{"arguments": {"city": "Oslo", "unit": "c"}, "name": "get_weather"}\n</tool_call>'),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}]'),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_real_template_is_detected_renders_calls_and_results_and_its_calls_parse(name: str) -> None:
    template = (TEMPLATES / name).read_text(encoding="utf-8")
    expected, canned = CASES[name]
    run = ToolRun(tools=[WEATHER], template=template, bos_token="<s>", eos_token="</s>", messages=CONVERSATION)
    assert run.format.name == expected
    prompt = run.render(CONVERSATION)
    assert "get_weather" in prompt.split("Weather in Paris?")[0] or expected == "mistral"  # the tool list comes before the question
    assert '"city": "Paris"' in prompt and "21" in prompt  # the earlier call and its result are in the prompt
    completion = Completion(canned, "stop", 10, 12, 0, 0.1, 0.1)
    content, calls, finish, info = run.finish(completion)
    assert finish == "tool_calls" and info["format"] == expected
    assert calls is not None and len(calls) == 1
    assert calls[0]["function"]["name"] == "get_weather" and json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo", "unit": "c"}
    assert calls[0]["id"].startswith("call_") and "<tool_call>" not in content and "[TOOL_CALLS]" not in content


def test_mistral_gets_its_nine_character_ids_and_smollm2_gets_hearths_own_prompt(model_path: Path) -> None:
    nemo = ToolRun(tools=[WEATHER], template=(TEMPLATES / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text(), messages=CONVERSATION)
    short = formats.mistral_id(CONVERSATION[2]["tool_calls"][0]["id"])
    assert len(short) == 9 and f'"call_id": "{short}"' in nemo.render(CONVERSATION)

    import gguf

    field = gguf.GGUFReader(str(model_path)).fields["tokenizer.chat_template"]
    smol = bytes(field.parts[field.data[0]]).decode("utf-8")
    assert "tools" not in smol  # SmolLM2's template has no tool syntax
    run = ToolRun(tools=[WEATHER], tool_choice="required", template=smol, messages=CONVERSATION)
    prompt = run.render(CONVERSATION)
    assert run.format.name == "hearth" and run.prefill == "<tool_call>"
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt and "<tool_response" in prompt
    assert prompt.endswith("<|im_start|>assistant\n<tool_call>")  # a forced call starts in the prompt


def test_cut_off_and_broken_calls_are_not_calls() -> None:
    run = ToolRun(tools=[WEATHER], template=None)
    cut = run.finish(Completion('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os', "length", 5, 20, 0, 0.1, 0.1))
    assert cut[1] is None and cut[2] == "length" and cut[0] == "Let me check." and "cut off" in cut[3]["error"]
    unknown = run.finish(Completion('<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>', "stop", 5, 20, 0, 0.1, 0.1))
    assert unknown[1] is None and "rm_rf" in unknown[3]["error"]
    tricky = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "}}</tool_call> <tool_call> Oslo"}}\n</tool_call>'  # SmolLM2 wrote such a string
    _, calls, finish, _ = run.finish(Completion(tricky, "stop", 5, 20, 0, 0.1, 0.1))
    assert finish == "tool_calls" and calls is not None and json.loads(calls[0]["function"]["arguments"])["city"] == "}}</tool_call> <tool_call> Oslo"
    plain = run.finish(Completion("It is sunny.", "stop", 5, 4, 0, 0.1, 0.1))
    assert plain == ("It is sunny.", None, "stop", plain[3]) and "error" not in plain[3]


def test_several_calls_in_one_reply_get_unique_ids() -> None:
    run = ToolRun(tools=[WEATHER], template=None)
    two = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "B"}}\n</tool_call>'
    _, calls, finish, _ = run.finish(Completion(two, "stop", 5, 30, 0, 0.1, 0.1))
    assert finish == "tool_calls" and calls is not None and [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["A", "B"]
    ids = {c["id"] for c in calls} | {new_call_id() for _ in range(1000)}
    assert len(ids) == 1002


def test_streaming_shows_the_content_never_the_call_even_when_the_trigger_is_split() -> None:
    shown: list[str] = []
    sink = ToolRun(tools=[WEATHER], template=None).stream(shown.append)
    for piece in ["Sure", ", checking.", "\n<tool", "_call>\n{\"name\"", ": \"get_weather\"}"]:
        sink(piece)
    assert "".join(shown) == "Sure, checking.\n"
    forced: list[str] = []
    sink = ToolRun(tools=[WEATHER], tool_choice="required", template=None).stream(forced.append)
    sink('\n{"name": "get_weather"')
    assert forced == []
    llama = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    text: list[str] = []
    sink = ToolRun(tools=[WEATHER], template=llama).stream(text.append)
    for piece in [" ", "Hello", " there"]:
        sink(piece)
    assert "".join(text) == " Hello there"  # a llama3 reply that does not open with "{" is plain text


def test_the_schema_subset_adds_bounds_and_names_what_it_refuses() -> None:
    prepared = schema.prepare({"type": "object", "properties": {"q": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}},
                                                                "kind": {"type": "string", "enum": ["a", "b"]}}})
    assert prepared["additionalProperties"] is False
    assert prepared["properties"]["q"]["maxLength"] == schema.DEFAULT_MAX_LENGTH
    assert prepared["properties"]["tags"]["maxItems"] == schema.DEFAULT_MAX_ITEMS and prepared["properties"]["tags"]["items"]["maxLength"] == 5
    assert "maxLength" not in prepared["properties"]["kind"]
    for bad, keyword in (({"type": "object", "properties": {"x": {"not": {"type": "string"}}}}, "not"),
                         ({"type": "object", "patternProperties": {".*": {}}}, "patternProperties"),
                         ({"type": "object", "properties": {"x": {"type": "string", "format": "color"}}}, "format"),
                         ({"type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}}, "$ref"),
                         ({"type": "tuple"}, "type")):
        with pytest.raises(RuntimeFailure) as refused:
            schema.prepare(bad, where="tools[0].function.parameters")
        assert refused.value.kind is ErrorKind.INVALID_PARAMS and refused.value.detail == keyword
        assert "tools[0].function.parameters" in refused.value.message and keyword in refused.value.message


def test_chat_params_take_tools_choices_and_tool_messages() -> None:
    params = ChatParams.from_dict({"messages": [*CONVERSATION[1:3], {**CONVERSATION[3]}], "tools": [WEATHER],
                                   "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False})
    assert params.messages[1]["tool_calls"][0]["function"]["arguments"] == "{\"city\": \"Paris\"}"
    assert params.messages[2] == {"role": "tool", "tool_call_id": CONVERSATION[3]["tool_call_id"], "content": "{\"temp_c\": 21}"}
    assert ChatParams.from_dict(params.to_dict()) == params
    for bad in ({"tool_choice": "sometimes"}, {"tools": [{"type": "function", "function": {"name": "has space"}}]},
                {"messages": [{"role": "tool", "content": "x"}]}):
        with pytest.raises(RuntimeFailure):
            ChatParams.from_dict({"messages": [{"role": "user", "content": "hi"}], **bad})
    with pytest.raises(RuntimeFailure, match="not in 'tools'"):
        ToolRun(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "other"}}, template=None)
