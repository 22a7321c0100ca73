"""The official openai client against Hearth's server with the real SmolLM2."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from app import cli

from .conftest import Served


@pytest.fixture
def oai(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=120)


def test_models_chat_streaming_and_completion(served: Served, oai: openai.OpenAI) -> None:
    assert served.model in [m.id for m in oai.models.list().data]

    answer = oai.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0, seed=1
    )
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length") and answer.model == served.model
    assert answer.usage.completion_tokens <= 8 and answer.usage.prompt_tokens > 5
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    pieces, usage = [], None
    stream = oai.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0, seed=1,
        stream=True, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert len(pieces) > 1 and usage is not None
    # Same settings, same seed, greedy: the stream says what the plain answer said, token by token.
    assert "".join(pieces) == choice.message.content and usage.completion_tokens == answer.usage.completion_tokens

    text = oai.completions.create(model=served.model, prompt="One, two, three,", max_tokens=6, temperature=0, stop=["\n"])
    assert text.choices[0].text and "\n" not in text.choices[0].text
    assert text.usage.completion_tokens <= 6


def test_errors_come_in_openai_format_with_the_right_status(served: Served, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as too_many:
        oai.chat.completions.create(model=served.model, messages=[{"role": "user", "content": "hi"}], max_tokens=10_000)
    assert too_many.value.body["param"] == "max_tokens"  # type: ignore[index]

    # A tool schema outside the supported subset (app.runtime.tools.schema): a 400 that names the keyword.
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "not": {}}}}}}
    with pytest.raises(openai.BadRequestError) as tools:
        oai.chat.completions.create(model=served.model, messages=[{"role": "user", "content": "hi"}], tools=[tool], max_tokens=4)
    assert "'not'" in tools.value.body["message"] and "tools[0].function.parameters" in tools.value.body["message"]  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as embeddings:  # /v1/embeddings works: tests/server/test_server_embeddings.py
        oai.embeddings.create(model=served.model, input=[[1, 2, 3]])
    assert embeddings.value.body["param"] == "input"  # type: ignore[index]

    too_big = httpx.post(f"{served.v1}/chat/completions", content=b"x" * (5 * 2**20), headers={"content-type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    not_json = httpx.post(f"{served.v1}/chat/completions", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and set(not_json.json()["error"]) == {"message", "type", "param", "code"}
    long_prompt = oai.completions.with_raw_response  # the prompt must fit in the context: a 400 that says so
    with pytest.raises(openai.BadRequestError) as overflow:
        long_prompt.create(model=served.model, prompt="word " * 3000, max_tokens=4)
    assert overflow.value.body["code"] == "context_length_exceeded"  # type: ignore[index]


def test_json_schema_response_format_constrains_the_answer(served: Served, oai: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}
    answer = oai.chat.completions.create(
        model=served.model,
        messages=[{"role": "user", "content": "Invent a person. Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        max_tokens=40, temperature=0,
    )
    person = json.loads(answer.choices[0].message.content or "")
    assert isinstance(person["name"], str) and isinstance(person["age"], int)

    # A schema whose grammar llama.cpp cannot parse is refused (it would crash the process at the first token).
    with pytest.raises(openai.BadRequestError, match="cannot parse"):
        oai.chat.completions.create(
            model=served.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "nothing", "schema": {"anyOf": []}}},
        )
    assert httpx.get(f"{served.url}/health").json()["status"] == "ok"


def test_with_a_key_requests_without_it_get_401(served: Served) -> None:
    url = served.restart(api_key="s3cret-key-for-tests")
    try:
        assert httpx.get(f"{url}/v1/models").status_code == 401
        wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope-nope-nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="s3cret-key-for-tests", max_retries=0)
        assert served.model in [m.id for m in keyed.models.list().data]
    finally:
        served.restart()


def test_a_non_loopback_address_without_a_key_is_refused_at_start(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "without an API key" in capsys.readouterr().err
    from app.runtime.protocol import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="without an API key"):
        served.client.call("server.start", {"host": "0.0.0.0", "port": 0})
    assert served.client.call("server.status")["running"]  # the running server is untouched


def test_hearth_serve_as_a_command_serves_until_terminated() -> None:
    import re
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and "serving at" not in line:
            line = proc.stderr.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert found, f"no address announced: {line!r}"
        listed = openai.OpenAI(base_url=found.group(1), api_key="unused", max_retries=0).models.list()
        assert listed.data and listed.data[0].owned_by == "embedded"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
