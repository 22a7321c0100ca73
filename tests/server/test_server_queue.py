"""Concurrency: a fair FIFO queue shared with the engine, 429 past its limit, disconnects that free their place."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import psutil

from .conftest import Served, wait_for

PROMPT = [{"role": "user", "content": "Say something about rivers."}]


def _stream(url: str, model: str, max_tokens: int, results: list[Any], index: int, **extra: Any) -> None:
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "stream": True, "temperature": 0, **extra}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    results[index] = (response.status_code, lines)


def _health(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/health").json()["queue"]


def test_sixteen_streaming_clients_all_finish_first_in_first_out_and_memory_returns(served: Served) -> None:
    url = served.url
    warm: list[Any] = [None]
    _stream(url, served.model, 4, warm, 0)  # first use: allocations that stay (compute buffers, code paths)
    process = psutil.Process()
    before = process.memory_info().rss
    seen = {int(entry["log_seq"]) for entry in served.log()}
    results: list[Any] = [None] * 16
    threads = [threading.Thread(target=_stream, args=(url, served.model, 3, results, i)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert all(status == 200 and lines[-1] == "data: [DONE]" for status, lines in results)
    for _, lines in results:
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    entries = [e for e in served.log() if int(e["log_seq"]) not in seen and e["path"] == "/v1/chat/completions"]
    assert len(entries) == 16 and all(e["status"] == 200 for e in entries)
    by_arrival = sorted(entries, key=lambda e: e["seq"])
    assert [e["start_order"] for e in by_arrival] == sorted(e["start_order"] for e in entries)  # served in arrival order
    assert _health(url)["used"] == 0
    grown = process.memory_info().rss - before
    assert grown < 50 * 2**20, f"process memory grew by {grown / 2**20:.1f} MiB over 16 requests"


def test_past_the_queue_limit_a_429_comes_at_once(served: Served) -> None:
    url = served.restart(queue_limit=2)
    try:
        results: list[Any] = [None, None]
        threads = [threading.Thread(target=_stream, args=(url, served.model, 40, results, i)) for i in range(2)]
        for thread in threads:
            thread.start()
        waited = threading.Event()
        while _health(url)["used"] < 2 and any(t.is_alive() for t in threads):
            waited.wait(0.01)
        refused = httpx.post(f"{url}/v1/chat/completions", json={"model": served.model, "messages": PROMPT, "max_tokens": 4}, timeout=30)
        still_busy = _health(url)["used"]
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
        assert still_busy == 2  # refused while the two admitted ones were still waiting or running
        for thread in threads:
            thread.join(300)
        assert [status for status, _ in results] == [200, 200]
    finally:
        served.restart()


def test_a_client_that_disconnects_mid_stream_frees_its_place_and_blocks_no_one(served: Served) -> None:
    url = served.url
    body = {"model": served.model, "messages": PROMPT, "max_tokens": 48, "stream": True, "temperature": 0, "seed": 3, "stop": ["zzzz"]}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # one real token: hang up
    results: list[Any] = [None]
    _stream(url, served.model, 4, results, 0)  # the next client is served
    assert results[0][0] == 200 and results[0][1][-1] == "data: [DONE]"
    streams = [e for e in served.log() if e.get("stream")]
    abandoned = wait_for(lambda: next((e for e in served.log() if e["log_seq"] == streams[-2]["log_seq"] and e.get("finish_reason")), None))
    assert abandoned["finish_reason"] == "cancelled" and abandoned["completion_tokens"] < 48
    assert _health(url)["used"] == 0
