"""Tool calls with the real SmolLM2 on both backends (grammar from llguidance applied in each token
loop), tool_choice "auto" through the engine with a scripted backend (SmolLM2's own choice is not
reliable), and a call cut off by max_tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from app.runtime import hardware, library
from app.runtime.backends.base import Completion
from app.runtime.backends.llama_cpp import LlamaCppBackend
from app.runtime.jobs import JobContext
from app.runtime.chat_params import ChatParams
from app.runtime.protocol import Event, EventKind
from app.runtime.services.engine import EngineService
from app.runtime.tools.calls import for_backend
from app.runtime.tools.grammar import CallMask

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                                                           "required": ["city", "unit"]}}}
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                        "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                                                                                       "b": {"type": "integer", "minimum": -1000, "maximum": 1000}},
                                                       "required": ["a", "b"]}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}


@pytest.fixture(scope="module")
def llama(model_path: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(model_path, {"n_ctx": 1024, "n_threads": 1})
    yield backend
    backend.close()


def _chat(backend: Any, request: dict[str, Any]) -> tuple[Completion, dict[str, Any], list[str]]:
    params = ChatParams.from_dict({"sampling": {"temperature": 0, "max_tokens": 64}, **request})
    run = for_backend(params, backend)
    assert run is not None
    shown: list[str] = []
    done = backend.chat(params.messages, params.sampling, on_token=run.stream(shown.append), is_cancelled=lambda: False, **run.backend_kwargs())
    completion, extra = run.apply(done)
    return completion, extra, shown


def _valid(call: dict[str, Any]) -> dict[str, Any]:
    args = json.loads(call["function"]["arguments"])
    jsonschema.validate(args, SCHEMAS[call["function"]["name"]])
    return args


def test_required_gives_a_valid_call_from_smollm2_and_streams_no_call_text(llama: LlamaCppBackend) -> None:
    completion, extra, shown = _chat(llama, {"messages": [{"role": "user", "content": "What's the weather like in Paris?"}],
                                             "tools": [WEATHER, ADD], "tool_choice": "required"})
    assert completion.finish_reason == "tool_calls" and extra["tools"]["format"] == "hearth"
    (call,) = extra["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    _valid(call)
    assert shown == [] and completion.text == ""
    grammar = extra["tools"]["grammar"]
    assert grammar["constrained_tokens"] > 3 and grammar["mask_ms_per_token"] > 0


def test_a_named_function_is_the_one_called_and_a_cut_off_call_is_no_call(llama: LlamaCppBackend) -> None:
    ask = {"messages": [{"role": "user", "content": "Add 2 and 40."}], "tools": [WEATHER, ADD],
           "tool_choice": {"type": "function", "function": {"name": "add"}}}
    completion, extra, _ = _chat(llama, ask)
    (call,) = extra["tool_calls"]
    assert completion.finish_reason == "tool_calls" and call["function"]["name"] == "add"
    assert set(_valid(call)) == {"a", "b"}

    cut, extra, _ = _chat(llama, {**ask, "sampling": {"temperature": 0, "max_tokens": 4}})
    assert cut.finish_reason == "length" and extra["tool_calls"] is None and "max_tokens" in extra["tools"]["error"]


def test_auto_starts_the_grammar_at_the_trigger(llama: LlamaCppBackend) -> None:
    """The lazy mask with SmolLM2's real vocabulary: free text first, then only the call's grammar."""
    run = for_backend(ChatParams.from_dict({"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}), llama)
    assert run is not None and isinstance(run.mask, CallMask) and not run.mask.active
    tok = llama.grammar_tokenizer()
    import numpy as np

    logits = np.zeros(llama._kv.n_vocab, dtype=np.float32)
    before = tok.tokenize_str("Let me look that up.\n")
    assert run.mask(before, logits) is None and not run.mask.active  # free text: no constraint
    reply = before + tok.tokenize_str("<tool_call>\n{\"name\": \"")
    allowed = run.mask(reply, logits)
    assert run.mask.active and isinstance(allowed, np.ndarray)
    assert allowed[tok.tokenize_str("get")[0]] and not allowed[tok.tokenize_str("Hello")[0]]


class _Scripted:
    """A backend that answers with a scripted reply (a model's free choice under tool_choice auto)."""

    name = "scripted"
    chat_template = None
    template_tokens: dict[str, str] = {}

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = list(pieces)
        self.prompts: list[str] = []

    def chat(self, messages: Sequence[dict[str, Any]], sampling: Any, *, on_token: Any, is_cancelled: Any, context_policy: str = "",
             chat_template: str | None = None, render: Any = None, mask: Any = None) -> Completion:
        self.prompts.append(render[0](messages))
        for piece in self.pieces:
            on_token(piece)
        return Completion("".join(self.pieces), "stop", 40, 12, 0, 0.01, 0.01)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("pieces, calls", [
    (["The answer", " is 42."], 0),
    (["Checking.", "\n<tool", "_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"celsius\"}}\n</tool_call>"], 1),
])
def test_auto_lets_the_model_choose_through_the_engine(model_path: Path, pieces: list[str], calls: int) -> None:
    models = library.scan([])
    engine = EngineService(models=lambda: models, hardware=hardware.probe, default_prefs=lambda: {})
    scripted = _Scripted(pieces)
    engine._backend, engine._model = scripted, library.resolve(None, models)  # type: ignore[assignment]
    events: list[Event] = []
    ctx = JobContext("chat", events.append)
    history = [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 degrees"}, {"role": "user", "content": "And again?"}]
    result = engine.chat(ChatParams.from_dict({"messages": history, "tools": [WEATHER]}), ctx)
    streamed = [e.data["text"] for e in events if e.event is EventKind.TOKEN]
    assert "-3 degrees" in scripted.prompts[0] and "<tools>" in scripted.prompts[0]  # the result went back into the prompt
    if calls:
        assert result.finish_reason == "tool_calls" and result.text == "Checking."
        assert result.tool_calls is not None and result.tool_calls[0]["id"].startswith("call_") and _valid(result.tool_calls[0])["city"] == "Oslo"
        assert "".join(streamed) == "Checking.\n"  # the call's text never streams
    else:
        assert result.finish_reason == "stop" and result.tool_calls is None and result.text == "The answer is 42."
        assert "".join(streamed) == "The answer is 42."


def test_the_torch_backend_applies_the_same_grammar(smollm2_hf: Path) -> None:
    import torch

    from app.runtime.backends.torch import TorchBackend

    threads = torch.get_num_threads()
    backend = TorchBackend(smollm2_hf, {"n_ctx": 512, "threads": 1})  # one thread: the CI machine is shared
    try:
        completion, extra, shown = _chat(backend, {"messages": [{"role": "user", "content": "Weather in Rome, in celsius?"}],
                                                   "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                                                   "sampling": {"temperature": 0, "max_tokens": 48}})
    finally:
        backend.close()
        torch.set_num_threads(threads)
    assert completion.finish_reason == "tool_calls" and shown == []
    (call,) = extra["tool_calls"]
    assert call["function"]["name"] == "get_weather" and _valid(call)["unit"] in ("celsius", "fahrenheit")


def test_the_tools_bench_reports_valid_calls_and_the_grammar_cost() -> None:
    from app.runtime.tools import bench as tools_bench

    assert len(tools_bench.load_schemas()) >= 20  # the floor for `hearth bench tools`
    report = tools_bench.run(limit=2, n_threads=1)
    figures = report["figures"]
    assert figures["total"] == 2 and figures["valid"] == 2 and figures["cut_off_by_max_tokens"] == 0
    assert figures["grammar_ms_per_token"] > 0 and figures["first_token_grammar_ms"] > 0
    assert all(row["valid"] and row["arguments"] for row in report["schemas"])


def test_tool_schemas_count_against_the_context_budget(llama: LlamaCppBackend) -> None:
    """The tool list is part of every rendering the context policy measures: with a large one,
    old turns are forgotten that fit without it."""
    turns: list[dict[str, Any]] = []
    for i in range(6):
        turns += [{"role": "user", "content": f"Tell me fact number {i} about lighthouses, briefly please."},
                  {"role": "assistant", "content": f"Fact {i}: lighthouses guide ships along dangerous coasts at night."}]
    messages = [*turns, {"role": "user", "content": "And one more?"}]
    big = {"type": "function", "function": {"name": "lookup", "description": " ".join(["Looks up a lighthouse fact in the archive."] * 70),
                                            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
    plain, _, _ = _chat(llama, {"messages": messages, "tools": [big], "tool_choice": "none", "sampling": {"max_tokens": 1}})
    with_tools, _, _ = _chat(llama, {"messages": messages, "tools": [big], "tool_choice": "auto", "sampling": {"max_tokens": 1}})
    assert plain.context is not None and with_tools.context is not None
    assert plain.context["dropped_messages"] == 0 and with_tools.context["dropped_messages"] > 0
    assert with_tools.context["prompt_tokens"] <= llama.n_ctx
