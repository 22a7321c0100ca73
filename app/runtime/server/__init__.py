"""Hearth's OpenAI-compatible HTTP API over the same engine as the studio (issue 10).

- `app`: the FastAPI application (endpoints, streaming); `schemas`, `params`, `errors`: OpenAI's
  bodies and error format; `middleware`: body bound and request log; `queue`: admission (429).
- `runner`: uvicorn in a thread; `local`: the client that queues API jobs on this process's
  dispatcher; `config`: safe-by-default settings.
- `generate`: the engine-side job: an API request's tokens and grammar, run by the llama.cpp
  backend's one token loop with the GUI conversation's KV saved and restored around it
  (app.runtime.backends.llama_keep).
- `bench`: streaming decode speed through the server against llama-cpp-python directly.

The service that starts and stops it is app.runtime.services.server.
"""
