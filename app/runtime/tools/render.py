"""Rendering a conversation with tools through a chat template, the way transformers does it.

Templates that support tools read a ``tools`` variable (OpenAI-shaped function tools) and
messages whose ``tool_calls`` carry arguments as objects; both backends render through this one
Jinja environment when tools are involved, so the prompt (and its token count, which the context
budget sees) is the same whichever backend runs it. The environment mirrors transformers'
``apply_chat_template``: a sandbox, trim_blocks/lstrip_blocks, ``tojson`` that does not escape
HTML, ``raise_exception`` and ``strftime_now``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from app.runtime.protocol import ErrorKind, RuntimeFailure


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render(template: str, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None,
           bos_token: str = "", eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """The prompt text; INVALID_PARAMS (with the template's own words) when the template refuses the conversation."""
    try:
        compiled = _compile(template)
        return str(compiled.render(messages=list(messages), tools=list(tools) if tools else None, bos_token=bos_token,
                                   eos_token=eos_token, add_generation_prompt=add_generation_prompt))
    except Exception as exc:  # jinja2 raises many kinds, and templates call raise_exception()
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"The chat template failed on this conversation with tools: {exc}") from exc
