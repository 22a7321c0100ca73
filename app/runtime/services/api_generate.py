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
from app.runtime.protocol import ErrorKind, RuntimeFailure, Sampling

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


def prompt_tokens(backend: Any, *, messages: Sequence[dict[str, str]] | None, prompt: str | None) -> list[int]:
    """Chat messages through the model's template, or a raw completion prompt (with BOS as the model wants)."""
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
    tokens = prompt_tokens(backend, messages=messages, prompt=prompt)
    # ``drafter``: speculative decoding (app.runtime.spec), off by itself under a grammar
    return backend.complete(tokens, sampling, grammar=grammar, on_token=on_token, is_cancelled=is_cancelled,  # type: ignore[no-any-return]
                            drafter=drafter)
