"""`hearth bench abuse`: the API server against the requests of a hostile or clumsy client (issue 22).

Each bad request is sent to a real server on 127.0.0.1 (this process's runtime with the embedded
model, as `hearth serve` runs it), then one normal request right after it. The figures per bad
request: the status it got and how long its answer took, and how long the next normal request took
against the median of normal requests measured first (what the bad one left the engine doing).
The process's memory (the server and the engine both live in it) is taken before and after.

Goals: every bad request answered with a 4xx within a second; the next normal request no slower
than one normal request's time on top of its own; memory back to where it started (within a
margin for allocator noise). The JSON says for each whether it met them.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

ANSWER_WITHIN_MS = 1000.0
MEMORY_MARGIN_MIB = 64.0
NORMAL = [{"role": "user", "content": "Say hi."}]


@dataclass(frozen=True)
class Bad:
    """One bad request: ``send(http, url, model)`` returns the response (None when the client left)."""

    name: str
    kind: str
    send: Callable[[httpx.Client, str, str], httpx.Response | None]


def _post(path: str, body: dict[str, Any] | bytes, **headers: str) -> Callable[[httpx.Client, str, str], httpx.Response]:
    def send(http: httpx.Client, url: str, model: str) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        raw = raw.replace(b"@MODEL@", json.dumps(model)[1:-1].encode())
        return http.post(f"{url}{path}", content=raw, headers={"content-type": "application/json", **headers})
    return send


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "@MODEL@", "messages": NORMAL, "max_tokens": 4, **extra}


def _leaves(after_s: float) -> Callable[[httpx.Client, str, str], httpx.Response | None]:
    """A long request whose client goes away after ``after_s``: the engine must not keep working for it."""
    def send(http: httpx.Client, url: str, model: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "Write a very long story. " * 200}], "max_tokens": 4096, "stream": True}
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=after_s) as response:
                for _ in response.iter_bytes():
                    pass
        except httpx.TimeoutException:
            pass
        return None
    return send


def bad_requests() -> list[Bad]:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        deep = {"type": "array", "items": deep}
    nested = b"[" * 100_000 + b"]" * 100_000
    return [
        Bad("model_system_file", "model", _post("/v1/chat/completions", {**_chat(), "model": "/etc/shadow"})),
        Bad("model_missing_path", "model", _post("/v1/chat/completions", {**_chat(), "model": "/no/such/model.gguf"})),
        Bad("model_folder", "model", _post("/v1/chat/completions", {**_chat(), "model": "/tmp"})),
        Bad("host_rebinding", "host", _post("/v1/chat/completions", _chat(), host="evil.example")),
        Bad("messages_50000_empty", "bounds", _post("/v1/chat/completions", _chat(messages=[{"role": "user", "content": ""}] * 50_000))),
        Bad("chars_1_5M", "bounds", _post("/v1/chat/completions", _chat(messages=[{"role": "user", "content": "word " * 300_000}]))),
        Bad("schema_enum_50000", "bounds", _post("/v1/chat/completions", _chat(response_format={
            "type": "json_schema", "json_schema": {"name": "e", "schema": {"enum": [f"v{i}" for i in range(50_000)]}}}))),
        Bad("schema_depth_200", "bounds", _post("/v1/chat/completions", _chat(response_format={
            "type": "json_schema", "json_schema": {"name": "d", "schema": deep}}))),
        Bad("stop_10k_chars", "bounds", _post("/v1/chat/completions", _chat(stop=["x" * 10_000]))),
        Bad("body_nested_100k", "bounds", _post("/v1/chat/completions", b'{"model": "@MODEL@", "messages": [], "user": ' + nested + b"}")),
        Bad("body_5MB", "bounds", _post("/v1/chat/completions", b"x" * (5 * 2**20))),
        Bad("prompt_over_context", "bounds", _post("/v1/completions", {"model": "@MODEL@", "prompt": "word " * 150_000, "max_tokens": 4})),
        Bad("surrogate_in_content", "text", _post("/v1/chat/completions", b'{"model": "@MODEL@", "messages": [{"role": "user", "content": "a\\ud800"}]}')),
        Bad("surrogate_in_model", "text", _post("/v1/chat/completions", b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}')),
        Bad("surrogate_in_stop", "text", _post("/v1/chat/completions", b'{"model": "@MODEL@", "messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]}')),
        Bad("invalid_utf8_body", "text", _post("/v1/chat/completions", b'{"model": "@MODEL@", "messages": [{"role": "user", "content": "\xff\xfe"}]}')),
        Bad("client_leaves_long_prompt", "disconnect", _leaves(0.5)),
    ]


def measure_abuse(*, normal_runs: int = 5) -> dict[str, Any]:
    """Run every bad request against a fresh server; the report (see the module's docstring)."""
    import psutil

    from app.runtime.inprocess import InProcessClient

    process = psutil.Process()
    client = InProcessClient()
    try:
        loaded = client.call("engine.load", {})
        model = str(loaded["model"]["id"])
        url = str(client.call("server.start", {"port": 0, "max_tokens": 64})["url"])
        with httpx.Client(timeout=300) as http:
            _normal(http, url, model)  # first use: allocations that stay
            baseline = statistics.median(_normal(http, url, model) for _ in range(max(normal_runs, 1)))
            gc.collect()
            rss_before = process.memory_info().rss
            rows = [_one(http, url, model, bad, baseline) for bad in bad_requests()]
            gc.collect()
            rss_after = process.memory_info().rss
            working = int(http.get(f"{url}/health").json()["queue"].get("working", -1))
    finally:
        client.call("server.stop")
        client.close()
    grown = (rss_after - rss_before) / 2**20
    answered = [r for r in rows if r["status"] is not None]
    return {
        "model": model,
        "settings": {"normal_request": {"messages": NORMAL, "max_tokens": 4}, "answer_within_ms": ANSWER_WITHIN_MS,
                     "memory_margin_mib": MEMORY_MARGIN_MIB, "normal_runs": normal_runs},
        "normal_ms": round(baseline, 1),
        "requests": rows,
        "memory": {"rss_before_mib": round(rss_before / 2**20, 1), "rss_after_mib": round(rss_after / 2**20, 1), "grown_mib": round(grown, 1),
                   "ok": grown <= MEMORY_MARGIN_MIB},
        "working_after": working,
        "ok": all(r["ok"] for r in rows) and grown <= MEMORY_MARGIN_MIB and working == 0 and bool(answered),
    }


def _normal(http: httpx.Client, url: str, model: str) -> float:
    started = time.perf_counter()
    response = http.post(f"{url}/v1/chat/completions", json={"model": model, "messages": NORMAL, "max_tokens": 4, "temperature": 0, "seed": 1})
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


def _one(http: httpx.Client, url: str, model: str, bad: Bad, baseline_ms: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        response = bad.send(http, url, model)
        status: int | None = response.status_code if response is not None else None
        body = response.text[:200] if response is not None else ""
    except httpx.HTTPError as exc:
        status, body = None, f"{type(exc).__name__}: {exc}"
    answered_ms = (time.perf_counter() - started) * 1000
    next_ms = _normal(http, url, model)
    ok_next = next_ms <= 2 * baseline_ms + 100  # its own time plus at most one normal request's (and a little noise)
    if bad.kind == "disconnect":
        ok = ok_next
    else:
        ok = status is not None and 400 <= status < 500 and answered_ms <= ANSWER_WITHIN_MS and ok_next
    return {"name": bad.name, "kind": bad.kind, "status": status, "answered_ms": round(answered_ms, 1), "next_ms": round(next_ms, 1),
            "ok": ok, "answer": body}
