"""Hearth's OpenAI-compatible HTTP API: a client of the runtime, like the studio and the CLI.

It imports only the runtime's protocol and client (tests/test_import_rules.py): every request
becomes a `server.generate` job (app.runtime.services.server) on the one engine queue of the
process that owns the engine, first in, first out with the studio's own chats.

- `app`: the FastAPI application (endpoints, streaming); `schemas`, `params`, `errors`: OpenAI's
  bodies and error format; `middleware`: body bound and request log; `queue`: admission (429).
- `runner`: uvicorn in a thread; `config`: safe-by-default settings; `front`: what the runtime's
  `server.start` starts, handed to it by the process's entry point (app/__main__.py).

The engine side of a request is app.runtime.services.api_generate; the figures are
app.runtime.bench_server (`hearth bench`).
"""
