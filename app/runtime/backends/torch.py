"""Transformers models through torch: load as the plan says, stream a chat, close.

The decode loop is Hearth's own, not ``model.generate()``: one prefill (in chunks, so cancel is
checked between them), then one forward per token with the KV cache, under
``torch.inference_mode()``, sampling in torch (`torch_sample`). generate() re-validates its
arguments, rebuilds logits processors and stopping criteria and copies the whole sequence on
every step; for a small model on a CPU that overhead is most of the time per token.

The cache holds the tokens of the last conversation (``_held``): a later turn that starts with
the same tokens evaluates only what is new (``cached_tokens``). A conversation longer than the
context is fitted by the same policies as llama.cpp's (`context`): whole old turns are forgotten;
as a torch cache cannot be RoPE-shifted cheaply, the prompt is then evaluated again from the first
token that differs. A KV eviction policy from ``app.runtime.kv`` (sink + window, H2O, ...) bounds
the cache's memory inside that context.

Fast decode (a static cache and a compiled decode step, gpt-fast style) is chosen once at load by
the plan (``compile``) and logged; on a CPU its compile time is not worth it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.runtime.backends import context as window_policy
from app.runtime.backends.base import Completion, IsCancelled, TokenSink
from app.runtime.backends.context import Memory, Window
from app.runtime.backends.templates import FALLBACK, FALLBACK_TEMPLATE, MODEL, OVERRIDE
from app.runtime.backends.torch_load import input_device, load_model
from app.runtime.backends.streaming import StopText
from app.runtime.backends import torch_spec, torch_spec_setup
from app.runtime.backends.hooks import LogitsMask, Speculation, SpeculationReporter, SpeculationSink
from app.runtime.backends.torch_sample import IncrementalText, Sampler, constrain
from app.runtime.protocol import ErrorKind, RuntimeFailure, Sampling

__all__ = ["SETTINGS", "TorchBackend"]

log = logging.getLogger(__name__)

# The settings a torch plan may give (`planner.torch_plan.torch_kwargs`).
SETTINGS = frozenset(
    ("dtype", "device_map", "max_memory", "offload_folder", "weight_quant", "kv_policy", "kv_budget", "n_ctx",
     "threads", "compile", "attn_implementation", "prefill_chunk", "adapter",
     "speculate", "draft", "draft_quant", "spec_tree")  # SpecExec for offloaded targets (torch_spec.setup)
)
PREFILL_CHUNK = 256


class TorchBackend:
    name = "torch"

    def __init__(self, source: str | Path, settings: Mapping[str, Any]) -> None:
        """``source``: an HF folder, or a GGUF file (dequantized once into a cached HF folder)."""
        import torch

        unknown = set(settings) - SETTINGS
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown torch setting(s): {', '.join(sorted(unknown))}")
        self.settings = dict(settings)
        self._torch = torch
        started = time.perf_counter()
        folder = Path(source)
        if folder.is_file() and folder.suffix.lower() == ".gguf":
            from app.runtime.hf_folder import hf_folder_for_gguf

            folder = hf_folder_for_gguf(folder)
        if self.settings.get("threads"):
            torch.set_num_threads(int(self.settings["threads"]))
        self.folder = folder
        self._model, self._tok = load_model(folder, self.settings)
        self._device = input_device(self._model)
        config = self._model.config
        self.n_ctx = int(self.settings.get("n_ctx") or getattr(config, "max_position_embeddings", 2048))
        self._chunk = int(self.settings.get("prefill_chunk") or PREFILL_CHUNK)
        self._eos = _eos_ids(self._model, self._tok)
        self.chat_template: str | None = getattr(self._tok, "chat_template", None) or None
        self._cache: Any = None  # a static one is made by _setup_fast_decode
        self._compiled = self._setup_fast_decode()
        self._use_policy_attention()
        self._held: list[int] = []  # tokens whose KV the cache holds, in order (before any eviction)
        self._seen = 0  # tokens evaluated into the cache (positions used)
        self._memory: Memory | None = None
        self.spec = torch_spec_setup.setup(self._model, folder, self.settings)  # a draft when the target is offloaded
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s in %.2f s on %s with %s", folder.name, self.load_seconds, self._device, self.settings)

    # ---- what the engine shows -------------------------------------------------------------------

    @property
    def template_source(self) -> str:
        return MODEL if self.chat_template else "fallback (ChatML)"

    def held_tokens(self) -> list[int]:
        return list(self._held)

    # ---- chat ------------------------------------------------------------------------------------

    def tokenize_chat(self, messages: Sequence[dict[str, str]], chat_template: str | None = None) -> list[int]:
        render, _ = self._pick_template(messages, chat_template)
        return render(messages)

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
        speculate: str | None = None,
        render: tuple[Callable[[Sequence[dict[str, Any]]], str], str] | None = None,
        on_speculation: SpeculationSink | None = None,
    ) -> Completion:
        """``mask`` constrains each step (a tool-call grammar, `hooks.LogitsMask`); ``render``
        (messages -> prompt text, and which template that is) replaces the chat template;
        ``on_speculation`` gets SpecExec's stats while the reply streams (`hooks.SpeculationReporter`)."""
        if context_policy not in window_policy.POLICIES:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown context policy {context_policy!r}. Choose one of: {', '.join(window_policy.POLICIES)}.")
        render, template = self._text_render(render) if render is not None else self._pick_template(messages, chat_template)
        reserve = window_policy.reserve_for(sampling.max_tokens, self.n_ctx)
        window = window_policy.fit_window(messages, context_policy, n_ctx=self.n_ctx, reserve=reserve, render=render, floor=self._floor(messages))
        prompt = window.tokens
        self._memory = Memory(window.messages, window.start, window.end)
        started = time.perf_counter()
        with self._torch.inference_mode():
            cached = self._reuse(prompt)
            logits = self._prefill(prompt, cached, is_cancelled)
            if logits is None:
                report = self._report(context_policy, window, cached, len(prompt))
                return Completion("", "cancelled", len(prompt), 0, cached, time.perf_counter() - started, 0.0, context=report, template=template)
            speculation = Speculation(off=self.spec.off_reason(mask is not None, speculate))
            tree = speculation.off is None
            if tree:
                first_at, n_out, finish, text = self._decode_tree(logits, prompt, sampling, on_token, is_cancelled, speculation,
                                                                  on_speculation)
            else:
                first_at, n_out, finish, text = self._decode(logits, prompt, sampling, on_token, is_cancelled, mask)
        ended = time.perf_counter()
        return Completion(
            text=text,
            finish_reason=finish,
            prompt_tokens=len(prompt),
            completion_tokens=n_out,
            cached_tokens=cached,
            prompt_seconds=(first_at or ended) - started,
            decode_seconds=ended - (first_at or ended),
            context=self._report(context_policy, window, cached, len(prompt)),
            template=template,
            speculation=speculation.to_dict() if self.spec.draft is not None else None,  # why not: self.spec.reason
        )

    def _decode_tree(self, logits: Any, prompt: list[int], sampling: Sampling, on_token: TokenSink, is_cancelled: IsCancelled,
                     stats: Speculation, on_speculation: SpeculationSink | None = None) -> tuple[float | None, int, str, str]:
        """`_decode` with SpecExec (`torch_spec`): the same tokens, several per forward of the target.

        ``spec_tokens`` counts its verify steps into ``stats`` as it goes and extends ``history`` in
        place, so the live report is made from the token sink, after each shown piece."""
        assert self.spec.draft is not None
        history, reporter = list(prompt), SpeculationReporter(on_speculation)

        def shown(piece: str) -> None:
            on_token(piece)
            reporter.step(stats, tokens=len(history) - len(prompt))

        tokens = torch_spec.spec_tokens(
            model=self._model, cache=self._cache, device=self._device, held=self._held, draft=self.spec.draft,
            shape=self.spec.shape, first_logits=logits, history=history, sample=Sampler(sampling, device=logits.device),
            max_tokens=sampling.max_tokens, n_ctx=self.n_ctx, stop_ids=self._eos, stats=stats, penalty=sampling.repeat_penalty)
        try:
            return torch_spec_setup.stream(tokens, tokenizer=self._tok, sampling=sampling, eos=self._eos, on_token=shown, is_cancelled=is_cancelled)
        finally:
            self._seen = len(self._held)  # a full cache (no eviction): positions used = tokens held

    def _decode(self, logits: Any, prompt: list[int], sampling: Sampling, on_token: TokenSink, is_cancelled: IsCancelled,
                mask: LogitsMask | None = None) -> tuple[float | None, int, str, str]:
        """Sample, stream and evaluate one token at a time; (first token time, count, finish, text)."""
        sample = Sampler(sampling, device=logits.device)
        pieces, stops = IncrementalText(self._tok), StopText(sampling.stop)
        history = list(prompt)
        first_at: float | None = None
        n_out, finish = 0, "length"
        while True:
            if mask is not None:
                logits = constrain(logits, mask, history[len(prompt) :])
                if logits is None:
                    finish = "stop"  # the mask allows nothing more: the reply is complete
                    break
            token = sample(logits, history)
            if first_at is None:
                first_at = time.perf_counter()
            if token in self._eos:
                finish = "stop"
                break
            n_out += 1
            history.append(token)
            shown, stopped = stops.feed(pieces.add(token))
            if shown:
                on_token(shown)
            if stopped:
                finish = "stop"
                break
            if is_cancelled():
                finish = "cancelled"
                break
            if n_out >= sampling.max_tokens or self._seen + 1 >= self.n_ctx:
                break
            logits = self._forward([token], step=True)
        if finish != "stop":
            shown, stopped = stops.feed(pieces.flush())
            finish = "stop" if stopped else finish
            tail = shown + stops.flush(stopped)
            if tail:
                on_token(tail)
        return first_at, n_out, finish, stops.text

    # ---- the cache -------------------------------------------------------------------------------

    def _reuse(self, prompt: list[int]) -> int:
        """Keep the cached prefix the prompt shares with the last conversation; the tokens kept.

        The last prompt token is always evaluated again (its logits start the reply). A cache that
        evicted tokens can only be continued, not cut back: anything else starts a new cache.
        """
        common = min(window_policy.common_prefix(self._held, prompt), len(prompt) - 1)
        cache = self._cache
        if cache is None or common == 0:
            self._new_cache()
            return 0
        if common == len(self._held):
            return common
        if self._compiled:  # a static cache masks what lies past its write position: move it back
            for layer in cache.layers:
                if layer.is_initialized:
                    layer.cumulative_length.fill_(common)
            self._held, self._seen = self._held[:common], common
            return common
        evicted = cache.get_seq_length() != len(self._held)
        croppable = all(getattr(layer, "is_croppable", True) for layer in getattr(cache, "layers", ()))
        if evicted or not croppable or not hasattr(cache, "crop"):
            self._new_cache()
            return 0
        cache.crop(common - len(self._held))  # a negative count: drop that many from the end
        self._held, self._seen = self._held[:common], common
        return common

    def _new_cache(self) -> None:
        self._held, self._seen = [], 0
        if self._compiled:
            self._cache.reset()
            return
        policy = str(self.settings.get("kv_policy") or "full")
        config = self._model.config
        if policy == "full":
            from transformers import DynamicCache

            self._cache = DynamicCache(config=config)
            return
        from app.runtime.kv import make_cache

        self._cache = make_cache(policy, budget_tokens=int(self.settings.get("kv_budget") or self.n_ctx), config=config)

    def _forward(self, ids: list[int], *, step: bool = False) -> Any:
        """Evaluate ``ids`` after the cached tokens; the logits of the last one ([vocab])."""
        torch = self._torch
        n, cache = len(ids), self._cache
        extra: dict[str, Any] = {}
        if hasattr(cache, "next_positions"):  # an app.runtime.kv policy: its positions, its observer
            positions = cache.next_positions(n, device=self._device)  # [1, n]
            extra = cache.forward_kwargs()
        else:
            positions = torch.arange(self._seen, self._seen + n, device=self._device)[None, :]  # [1, n]
        inputs = torch.tensor([ids], device=self._device)  # [1, n]
        forward = self._compiled if step and self._compiled else self._model
        out = forward(input_ids=inputs, past_key_values=cache, use_cache=True, position_ids=positions, logits_to_keep=1, **extra)
        self._held.extend(ids)
        self._seen += n
        return out.logits[0, -1]

    def _prefill(self, prompt: list[int], cached: int, is_cancelled: IsCancelled) -> Any:
        """Evaluate the prompt after ``cached`` in chunks; the last logits, or None when cancelled."""
        logits = None
        for start in range(cached, len(prompt), self._chunk):
            if is_cancelled():
                return None
            logits = self._forward(prompt[start : start + self._chunk])
        return logits

    def _use_policy_attention(self) -> None:
        """A KV policy that scores tokens by attention (H2O, SnapKV) needs the model to run with the
        attention implementation it registers; switched once, at load."""
        policy = str(self.settings.get("kv_policy") or "full")
        if policy == "full":
            return
        from app.runtime.kv import make_cache

        probe = make_cache(policy, budget_tokens=int(self.settings.get("kv_budget") or self.n_ctx), config=self._model.config)
        if probe.attn_implementation is not None:
            self._model.set_attn_implementation(probe.attn_implementation)
            log.info("attention: %s, for the %s KV policy", probe.attn_implementation, policy)

    def _setup_fast_decode(self) -> Any:
        """A static cache and a compiled one-token step when the plan asks for it (CUDA); else None."""
        if not self.settings.get("compile"):
            log.info("decode: eager forward with a dynamic cache (compile off in the plan)")
            return None
        from transformers import StaticCache

        torch = self._torch
        self._cache = StaticCache(config=self._model.config, max_cache_len=self.n_ctx)
        compiled = torch.compile(self._model.forward, mode="reduce-overhead", fullgraph=True)
        log.info("decode: static cache of %d tokens and a compiled decode step (compiles on the first reply)", self.n_ctx)
        return compiled

    # ---- templates and context -------------------------------------------------------------------

    def _text_render(self, render: tuple[Callable[[Sequence[dict[str, Any]]], str], str]) -> tuple[window_policy.Render, str]:
        """A text renderer (app.runtime.tools) as a token renderer, special tokens parsed as the template writes them."""
        text, kind = render

        def tokens(some: Sequence[dict[str, Any]]) -> list[int]:
            return list(self._tok(text(some), add_special_tokens=False)["input_ids"])

        return tokens, kind

    def grammar_tokenizer(self) -> Any:
        """llguidance's view of this tokenizer, sized to the model's logits, for tool-call grammars (built once)."""
        if getattr(self, "_lltok", None) is None:
            from app.runtime.tools.grammar import hf_tokenizer

            n_vocab = int(self._model.get_output_embeddings().weight.shape[0])
            self._lltok = hf_tokenizer(self._tok, n_vocab, self._eos)
        return self._lltok

    @property
    def template_tokens(self) -> dict[str, str]:
        """The bos/eos texts a chat template may refer to."""
        return {"bos_token": self._tok.bos_token or "", "eos_token": self._tok.eos_token or ""}

    def _pick_template(self, messages: Sequence[dict[str, str]], override: str | None) -> tuple[window_policy.Render, str]:
        """The renderer for this conversation and its kind; the whole conversation is rendered once
        here so that a template that fails on it is found before anything is evaluated."""
        if override is not None:
            candidates = [(override, OVERRIDE)]
        elif self.chat_template:
            candidates = [(self.chat_template, MODEL), (FALLBACK_TEMPLATE, FALLBACK)]
        else:
            candidates = [(FALLBACK_TEMPLATE, FALLBACK)]
        for text, kind in candidates:
            def render(some: Sequence[dict[str, str]], text: str = text) -> list[int]:
                rendered = self._tok.apply_chat_template(list(some), chat_template=text, tokenize=False, add_generation_prompt=True)
                return list(self._tok(rendered, add_special_tokens=False)["input_ids"])

            try:
                render(messages)
                return render, kind
            except Exception as exc:  # jinja2 raises many kinds, and templates call raise_exception()
                if kind == OVERRIDE:
                    raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"The chat template override failed on this conversation: {exc}") from exc
                log.warning("the model's chat template failed (%s); using ChatML for this conversation", exc, exc_info=True)
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "No chat template can render this conversation.")

    def _floor(self, messages: Sequence[dict[str, str]]) -> tuple[int, int] | None:
        memory = self._memory
        if memory is None or memory.end == memory.start or len(messages) < len(memory.messages):
            return None
        return (memory.start, memory.end) if tuple(messages[: len(memory.messages)]) == memory.messages else None

    def _report(self, policy: str, window: Window, cached: int, n_prompt: int) -> dict[str, Any]:
        return {
            "policy": policy,
            "n_ctx": self.n_ctx,
            "prompt_tokens": n_prompt,
            "dropped_messages": window.dropped,
            "dropped_range": [window.start, window.end],
            "shifted": False,
            "evaluated_tokens": n_prompt - cached,
            "cached_tokens": cached,
            "kv_policy": str(self.settings.get("kv_policy") or "full"),
        }

    def close(self) -> None:
        model, self._model, self._cache = getattr(self, "_model", None), None, None
        self.spec.close()  # the draft goes with its target
        self.spec = torch_spec_setup.SpecSetup(None, "The model is closed.")
        if model is not None:
            del model
            import gc

            gc.collect()
            if self._torch.cuda.is_available():
                self._torch.cuda.empty_cache()


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every token that ends a reply: the generation config's (often several) and the tokenizer's."""
    ids: set[int] = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)
