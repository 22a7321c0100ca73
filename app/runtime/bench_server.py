"""Figures for the server (`hearth bench`, runtime suite): streaming decode through the API against
llama-cpp-python called directly, and what keeping the studio's conversation cache costs.

Same GGUF, same load settings (the direct side copies what the engine reports), same sampling
(greedy, fixed seed), alternating runs (direct, server, direct, server, ...) so that both sides of
a pair see the same machine load. The server side is timed where a client sees it: the arrival of
each SSE chunk over a real 127.0.0.1 connection. `hearth bench` runs it (its
process hands the HTTP server to the runtime).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from typing import Any

import httpx

from app.runtime.bench import FLUSH, MESSAGES, RUN_TIMEOUT_S, SEED, DirectLlama, Run, Target, _side, figure, summarize
from app.runtime.protocol import Sampling

SERVER_DECODE_RATIO = Target(0.9, at_least=True)  # server streaming decode tok/s / direct decode tok/s


def server_run(http: httpx.Client, url: str, model: str, messages: list[dict[str, str]], sampling: Sampling) -> Run:
    """One streamed chat completion, timed at the client as its chunks arrive."""
    body = {
        "model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens, "temperature": sampling.temperature, "seed": sampling.seed,
    }
    times: list[float] = []
    usage: dict[str, int] = {}
    started = time.perf_counter()
    with http.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=RUN_TIMEOUT_S) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if any(c.get("delta", {}).get("content") for c in chunk.get("choices", ())):
                times.append(time.perf_counter())
    n = int(usage.get("completion_tokens", len(times)))
    if len(times) < 2 or n < 2:
        raise RuntimeError("The model gave fewer than 2 tokens; the bench needs more to time decoding.")
    return Run(times[0] - started, (n - 1) / (times[-1] - times[0]), n, int(usage.get("prompt_tokens", 0)), 0)


def measure_server_stream(*, runs: int = 5, n_tokens: int = 128, keep_tokens: int = 1000) -> dict[str, Any]:
    """Server streaming vs direct llama-cpp-python, alternating; plus the keep cost for a
    ``keep_tokens``-long studio conversation. Returns settings, both sides, figures."""
    from app.runtime.inprocess import InProcessClient
    from app.runtime.library import EMBEDDED_ID, embedded_model_path

    model_path = str(embedded_model_path())
    sampling = Sampling(temperature=0.0, max_tokens=n_tokens, seed=SEED)
    flush = replace(sampling, max_tokens=2)
    client = InProcessClient()
    direct: DirectLlama | None = None
    try:
        status = client.call("engine.load", {"model": model_path}, timeout=RUN_TIMEOUT_S)
        settings = dict(status["settings"])
        url = client.call("server.start", {"port": 0, "max_tokens": max(n_tokens, 16)})["url"]
        direct = DirectLlama(model_path, settings)
        with httpx.Client(trust_env=False) as http:
            direct.run(MESSAGES, sampling)  # warm-up, untimed
            server_run(http, url, EMBEDDED_ID, MESSAGES, sampling)
            pairs: list[tuple[Run, Run]] = []
            for _ in range(runs):
                direct.run(FLUSH, flush)
                d = direct.run(MESSAGES, sampling)
                server_run(http, url, EMBEDDED_ID, FLUSH, flush)
                pairs.append((d, server_run(http, url, EMBEDDED_ID, MESSAGES, sampling)))
            keep = _keep_cost(client, http, url, keep_tokens, runs)
        client.call("server.stop")
    finally:
        if direct is not None:
            direct.close()
        client.close()
    d_runs, s_runs = [p[0] for p in pairs], [p[1] for p in pairs]
    return {
        "settings": {"model_id": EMBEDDED_ID, "load_settings": settings, "sampling": sampling.to_dict(), "messages": MESSAGES,
                     "order": "direct then server, per pair", "client": "httpx streaming over 127.0.0.1, in the same process"},
        "direct": _side(d_runs),
        "server": _side(s_runs),
        "keep": keep,
        "figures": {"server_decode_ratio": figure([s.decode_tps / d.decode_tps for d, s in pairs], SERVER_DECODE_RATIO)},
    }


def _keep_cost(client: Any, http: httpx.Client, url: str, keep_tokens: int, runs: int) -> dict[str, Any]:
    """A studio conversation of about ``keep_tokens`` tokens, then API requests: save/restore times."""
    from app.runtime.library import EMBEDDED_ID

    conversation = [{"role": "system", "content": "word " * max(keep_tokens - 20, 1)}, {"role": "user", "content": "Hello."}]
    held = client.call("chat", {"messages": conversation, "sampling": {"max_tokens": 2, "temperature": 0}})
    costs = []
    for i in range(runs):
        if i % 2 == 0:  # every other request the conversation moved on, so its copy is taken again
            client.call("chat", {"messages": [*conversation, {"role": "assistant", "content": "Hi."}, {"role": "user", "content": f"Turn {i}."}], "sampling": {"max_tokens": 2, "temperature": 0}})
        server_run(http, url, EMBEDDED_ID, [{"role": "user", "content": "Say hi."}], Sampling(temperature=0.0, max_tokens=4, seed=SEED))
        entry = [e for e in client.call("server.log", {"since": 0})["entries"] if e.get("kept_ms")][-1]
        costs.append(entry["kept_ms"])
    saves = [c["save_seconds"] for c in costs if c["save_seconds"] > 0]
    return {
        "conversation_tokens": held["usage"]["prompt_tokens"],
        "save_ms": summarize(saves, 2) if saves else None,
        "restore_ms": summarize([c["restore_seconds"] for c in costs], 2),
        "restore_ms_per_1k_tokens": round(statistics.median(c["restore_seconds"] for c in costs) * 1000 / held["usage"]["prompt_tokens"], 2),
    }

