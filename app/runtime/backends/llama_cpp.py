"""GGUF models through llama-cpp-python: load with explicit options, stream a chat, close.

Generation runs token by token through `Llama.generate` (not `create_chat_completion`), so the
backend counts tokens exactly, checks cancel between every token, and owns stop strings; the
prompt is rendered with the model's own chat template from its GGUF metadata (or a person's
override, or ChatML when the model's is broken: see `templates`). `Llama.generate` reuses the
longest cached prefix, so a later turn only evaluates its new tokens.

A conversation longer than the context never fails: a context policy (see `context`) forgets whole
old turns, the KV cache drops their span and shifts the rest in place, and the result's
``context`` says how many messages the model no longer remembers.
"""

from __future__ import annotations

import ctypes
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.runtime.backends import context as window_policy
from app.runtime.backends.base import Completion, IsCancelled, TokenSink
from app.runtime.backends.context import Memory, Window
from app.runtime.backends.streaming import ByteStopText
from app.runtime.backends.templates import FALLBACK_TEMPLATE, ChatTemplates, Formatter, render, template_tokens
from app.runtime.protocol import ErrorKind, RuntimeFailure, Sampling

__all__ = ["FALLBACK_TEMPLATE", "SETTINGS", "LlamaCppBackend"]

log = logging.getLogger(__name__)

# The `llama_cpp.Llama` arguments a plan may set.
SETTINGS = frozenset(
    ("n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch", "n_gpu_layers", "tensor_split", "flash_attn",
     "type_k", "type_v", "use_mmap", "use_mlock", "op_offload", "seed")
)
PREFILL_CHUNK = 256  # tokens per prompt-processing step; about a second at the slowest CPU speeds
_UNKNOWN_ARCH = re.compile(r"unknown model architecture: '([^']*)'")


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, model_path: str | Path, settings: Mapping[str, Any]) -> None:
        """``settings`` are `llama_cpp.Llama` keyword arguments, as the planner writes them."""
        import llama_cpp

        unknown = set(settings) - SETTINGS
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown llama.cpp setting(s): {', '.join(sorted(unknown))}")
        self.settings = dict(settings)
        self._llama_cpp = llama_cpp
        started = time.perf_counter()
        self._llm = _load(llama_cpp, Path(model_path), self.settings)
        self.load_seconds = time.perf_counter() - started
        llm = self._llm
        self._vocab = llm._model.vocab
        self._templates = ChatTemplates(llm.metadata.get("tokenizer.chat_template"), **template_tokens(llm))
        self._memory: Memory | None = None
        log.info("loaded %s in %.2f s with %s", Path(model_path).name, self.load_seconds, self.settings)

    @property
    def n_ctx(self) -> int:
        return self._llm.n_ctx()

    @property
    def template_source(self) -> str:
        """"model", or "fallback (ChatML)" when the file has no usable template."""
        return self._templates.source

    @property
    def chat_template(self) -> str | None:
        """The model's embedded chat template as the file has it, for a person to view or copy into an override."""
        return self._templates.model_template

    @property
    def llama(self) -> Any:
        """The `llama_cpp.Llama` itself, for the API server's raw completions and grammars
        (app.runtime.server.generate); like everything here, for the engine thread only."""
        return self._llm

    def held_tokens(self) -> list[int]:
        """The tokens whose KV the context holds now, in position order (after any shift)."""
        return self._llm.input_ids[: self._llm.n_tokens].tolist()

    def tokenize_chat(self, messages: Sequence[dict[str, str]], chat_template: str | None = None) -> list[int]:
        formatter, _ = self._templates.pick(messages, chat_template)
        return self._tokens(formatter, messages)

    def _tokens(self, formatter: Formatter, messages: Sequence[dict[str, str]]) -> list[int]:
        return self._llm.tokenize(render(formatter, messages).encode("utf-8"), add_bos=False, special=True)

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        sampling: Sampling,
        *,
        on_token: TokenSink,
        is_cancelled: IsCancelled,
        context_policy: str = window_policy.ROLLING_WINDOW,
        chat_template: str | None = None,
    ) -> Completion:
        if context_policy not in window_policy.POLICIES:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown context policy {context_policy!r}. Choose one of: {', '.join(window_policy.POLICIES)}.")
        llm, llama_cpp = self._llm, self._llama_cpp
        formatter, template = self._templates.pick(messages, chat_template)

        def tokens(some: Sequence[dict[str, str]]) -> list[int]:
            return self._tokens(formatter, some)

        reserve = window_policy.reserve_for(sampling.max_tokens, self.n_ctx)
        window = window_policy.fit_window(messages, context_policy, n_ctx=self.n_ctx, reserve=reserve, render=tokens, floor=self._floor(messages))
        prompt = window.tokens
        shifted = self._follow_window(window, tokens)
        cached = min(window_policy.common_prefix(self.held_tokens(), prompt), len(prompt) - 1)
        self._memory = Memory(window.messages, window.start, window.end)
        started = time.perf_counter()
        if not self._prefill(prompt, cached, is_cancelled):
            report = self._report(context_policy, window, shifted, cached)
            return Completion("", "cancelled", len(prompt), 0, cached, time.perf_counter() - started, 0.0, context=report, template=template)
        llm.set_seed(sampling.seed if sampling.seed is not None else int(time.time_ns() & 0x7FFFFFFF))
        text = ByteStopText(sampling.stop)
        n_out, finish = 0, "length"
        first_at = started
        pending: list[int] | None = prompt
        while pending is not None:
            generator = llm.generate(
                pending,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                min_p=sampling.min_p,
                temp=sampling.temperature,
                repeat_penalty=sampling.repeat_penalty,
            )
            pending = None
            try:
                for token in generator:
                    if n_out == 0:
                        first_at = time.perf_counter()
                    if llama_cpp.llama_vocab_is_eog(self._vocab, token):
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
                    if n_out >= sampling.max_tokens:
                        break
                    if llm.n_tokens >= self.n_ctx:  # no room left to evaluate this token
                        moved = self._forget_oldest_turn(window, tokens) if context_policy in window_policy.SHIFTING_POLICIES else None
                        if moved is None:
                            break
                        window, shifted = moved, True
                        self._memory = Memory(window.messages, window.start, window.end)
                        pending = [*self.held_tokens(), token]  # generate() finds all but this one cached
                        break
            finally:
                generator.close()
        tail = text.flush(finish == "stop")
        if tail:
            on_token(tail)
        ended = time.perf_counter()
        return Completion(
            text=text.text,
            finish_reason=finish,
            prompt_tokens=len(prompt),
            completion_tokens=n_out,
            cached_tokens=cached,
            prompt_seconds=first_at - started,
            decode_seconds=ended - first_at,
            context=self._report(context_policy, window, shifted, cached, prompt_tokens=len(prompt)),
            template=template,
        )

    def _report(self, policy: str, window: Window, shifted: bool, cached: int, *, prompt_tokens: int | None = None) -> dict[str, Any]:
        """What the UI shows about memory: how many of the oldest messages the model no longer sees."""
        n_prompt = len(window.tokens) if prompt_tokens is None else prompt_tokens
        return {
            "policy": policy,
            "n_ctx": self.n_ctx,
            "prompt_tokens": n_prompt,
            "dropped_messages": window.dropped,
            "dropped_range": [window.start, window.end],
            "shifted": shifted,
            "evaluated_tokens": n_prompt - cached,
            "cached_tokens": cached,
        }

    def _floor(self, messages: Sequence[dict[str, str]]) -> tuple[int, int] | None:
        """The gap the cache already forgot, when ``messages`` continues the conversation it holds."""
        memory = self._memory
        if memory is None or memory.end == memory.start or len(messages) < len(memory.messages):
            return None
        return (memory.start, memory.end) if tuple(messages[: len(memory.messages)]) == memory.messages else None

    def _follow_window(self, window: Window, tokens: window_policy.Render) -> bool:
        """Make the cache hold the window's prompt with as little evaluation as possible; True if it shifted.

        When the kept tokens are the cached ones with one span cut out (the forgotten turns), that
        span is removed and the rest moved in place; otherwise `_prefill` re-evaluates from the
        first difference, which is correct, only slower.
        """
        held, prompt = self.held_tokens(), window.tokens
        if window_policy.common_prefix(held, prompt) >= len(held):
            return False  # the cache is a prefix of the prompt: plain reuse
        keep = window_policy.boundary(prompt, window.messages[: window.start], tokens)
        plan = window_policy.plan_reuse(held, prompt, keep)
        if plan.drop == 0:
            if window.dropped:
                log.info("context: re-evaluating after token %d; the cached tokens do not line up with the kept turns", plan.reused)
            return False
        if not window_policy.shift_kv(self._llm, plan.keep, plan.drop):
            log.info("context: this KV cache cannot shift; re-evaluating after token %d", plan.keep)
            return False
        log.info("context: shifted in place (kept %d, dropped %d, reused %d of %d prompt tokens)", plan.keep, plan.drop, plan.reused, len(prompt))
        return True

    def _forget_oldest_turn(self, window: Window, tokens: window_policy.Render) -> Window | None:
        """During a reply that filled the context: forget the oldest kept turn and shift the rest.

        Checked with the tokenizer: the prompt without that turn must be the held prompt with the
        turn's span cut out. None (the reply ends with "length") when there is no older turn to
        forget or the tokens do not line up.
        """
        nxt = window_policy.next_turn(window.messages, window.end)
        if nxt is None:
            return None
        held, prompt = self.held_tokens(), window.tokens
        keep = window_policy.boundary(prompt, window.messages[: window.start], tokens)
        upto = window_policy.boundary(prompt, [*window.messages[: window.start], *window.messages[window.end : nxt]], tokens)
        after = Window(window.messages, window.start, nxt, tokens([*window.messages[: window.start], *window.messages[nxt:]]))
        if not 0 < keep < upto or held[: len(prompt)] != prompt or prompt[:keep] + prompt[upto:] != after.tokens:
            log.info("context: the reply filled the context and the oldest turn cannot be cut out cleanly; stopping")
            return None
        if not window_policy.shift_kv(self._llm, keep, upto - keep):
            return None
        log.info("context: the reply filled the context; forgot messages %d-%d (%d tokens)", window.end, nxt - 1, upto - keep)
        return after

    def _prefill(self, prompt: list[int], cached: int, is_cancelled: IsCancelled) -> bool:
        """Evaluate the prompt's new tokens in chunks, checking cancel between them.

        llama.cpp cannot be interrupted inside a decode call (an abort callback in Python would
        run hundreds of times per token), so a long prompt is cut into pieces instead. The last
        token is left to `Llama.generate`, which then finds the rest cached and samples at once.
        Returns False when cancelled.
        """
        llm = self._llm
        end = len(prompt) - 1
        if cached >= end:
            return True
        llm.n_tokens = cached  # eval() drops any KV past this point before it decodes
        chunk = min(PREFILL_CHUNK, int(self.settings.get("n_batch", PREFILL_CHUNK)))
        for start in range(cached, end, chunk):
            if is_cancelled():
                return False
            llm.eval(prompt[start : min(start + chunk, end)])
        return True

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


def _load(llama_cpp: Any, path: Path, settings: dict[str, Any]) -> Any:
    """`llama_cpp.Llama`, with llama.cpp's own log read during the load to say why it refused a file.

    llama-cpp-python turns every refusal into one ValueError ("Failed to load model"); the reason,
    such as an architecture this build does not know, is only in llama.cpp's log. The log callback
    is swapped for the load and restored after (loads are serialized by the engine).
    """
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def capture(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        return llama_cpp.Llama(model_path=str(path), **settings, verbose=False)
    except ValueError as exc:  # llama-cpp-python's words for "llama.cpp refused the file"
        said = "".join(lines)
        unknown = _UNKNOWN_ARCH.search(said)
        if unknown:
            raise RuntimeFailure(
                ErrorKind.UNSUPPORTED,
                f"{path.name} cannot run here: its architecture '{unknown.group(1)}' is not supported by this llama.cpp "
                "build. A newer Hearth (with a newer llama.cpp) may support it, or choose another model.",
                detail=said[-2000:],
            ) from exc
        errors = [line.strip() for line in said.splitlines() if "error" in line.lower()]
        raise RuntimeFailure(
            ErrorKind.LOAD_FAILED,
            f"llama.cpp could not load {path.name}: the file may be damaged, or its architecture "
            f"is not supported by this llama.cpp build. ({errors[-1] if errors else exc})",
            detail=said[-2000:],
        ) from exc
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
