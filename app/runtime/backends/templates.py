"""Chat templates for the llama.cpp backend: the model's own, a person's override, ChatML as the fallback.

A GGUF carries its chat template as Jinja text; some are broken (they fail to compile, or raise on
an ordinary conversation). A broken embedded template should not make a model unusable, so it
falls back to ChatML (which most small models know) with a logged warning, and the result says
``template: "fallback"`` so the UI can tell the person. An override is the person's own text: when
it fails, they are told why instead of silently getting something else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

# A plain fallback for GGUF files without a usable chat template (ChatML).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MODEL, OVERRIDE, FALLBACK = "model", "override", "fallback"
_OVERRIDES_KEPT = 4  # compiled override templates cached per backend (a person edits one at a time)

Formatter = Callable[[Sequence[dict[str, str]]], str]


class ChatTemplates:
    """Renders messages to prompt text with the template a request asks for."""

    def __init__(self, model_template: str | None, *, eos_token: str, bos_token: str) -> None:
        self.model_template = model_template  # what the person can view, as the file has it
        self._tokens = {"eos_token": eos_token, "bos_token": bos_token}
        self._fallback = self._compile(FALLBACK_TEMPLATE)
        self._model: Formatter | None = None
        self.model_error = ""  # why the model's template is not used, if it is not
        if model_template:
            try:
                self._model = self._compile(model_template)
            except Exception as exc:  # jinja2 raises many kinds: a broken embedded template is not fatal
                self.model_error = f"the model's chat template does not compile: {exc}"
                log.warning("%s; using ChatML instead", self.model_error, exc_info=True)
        self._overrides: dict[str, Formatter] = {}

    @property
    def source(self) -> str:
        """The template used when a request names none: "model" or "fallback (ChatML)"."""
        return MODEL if self._model is not None else "fallback (ChatML)"

    def pick(self, messages: Sequence[dict[str, str]], override: str | None) -> tuple[Formatter, str]:
        """The formatter for this conversation and its kind ("model", "override" or "fallback").

        The whole conversation is rendered once here, so that a template that fails on it is found
        before anything is evaluated; the caller then uses the same formatter for every rendering.
        """
        if override is not None:
            formatter = self._override(override)
            _render(formatter, messages, "The chat template override")
            return formatter, OVERRIDE
        if self._model is not None:
            try:
                _render(self._model, messages, "The model's chat template")
                return self._model, MODEL
            except RuntimeFailure as exc:
                log.warning("%s; using ChatML for this conversation", exc.message, exc_info=True)
        return self._fallback, FALLBACK

    def _override(self, text: str) -> Formatter:
        formatter = self._overrides.get(text)
        if formatter is None:
            try:
                formatter = self._compile(text)
            except Exception as exc:  # jinja2's TemplateSyntaxError and friends
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"The chat template override does not compile: {exc}") from exc
            if len(self._overrides) >= _OVERRIDES_KEPT:
                self._overrides.pop(next(iter(self._overrides)))
            self._overrides[text] = formatter
        return formatter

    def _compile(self, text: str) -> Formatter:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        jinja = Jinja2ChatFormatter(template=text, **self._tokens)

        def format_messages(messages: Sequence[dict[str, str]]) -> str:
            return str(jinja(messages=list(messages)).prompt)  # type: ignore[arg-type]

        return format_messages


def render(formatter: Formatter, messages: Sequence[dict[str, str]]) -> str:
    return _render(formatter, messages, "The chat template")


def _render(formatter: Formatter, messages: Sequence[dict[str, str]], what: str) -> str:
    try:
        return formatter(messages)
    except Exception as exc:  # jinja2 raises many kinds, and templates call raise_exception()
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{what} failed on this conversation: {exc}") from exc


def template_tokens(llm: Any) -> dict[str, str]:
    """The eos/bos texts a template may refer to, as llama.cpp's vocabulary spells them."""
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    return {
        "eos_token": llm._model.token_get_text(eos_id) if eos_id != -1 else "",
        "bos_token": llm._model.token_get_text(bos_id) if bos_id != -1 else "",
    }
