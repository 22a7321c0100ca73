"""Hearth's OpenAI-compatible HTTP API over the same engine as the studio (issue 10).

- `app`: the FastAPI application (endpoints, streaming); `schemas`, `params`, `errors`: OpenAI's
  bodies and error format; `middleware`: body bound and request log; `queue`: admission (429).
- `runner`: uvicorn in a thread; `local`: the client that queues API jobs on this process's
  dispatcher; `config`: safe-by-default settings.
- `generate` and `keep`: the engine-side job (raw prompts, grammars, the GUI conversation's KV
  saved and restored around each request).
- `bench`: streaming decode speed through the server against llama-cpp-python directly.

The service that starts and stops it is app.runtime.services.server.
"""
