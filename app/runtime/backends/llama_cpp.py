"""GGUF models through llama-cpp-python: load with explicit options, stream a chat, close.

Generation runs token by token through `Llama.generate` (not `create_chat_completion`), so the
backend counts tokens exactly, checks cancel between every token, and owns stop strings; the
prompt is rendered with the model's own chat template from its GGUF metadata. `Llama.generate`
reuses the longest cached prefix, so a later turn only evaluates its new tokens.
"""

from __future__ import annotations

import codecs
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.runtime.backends.base import Completion, IsCancelled, TokenSink
from app.runtime.protocol import ErrorKind, RuntimeFailure, Sampling

log = logging.getLogger(__name__)

# A plain fallback for GGUF files without a chat template (ChatML, which most small models know).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# The `llama_cpp.Llama` arguments a plan may set.
SETTINGS = frozenset(
    ("n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch", "n_gpu_layers", "tensor_split", "flash_attn",
     "type_k", "type_v", "use_mmap", "use_mlock", "op_offload", "seed")
)
PREFILL_CHUNK = 256  # tokens per prompt-processing step; about a second at the slowest CPU speeds


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, model_path: str | Path, settings: Mapping[str, Any]) -> None:
        """``settings`` are `llama_cpp.Llama` keyword arguments, as the planner writes them."""
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        unknown = set(settings) - SETTINGS
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown llama.cpp setting(s): {', '.join(sorted(unknown))}")
        self.settings = dict(settings)
        self._llama_cpp = llama_cpp
        started = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(model_path=str(model_path), **self.settings, verbose=False)
        except ValueError as exc:  # llama-cpp-python's words for "llama.cpp refused the file"
            raise RuntimeFailure(
                ErrorKind.LOAD_FAILED,
                f"llama.cpp could not load {Path(model_path).name}: the file may be damaged, or its architecture "
                f"is not supported by this llama.cpp build. ({exc})",
            ) from exc
        self.load_seconds = time.perf_counter() - started
        llm = self._llm
        self._vocab = llm._model.vocab
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        template = llm.metadata.get("tokenizer.chat_template") or FALLBACK_TEMPLATE
        self.template_source = "model" if "tokenizer.chat_template" in llm.metadata else "fallback (ChatML)"
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
        )
        log.info("loaded %s in %.2f s with %s", Path(model_path).name, self.load_seconds, self.settings)

    @property
    def n_ctx(self) -> int:
        return self._llm.n_ctx()

    def tokenize_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        try:
            prompt = self._formatter(messages=list(messages)).prompt
        except Exception as exc:  # jinja2 raises many kinds; a broken template must say so
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"The model's chat template failed on this conversation: {exc}") from exc
        return self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        sampling: Sampling,
        *,
        on_token: TokenSink,
        is_cancelled: IsCancelled,
    ) -> Completion:
        llm, llama_cpp = self._llm, self._llama_cpp
        prompt = self.tokenize_chat(messages)
        if len(prompt) >= self.n_ctx:
            raise RuntimeFailure(
                ErrorKind.INVALID_PARAMS,
                f"The conversation is {len(prompt)} tokens long, more than this model's context of {self.n_ctx} tokens. "
                "Start a new conversation or load the model with a longer context.",
            )
        cached = _common_prefix(llm.input_ids[: llm.n_tokens].tolist(), prompt)
        started = time.perf_counter()
        if not self._prefill(prompt, cached, is_cancelled):
            return Completion("", "cancelled", len(prompt), 0, cached, time.perf_counter() - started, 0.0)
        llm.set_seed(sampling.seed if sampling.seed is not None else int(time.time_ns() & 0x7FFFFFFF))
        room = self.n_ctx - len(prompt)
        budget = min(sampling.max_tokens, room)
        text = _StreamText(sampling.stop)
        n_out, finish = 0, "length"
        first_at = started
        generator = llm.generate(
            prompt,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
        )
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
                if n_out >= budget:
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
        )

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


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class _StreamText:
    """Turns token bytes into text pieces: whole UTF-8 characters only, stop strings held back."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._pending = ""  # text that might be the start of a stop string
        self.text = ""  # everything emitted

    def feed(self, data: bytes) -> tuple[str, bool]:
        """Returns the text safe to show now, and whether a stop string was reached."""
        self._pending += self._decoder.decode(data)
        for stop in self._stop:
            at = self._pending.find(stop)
            if at != -1:
                piece, self._pending = self._pending[:at], ""
                self.text += piece
                return piece, True
        hold = max((_overlap(self._pending, s) for s in self._stop), default=0)
        piece = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(piece) :]
        self.text += piece
        return piece, False

    def flush(self, stopped: bool) -> str:
        tail = "" if stopped else self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        self.text += tail
        return tail


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that is a start of ``stop``."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
