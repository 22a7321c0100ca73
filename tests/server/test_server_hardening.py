"""The API as a hostile client meets it (issue 22): a model is a library id or name, nothing else; only
the server's own host names are answered; the work a request asks for is bounded before the engine;
invalid text is a 400 naming its field; running work shows in /health."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from app.runtime.protocol import RuntimeFailure
from app.server.limits import Limits

from .conftest import Served, wait_for


def chat(served: Served, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{served.v1}/chat/completions", content=content, headers={"content-type": "application/json", **headers}, timeout=600)


def hello(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}


def error(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json()["error"])


def test_a_model_is_a_library_id_or_name_and_any_path_is_the_same_404(served: Served, tmp_path: Any) -> None:
    loaded_path = next(m["path"] for m in served.client.call("models.list")["models"] if m["id"] == served.model)
    folder = tmp_path / "folder"
    folder.mkdir()
    for ref in ("/etc/shadow", "/no/such/model.gguf", str(folder), loaded_path):  # the loaded model's own file too
        for route, body in (("chat/completions", hello(ref)), ("completions", {"model": ref, "prompt": "One,", "max_tokens": 2})):
            got = httpx.post(f"{served.v1}/{route}", json=body, timeout=120)
            assert got.status_code == 404, (ref, got.text)
            assert error(got)["message"] == f"No model called {ref!r} in the library. GET /v1/models lists them."
    name = next(m["name"] for m in served.client.call("models.list")["models"] if m["id"] == served.model)
    assert chat(served, hello(name.upper())).status_code == 200  # a name, in any case, is fine


def test_only_the_servers_own_host_names_are_answered(served: Served) -> None:
    port = served.url.rsplit(":", 1)[1]
    rebound = chat(served, hello(served.model), host=f"evil.example:{port}")
    assert rebound.status_code == 400 and error(rebound)["code"] == "invalid_host"
    assert httpx.get(f"{served.v1}/models", headers={"host": "evil.example"}).status_code == 400
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST"):
        assert httpx.get(f"{served.v1}/models", headers={"host": host}).status_code == 200, host


@pytest.mark.parametrize(("options", "words"), [
    ({"api_key": " " * 12}, "An API key of only spaces is no key"),
    ({"api_key": "two words here"}, "An API key may hold only letters, digits and punctuation"),
    ({"cors_origins": ["*"]}, "'*' is not a web origin"),
    ({"cors_origins": ["http://localhost:3000/app"]}, "'http://localhost:3000/app' is not a web origin"),
    ({"limits": {"messages": 0}}, "The server limit 'messages' must be a whole number of at least 1"),
])
def test_a_bad_key_origin_or_limit_is_refused_at_start(served: Served, options: dict[str, Any], words: str) -> None:
    with pytest.raises(RuntimeFailure) as refused:
        served.client.call("server.start", {"port": 0, **options})  # checked before "already running"
    assert words in refused.value.message


def test_the_work_a_request_asks_for_is_bounded_before_the_engine(served: Served) -> None:
    limits = Limits()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"messages": [{"role": "user", "content": ""}] * (limits.messages + 1)}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * (limits.chars + 1)}]}, "messages.0.content"),
        ({"stop": ["x" * (limits.stop_chars + 1)]}, "stop.0"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "e", "schema": {"enum": [str(i) for i in range(limits.schema_items + 1)]}}}},
         "response_format.json_schema.schema.enum"),
    ]
    huge = {"enum": [str(i) for i in range(50_000)]}  # the 94 s enum of the issue: over the size bound first
    cases.append(({"response_format": {"type": "json_schema", "json_schema": {"name": "h", "schema": huge}}}, "response_format.json_schema.schema"))
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(limits.schema_depth):
        deep = {"type": "array", "items": deep}
    cases.append(({"response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": deep}}}, "response_format.json_schema.schema"))
    for extra, param in cases:
        got = chat(served, {**hello(served.model), **extra})
        assert got.status_code == 400, (param, got.text[:300])
        assert error(got)["code"] == "limit_exceeded" and error(got)["param"].startswith(param), error(got)
    assert not [e for e in served.log() if e.get("start_order") and e.get("status") == 400]  # none of them reached the engine

    served.restart(limits={"messages": 2})  # the bounds are the server's settings
    try:
        assert chat(served, {**hello(served.model), "messages": [{"role": "user", "content": "a"}] * 3}).status_code == 400
        assert chat(served, {**hello(served.model), "messages": [{"role": "user", "content": "a"}] * 2}).status_code == 200
    finally:
        served.restart()


def test_invalid_text_in_any_field_is_a_400_naming_it(served: Served) -> None:
    bad = "\\ud800"  # a lone surrogate, as a JSON escape: valid JSON, not valid text
    m = json.dumps(served.model)
    for raw, param in (
        (f'{{"model": {m}, "messages": [{{"role": "user", "content": "a{bad}b"}}]}}', "messages.0.content"),
        (f'{{"model": {m}, "messages": [{{"role": "system", "content": "{bad}"}}, {{"role": "user", "content": "hi"}}]}}', "messages.0.content"),
        (f'{{"model": {m}, "messages": [{{"role": "user", "content": "hi", "name": "{bad}"}}]}}', "messages.0.name"),
        (f'{{"model": {m}, "messages": [{{"role": "user", "content": "hi"}}], "stop": ["{bad}"]}}', "stop.0"),
        (f'{{"model": "{bad}", "messages": [{{"role": "user", "content": "hi"}}]}}', "model"),
    ):
        got = chat(served, raw.encode())
        assert got.status_code == 400, (param, got.text)
        assert error(got)["code"] == "invalid_text" and error(got)["param"] == param and "lone surrogate" in error(got)["message"]
    got = httpx.post(f"{served.v1}/completions", content=f'{{"model": {m}, "prompt": "x{bad}"}}'.encode(), headers={"content-type": "application/json"})
    assert got.status_code == 400 and error(got)["param"] == "prompt"


def test_health_counts_work_the_engine_still_holds(served: Served) -> None:
    """A request whose client left is counted in /health until the engine has dropped it."""
    import asyncio
    import queue

    def health() -> dict[str, int]:
        return dict(httpx.get(f"{served.url}/health").json()["queue"])

    assert health()["working"] == 0
    studio: queue.Queue[Any] = queue.Queue()  # a long studio chat holds the engine, so the API request waits behind it
    # Pure greedy without a repeat penalty, SmolLM2 loops on this question: it runs to max_tokens, never to an early end.
    long_chat = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
                 "sampling": {"max_tokens": 1500, "temperature": 0, "repeat_penalty": 1.0}}
    chat_id = served.client.submit("chat", long_chat, studio.put)
    try:
        while studio.get(timeout=600).event.value != "token":
            pass

        async def leave_while_queued() -> dict[str, int]:
            async with httpx.AsyncClient(timeout=600) as client:
                request = asyncio.ensure_future(client.post(f"{served.v1}/chat/completions", json=hello(served.model)))
                while health()["working"] < 1:
                    await asyncio.sleep(0.05)
                seen = health()
                request.cancel()  # the client goes away while its request waits
                return seen

        seen = asyncio.run(leave_while_queued())
        assert seen == {"used": 1, "limit": seen["limit"], "working": 1}
        assert wait_for(lambda: health()["used"] == 0)  # its place is freed at once...
        assert health()["working"] == 1  # ...but the engine still holds its job, and /health says so
    finally:
        served.client.cancel(chat_id)
    assert wait_for(lambda: health()["working"] == 0)  # the engine reached it and dropped it


def test_a_prompt_far_over_the_context_is_refused_from_its_beginning(served: Served) -> None:
    for route, body in (("completions", {"model": served.model, "prompt": "word " * 50_000, "max_tokens": 2}),
                        ("chat/completions", {**hello(served.model), "messages": [{"role": "user", "content": "word " * 50_000}]})):
        got = httpx.post(f"{served.v1}/{route}", json=body, timeout=600)
        assert got.status_code == 400 and error(got)["code"] == "context_length_exceeded", got.text[:300]
        assert "its first 16,384 characters alone are" in error(got)["message"]  # 2k context: only that much was tokenized
