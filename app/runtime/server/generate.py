"""An API request's generation on the loaded llama.cpp model (runs on the engine thread).

The chat page's path (`LlamaCppBackend.chat`) keeps a conversation inside the context with
policies that forget old turns; an API client sends the whole prompt every time and wants either
all of it or a clear error, plus raw completions and grammars (JSON mode). So API requests take
this path instead: the prompt is rendered with the same chat template (`tokenize_chat`), it must
fit in the context (else "context_length_exceeded"), and the GUI conversation's cached prefix is
saved and restored around it (see `keep`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from app.runtime.backends.base import Completion, IsCancelled, TokenSink
from app.runtime.backends.llama_cpp import PREFILL_CHUNK
from app.runtime.backends.streaming import ByteStopText
from app.runtime.protocol import ErrorKind, RuntimeFailure, Sampling
from app.runtime.server.keep import conversation_kept

log = logging.getLogger(__name__)


def grammar_for(response_format: dict[str, Any] | None, vocab: Any) -> Any:
    """A llama.cpp grammar for OpenAI's ``response_format`` (None for plain text), checked by
    llama.cpp's own parser first: llama-cpp-python adds a grammar it cannot parse to the sampler
    chain as a null pointer, which crashes the process at the first token."""
    if not response_format or response_format.get("type", "text") == "text":
        return None
    grammar = _grammar(response_format)
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
    if not sampler:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "This response_format gives a grammar llama.cpp cannot parse (an empty anyOf, say); simplify the JSON schema.")
    llama_cpp.llama_sampler_free(sampler)
    return grammar


def _grammar(response_format: dict[str, Any]) -> Any:
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    kind = response_format.get("type")
    if kind == "json_object":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "response_format json_schema needs a 'schema' object")
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as exc:  # the converter raises many kinds for schemas it cannot express: the client's problem
            log.info("JSON schema refused for a grammar", exc_info=True)
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"This JSON schema cannot be turned into a grammar: {exc}") from None
    raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown response_format type {kind!r}: use text, json_object or json_schema.")


def prompt_tokens(backend: Any, *, messages: Sequence[dict[str, str]] | None, prompt: str | None) -> list[int]:
    """Chat messages through the model's template, or a raw completion prompt (with BOS as the model wants)."""
    if messages is not None:
        return backend.tokenize_chat(messages)
    llm = backend.llama
    return llm.tokenize((prompt or "").encode("utf-8"), add_bos=True, special=False)


def generate(
    backend: Any,
    tokens: list[int],
    sampling: Sampling,
    *,
    grammar: Any = None,
    on_token: TokenSink,
    is_cancelled: IsCancelled,
) -> tuple[Completion, dict[str, float]]:
    """Sample up to ``sampling.max_tokens`` after ``tokens``; returns the completion and the KV keep costs."""
    import llama_cpp

    llm = backend.llama
    n_ctx = int(llm.n_ctx())
    if not tokens:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "The prompt is empty.")
    if len(tokens) >= n_ctx:
        raise RuntimeFailure(
            ErrorKind.INVALID_PARAMS,
            f"This prompt is {len(tokens)} tokens; the loaded model's context holds {n_ctx}. Shorten it (context_length_exceeded).",
        )
    budget = min(sampling.max_tokens, n_ctx - len(tokens))
    vocab = llm._model.vocab
    with conversation_kept(llm) as costs:
        started = time.perf_counter()
        if not _prefill(llm, tokens, is_cancelled):
            return Completion("", "cancelled", len(tokens), 0, 0, time.perf_counter() - started, 0.0), costs
        llm.set_seed(sampling.seed if sampling.seed is not None else int(time.time_ns() & 0x7FFFFFFF))
        text = ByteStopText(sampling.stop)
        n_out, finish, first_at = 0, "length", started
        generator = llm.generate(
            tokens,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
            grammar=grammar,
        )
        try:
            for token in generator:
                if n_out == 0:
                    first_at = time.perf_counter()
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                n_out += 1
                piece, stopped = text.feed(llm.detokenize([token]))
                if piece:
                    on_token(piece)
                if stopped:
                    finish = "stop"
                    break
                if is_cancelled():
                    finish = "cancelled"
                    break
                if n_out >= budget:
                    break
        finally:
            generator.close()
        tail = text.flush(finish == "stop")
        if tail:
            on_token(tail)
        ended = time.perf_counter()
    completion = Completion(
        text=text.text,
        finish_reason=finish,
        prompt_tokens=len(tokens),
        completion_tokens=n_out,
        cached_tokens=0,
        prompt_seconds=first_at - started,
        decode_seconds=ended - first_at,
    )
    return completion, costs


def _prefill(llm: Any, tokens: list[int], is_cancelled: IsCancelled) -> bool:
    """Evaluate all but the last prompt token in chunks, checking cancel between them (as the chat path does).

    Reuses the longest prefix the context already holds (the conversation's system prompt, often).
    """
    held = llm.input_ids[: llm.n_tokens].tolist()
    cached = 0
    for a, b in zip(held, tokens):
        if a != b:
            break
        cached += 1
    end = len(tokens) - 1
    cached = min(cached, end)
    llm.n_tokens = cached  # eval() drops any KV past this point before it decodes
    for start in range(cached, end, PREFILL_CHUNK):
        if is_cancelled():
            return False
        llm.eval(tokens[start : min(start + PREFILL_CHUNK, end)])
    return True
