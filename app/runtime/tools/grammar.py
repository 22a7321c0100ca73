"""Tool-call grammars compiled by llguidance, applied as the token loop's logits mask (`backends.hooks`).

One compiler for both backends: each backend only hands over its vocabulary as an llguidance
``LLTokenizer`` (llama.cpp from its vocab, torch from its fast tokenizer); the grammar, the
matcher and the mask are the same. llguidance works on bytes, so a call may be spelled with any
tokens.

`CallMask` has two modes:

- **forced** (``tool_choice`` required or a named function): the grammar holds from the first
  token; the format's trigger is already at the end of the prompt, so the reply is the calls.
- **lazy** (``auto``): the model writes freely until the format's trigger appears in its reply;
  from there on the rest of the calls is generated under the grammar (the text after the trigger
  that the trigger's last token already carried is fed to the matcher first).

When the grammar is complete the mask allows nothing, which ends the reply ("stop"). The mask
keeps its own costs (compile, first mask, every mask) for the result and `hearth bench tools`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.runtime.backends.hooks import Constraint
from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)


def check(grammar: str) -> None:
    """Refuse a grammar llguidance cannot compile (a pattern it does not know, say) before any generation."""
    from llguidance import LLMatcher

    is_error, messages = LLMatcher.validate_grammar_with_warnings(LLMatcher.grammar_from_lark(grammar))
    if is_error:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"These tool schemas cannot be turned into a grammar: {messages[0] if messages else 'unknown error'}")


class CallMask:
    """A `LogitsMask` that generates tool calls under a grammar, forced or after a trigger."""

    def __init__(self, tokenizer: Any, grammar: str, *, trigger: str | None = None, trigger_in_body: bool = False,
                 anywhere: bool = True) -> None:
        """``trigger`` None: forced from the first token; else lazy, starting where ``trigger`` appears
        (anywhere in the reply, or only at its start after whitespace)."""
        from llguidance import LLMatcher

        started = time.perf_counter()
        self._tok = tokenizer
        self._matcher = LLMatcher(tokenizer, LLMatcher.grammar_from_lark(grammar), log_level=0)
        if self._matcher.is_error():
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"These tool schemas cannot be turned into a grammar: {self._matcher.get_error()}")
        self.compile_s = time.perf_counter() - started
        self._trigger = trigger.encode("utf-8") if trigger else None
        self._in_body, self._anywhere = trigger_in_body, anywhere
        self.active = trigger is None  # the grammar constrains the reply now
        self.off = False  # lazy, and the reply can no longer start a call (or the matcher failed)
        self._fed = 0  # reply tokens already seen
        self._text = b""  # the reply's bytes while waiting for the trigger
        self.steps, self.mask_s, self.first_mask_s = 0, 0.0, None
        self.error: str | None = None

    def __call__(self, generated: Sequence[int], logits: np.ndarray) -> Constraint:
        new = list(generated[self._fed :])
        self._fed = len(generated)
        if self.off:
            return None
        started = time.perf_counter()
        try:
            if not self.active:
                new = self._wait_for_trigger(new)
                if not self.active:
                    return None
            return self._constrain(new, logits.shape[0])
        finally:
            if self.active:
                spent = time.perf_counter() - started
                self.steps += 1
                self.mask_s += spent
                if self.first_mask_s is None:
                    self.first_mask_s = spent

    def _wait_for_trigger(self, new: list[int]) -> list[int]:
        """Look for the trigger in the reply so far; once found, the tokens that carry what follows it."""
        assert self._trigger is not None
        self._text += self._tok.decode_bytes(new).replace(b"\xff", b"")  # llguidance marks special tokens with 0xff
        text = self._text
        if self._anywhere:
            at = text.find(self._trigger)
        else:
            stripped = text.lstrip()
            if stripped and not (stripped.startswith(self._trigger) or self._trigger.startswith(stripped)):
                self.off = True  # the reply started with something else: it is text
                return []
            at = len(text) - len(stripped) if stripped.startswith(self._trigger) else -1
        if at < 0:
            return []
        self.active = True
        rest = text[at if self._in_body else at + len(self._trigger) :]
        return list(self._tok.tokenize_bytes(rest)) if rest else []

    def _constrain(self, new: list[int], n_vocab: int) -> Constraint:
        m = self._matcher
        if new and not m.consume_tokens(new):
            self.error = m.get_error() or "the reply left the grammar"
            log.warning("tool-call grammar: %s; the rest of the reply is unconstrained", self.error)
            self.off = True
            return None
        if m.is_stopped():
            return []  # the calls are complete: nothing may follow
        bits = np.frombuffer(m.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little").astype(bool)  # one bit per tokenizer entry, padded to 32
        if allowed.shape[0] >= n_vocab:
            return allowed[:n_vocab]
        return np.concatenate([allowed, np.zeros(n_vocab - allowed.shape[0], dtype=bool)])  # a model's padded vocabulary

    def costs(self) -> dict[str, Any]:
        """What the grammar cost this reply (ms): compile, the first mask, and the mean per constrained token."""
        return {
            "compile_ms": round(self.compile_s * 1000, 3),
            "first_mask_ms": round((self.first_mask_s or 0.0) * 1000, 3),
            "mask_ms_per_token": round(self.mask_s * 1000 / self.steps, 4) if self.steps else 0.0,
            "constrained_tokens": self.steps,
        }


def llama_cpp_tokenizer(vocab: Any, eog: Sequence[int]) -> Any:
    """llguidance's view of a llama.cpp vocabulary (about 0.3 s for 49k tokens: cache it per model)."""
    import warnings

    from llguidance.llamacpp import lltokenizer_from_vocab

    with warnings.catch_warnings():  # it asks llama_token_get_attr once per token, which warns each time that it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(vocab, eos_token=list(eog))


def hf_tokenizer(tokenizer: Any, n_vocab: int, eos: Sequence[int]) -> Any:
    """llguidance's view of a transformers fast tokenizer, sized to the model's logits."""
    from llguidance.hf import from_tokenizer

    return from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=sorted(eos) or None)
