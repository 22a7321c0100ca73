"""GGUF models through llama-cpp-python: load with explicit options, stream a chat, close.

Generation runs through Hearth's own token loop (`llama_loop`), which decodes with its own batches,
samples with a llama.cpp sampler chain, counts tokens exactly, checks cancel between every token,
owns stop strings, and offers the hooks later features build on (a logits mask, a drafter). The
studio's chat (`chat`) and the HTTP API (`complete`) both run through it. The prompt is rendered
with the model's own chat template from its GGUF metadata (or a person's override, or ChatML when
the model's is broken: see `templates`); the longest cached prefix is reused, so a later turn only
evaluates its new tokens.

A conversation longer than the context never fails: a context policy (see `context`) forgets whole
old turns within the request's `ContextBudget`, the KV cache drops their span and shifts the rest
in place, and the result's ``context`` says how many messages the model no longer remembers. An
API request instead must fit whole, and runs with the studio conversation's KV saved and restored
around it (`llama_keep`), so the next turn in the studio still finds its prefix cached.
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
from app.runtime.backends import llama_loop
from app.runtime.backends.base import Completion, IsCancelled, TokenSink
from app.runtime.backends.context import ContextBudget, Memory, Window
from app.runtime.backends.hooks import Drafter, LogitsMask, SpeculationSink
from app.runtime.backends.llama_keep import ConversationKeeper
from app.runtime.backends.llama_kv import KvSequence
from app.runtime.backends.llama_loop import Generated, Sampler
from app.runtime.backends.templates import FALLBACK_TEMPLATE, ChatTemplates, Formatter, render, template_tokens
from app.runtime.protocol import ErrorKind, RuntimeFailure, Sampling

__all__ = ["FALLBACK_TEMPLATE", "SETTINGS", "LlamaCppBackend"]

log = logging.getLogger(__name__)

# The `llama_cpp.Llama` arguments a plan may set.
SETTINGS = frozenset(
    ("n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch", "n_gpu_layers", "tensor_split", "flash_attn",
     "type_k", "type_v", "use_mmap", "use_mlock", "op_offload", "seed")
)
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
        started = time.perf_counter()
        self._llm = _load(llama_cpp, Path(model_path), self.settings)
        self.load_seconds = time.perf_counter() - started
        self._kv = KvSequence(self._llm)
        self._keeper = ConversationKeeper()
        self._templates = ChatTemplates(self._llm.metadata.get("tokenizer.chat_template"), **template_tokens(self._llm))
        self._memory: Memory | None = None
        log.info("loaded %s in %.2f s with %s", Path(model_path).name, self.load_seconds, self.settings)

    @property
    def n_ctx(self) -> int:
        return self._kv.n_ctx

    @property
    def template_source(self) -> str:
        """"model", or "fallback (ChatML)" when the file has no usable template."""
        return self._templates.source

    @property
    def chat_template(self) -> str | None:
        """The model's embedded chat template as the file has it, for a person to view or copy into an override."""
        return self._templates.model_template

    def held_tokens(self) -> list[int]:
        """The tokens whose KV the context holds now, in position order (after any shift)."""
        return self._kv.held()

    @property
    def template_tokens(self) -> dict[str, str]:
        """The bos/eos texts a chat template may refer to (app.runtime.tools renders with them)."""
        return template_tokens(self._llm)

    def grammar_tokenizer(self) -> Any:
        """llguidance's view of this vocabulary, for tool-call grammars; built on first use (about 0.3 s)."""
        if getattr(self, "_lltok", None) is None:
            from app.runtime.tools.grammar import llama_cpp_tokenizer

            eog = [t for t in (self._llm.token_eos(), getattr(self._llm._model, "token_eot", lambda: -1)()) if t >= 0]
            self._lltok = llama_cpp_tokenizer(self._kv.vocab, eog)
        return self._lltok

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[int]:
        """A raw completion prompt's tokens (with BOS when the model wants one and ``add_bos``)."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

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
        mask: LogitsMask | None = None,
        drafter: Drafter | None = None,
        render: tuple[Formatter, str] | None = None,
        on_speculation: SpeculationSink | None = None,
    ) -> Completion:
        """The studio's conversation: kept inside the context by ``context_policy``, its KV reused and shifted.
        ``render`` (messages -> prompt text, and which template that is) replaces the chat template:
        a request with tools renders them with it (app.runtime.tools), so they count in the window.
        ``on_speculation`` gets the drafter's stats while the reply streams (`hooks.SpeculationReporter`)."""
        if context_policy not in window_policy.POLICIES:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown context policy {context_policy!r}. Choose one of: {', '.join(window_policy.POLICIES)}.")
        formatter, template = render if render is not None else self._templates.pick(messages, chat_template)

        def tokens(some: Sequence[dict[str, str]]) -> list[int]:
            return self._tokens(formatter, some)

        budget = ContextBudget.for_chat(self.n_ctx, max_tokens=sampling.max_tokens)
        window = window_policy.fit(messages, context_policy, budget, render=tokens, floor=self._floor(messages))
        prompt = window.tokens
        state = {"window": window, "shifted": self._follow_window(window, tokens)}
        self._memory = Memory(window.messages, window.start, window.end)

        def make_room() -> bool:
            """The reply filled the context: forget the oldest kept turn, when the policy allows."""
            if context_policy not in window_policy.SHIFTING_POLICIES:
                return False
            moved = self._forget_oldest_turn(state["window"], tokens)
            if moved is None:
                return False
            state.update(window=moved, shifted=True)
            self._memory = Memory(moved.messages, moved.start, moved.end)
            return True

        with Sampler(self._kv, sampling) as sampler:
            out = llama_loop.run(
                self._kv, prompt, sampler, max_tokens=sampling.max_tokens, stop=sampling.stop, on_token=on_token,
                is_cancelled=is_cancelled, mask=mask, drafter=drafter, make_room=make_room, on_speculation=on_speculation,
            )
        report = self._report(context_policy, state["window"], state["shifted"], out.cached_tokens, prompt_tokens=len(prompt))
        return _completion(out, len(prompt), context=report, template=template)

    def complete(
        self,
        tokens: list[int],
        sampling: Sampling,
        *,
        on_token: TokenSink,
        is_cancelled: IsCancelled,
        grammar: str | None = None,
        mask: LogitsMask | None = None,
        drafter: Drafter | None = None,
    ) -> Completion:
        """An API request: ``tokens`` (a rendered chat or a raw prompt) must fit whole, ``grammar``
        (GBNF, root rule "root") constrains the reply, and the studio conversation's cached KV is
        saved and restored around it. The result's ``kept`` says what keeping it cost."""
        if not tokens:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "The prompt is empty.")
        budget = ContextBudget.for_prompt(self.n_ctx, prompt_tokens=len(tokens), max_tokens=sampling.max_tokens)
        with Sampler(self._kv, sampling, grammar=grammar) as sampler, self._keeper.kept(self._kv) as costs:
            out = llama_loop.run(
                self._kv, tokens, sampler, max_tokens=budget.reply, stop=sampling.stop, on_token=on_token,
                is_cancelled=is_cancelled, mask=mask, drafter=drafter,
            )
        return _completion(out, len(tokens), kept=costs)

    def _report(self, policy: str, window: Window, shifted: bool, cached: int, *, prompt_tokens: int) -> dict[str, Any]:
        """What the UI shows about memory: how many of the oldest messages the model no longer sees."""
        return {
            "policy": policy,
            "n_ctx": self.n_ctx,
            "prompt_tokens": prompt_tokens,
            "dropped_messages": window.dropped,
            "dropped_range": [window.start, window.end],
            "shifted": shifted,
            "evaluated_tokens": prompt_tokens - cached,
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
        span is removed and the rest moved in place; otherwise the loop re-evaluates from the first
        difference, which is correct, only slower.
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
        if not self._kv.shift(plan.keep, plan.drop):
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
        if not self._kv.shift(keep, upto - keep):
            return None
        log.info("context: the reply filled the context; forgot messages %d-%d (%d tokens)", window.end, nxt - 1, upto - keep)
        return after

    def close(self) -> None:
        kv, llm = getattr(self, "_kv", None), getattr(self, "_llm", None)
        self._kv, self._llm = None, None  # type: ignore[assignment]
        if kv is not None:
            kv.close()
        if llm is not None:
            llm.close()


def _completion(out: Generated, prompt_tokens: int, **extra: Any) -> Completion:
    return Completion(
        text=out.text,
        finish_reason=out.finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=out.completion_tokens,
        cached_tokens=out.cached_tokens,
        prompt_seconds=out.prompt_seconds,
        decode_seconds=out.decode_seconds,
        speculation=out.speculation.to_dict() if out.speculation is not None else None,
        **extra,
    )


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
