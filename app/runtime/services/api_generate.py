"""An API request's generation on the loaded llama.cpp model (runs on the engine thread).

The chat page's path (`LlamaCppBackend.chat`) keeps a conversation inside the context with
policies that forget old turns; an API client sends the whole prompt every time and wants either
all of it or a clear error, plus raw completions and grammars (JSON mode). So an API request is
turned into tokens here (chat messages through the model's own template, or a raw prompt) and a
GBNF grammar (from ``response_format``), and runs through `LlamaCppBackend.complete`: the same
token loop as the studio's chat, with the prompt kept whole (else "context_length_exceeded") and
the studio conversation's KV saved and restored around it by the backend.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from app.runtime.backends.base import Completion, IsCancelled, TokenSink
from app.runtime.jobs import JobStopped
from app.runtime.protocol import ErrorKind, JobStatus, RuntimeFailure, Sampling

log = logging.getLogger(__name__)


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """A GBNF grammar (root rule "root") for OpenAI's ``response_format``; None for plain text.

    A schema the converter cannot express is INVALID_PARAMS here; a grammar it writes that
    llama.cpp cannot parse is refused by the backend before the request touches the context.
    """
    if not response_format or response_format.get("type", "text") == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    kind = response_format.get("type")
    if kind == "json_object":
        return str(JSON_GBNF)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "response_format json_schema needs a 'schema' object")
        try:
            return str(json_schema_to_gbnf(json.dumps(schema)))
        except Exception as exc:  # the converter raises many kinds for schemas it cannot express: the client's problem
            log.info("JSON schema refused for a grammar", exc_info=True)
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"This JSON schema cannot be turned into a grammar: {exc}") from None
    raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown response_format type {kind!r}: use text, json_object or json_schema.")


# A prompt with more characters than this per token of context is first tokenized in part: the
# part alone over the context refuses it without tokenizing (or templating) all of it.
EARLY_CHARS_PER_TOKEN = 8


def refuse_if_surely_too_long(backend: Any, texts: Sequence[str]) -> None:
    """Refuse a prompt far larger than the context after tokenizing only its first
    ``n_ctx * EARLY_CHARS_PER_TOKEN`` characters: a prefix that alone holds more tokens than the
    context cannot fit (a 750,000-character prompt took 3 s to tokenize on a loaded machine,
    only to be refused)."""
    n_ctx = int(getattr(backend, "n_ctx", 0) or 0)
    span = n_ctx * EARLY_CHARS_PER_TOKEN
    if n_ctx <= 0 or sum(len(t) for t in texts) <= span:
        return
    prefix, left = [], span
    for text in texts:
        prefix.append(text[:left])
        left -= len(prefix[-1])
        if left <= 0:
            break
    counted = len(backend.tokenize("".join(prefix), add_bos=False, special=False))
    if counted > n_ctx:
        raise RuntimeFailure(
            ErrorKind.INVALID_PARAMS,
            f"This prompt is more than {n_ctx} tokens (its first {span:,} characters alone are {counted}); "
            f"the loaded model's context holds {n_ctx}. Shorten it (context_length_exceeded).",
        )


def prompt_tokens(backend: Any, *, messages: Sequence[dict[str, str]] | None, prompt: str | None) -> list[int]:
    """Chat messages through the model's template, or a raw completion prompt (with BOS as the model wants)."""
    texts = [str(m.get("content") or "") for m in messages] if messages is not None else [prompt or ""]
    refuse_if_surely_too_long(backend, texts)
    if messages is not None:
        return list(backend.tokenize_chat(messages))
    return list(backend.tokenize(prompt or "", add_bos=True, special=False))


def generate(
    backend: Any,
    *,
    messages: Sequence[dict[str, str]] | None,
    prompt: str | None,
    sampling: Sampling,
    response_format: dict[str, Any] | None,
    on_token: TokenSink,
    is_cancelled: IsCancelled,
    drafter: Any = None,
) -> Completion:
    """One API request (a chat when ``messages`` is given, else a raw completion) on a `LlamaCppBackend`."""
    grammar = grammar_for(response_format)
    _unless_cancelled(is_cancelled)  # each costly step before the first token ends a request whose client left
    tokens = prompt_tokens(backend, messages=messages, prompt=prompt)
    _unless_cancelled(is_cancelled)
    # ``drafter``: speculative decoding (app.runtime.spec), off by itself under a grammar
    return backend.complete(tokens, sampling, grammar=grammar, on_token=on_token, is_cancelled=is_cancelled,  # type: ignore[no-any-return]
                            drafter=drafter)


def _unless_cancelled(is_cancelled: IsCancelled) -> None:
    if is_cancelled():
        raise JobStopped(JobStatus.CANCELLED, "Cancelled before the answer started (the client went away).")


def generate_with_tools(backend: Any, params: Any, *, on_token: TokenSink, is_cancelled: IsCancelled) -> tuple[Completion, dict[str, Any]]:
    """An API chat with tools (app.runtime.tools): on llama.cpp the rendered prompt must fit whole and
    the studio conversation's KV is kept around it, as for any API request; the result's extra fields
    are ``tool_calls`` and ``tools``. Speculation stays off: the calls run under a grammar."""
    from app.runtime.tools.calls import for_backend

    run = for_backend(params, backend)
    assert run is not None  # the caller checked that the request involves tools
    sink = run.stream(on_token)
    if backend.name == "llama.cpp":
        tokens = list(backend.tokenize(run.render(params.messages), add_bos=False, special=True))
        completion = backend.complete(tokens, params.sampling, on_token=sink, is_cancelled=is_cancelled, mask=run.mask)
    else:
        completion = backend.chat(params.messages, params.sampling, on_token=sink, is_cancelled=is_cancelled,
                                  context_policy="stop_at_limit", **run.backend_kwargs())
    return run.apply(completion)
