"""One chat request with tools: the prompt, the grammar, what streams, and the calls read back.

`ToolRun` is made by the engine for a `ChatParams` that has ``tools`` (or tool messages in its
history) and hands the backend three things: ``render`` (messages -> prompt text, the tool list
included, so the context policy counts tool schemas and results like any other prompt text),
``mask`` (the grammar, see `grammar.CallMask`) and a token sink that streams only the reply's
content, never the call syntax. `finish` turns the finished reply into the result's
``tool_calls`` (unique ``call_...`` ids) and finish_reason ``"tool_calls"``.

tool_choice:
- ``"none"``: the tools are not offered; the history's calls and results still render.
- ``"auto"``: the model chooses; a call it starts is finished under the grammar.
- ``"required"``: the reply is one call (several with ``parallel_tool_calls``) to any of the tools.
- ``{"type": "function", "function": {"name": N}}``: the reply is a call to N.

A call cut off by ``max_tokens`` is not a call: the result has no ``tool_calls``, keeps
finish_reason ``"length"`` and says why in ``tools.error``.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from app.runtime.backends.base import Completion, TokenSink
from app.runtime.backends.templates import FALLBACK_TEMPLATE
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.tools import formats, grammar, render, schema
from app.runtime.tools.formats import ToolFormat

Render = Callable[[Sequence[dict[str, Any]]], str]
log = logging.getLogger(__name__)


def for_backend(params: Any, backend: Any) -> ToolRun | None:
    """The `ToolRun` for a `ChatParams` on a loaded backend, or None when the request involves no tools.

    The template is the request's override, else the model's; the grammar uses the backend's
    llguidance tokenizer (a backend without one runs the calls unconstrained and only parses them).
    """
    if not needs_tools(params):
        return None
    mode, _ = choice_mode(params.tool_choice)
    make_tokenizer = getattr(backend, "grammar_tokenizer", None)
    return ToolRun(
        tools=params.tools or (), tool_choice=params.tool_choice, parallel_tool_calls=params.parallel_tool_calls,
        template=getattr(params, "chat_template", None) or getattr(backend, "chat_template", None), **dict(getattr(backend, "template_tokens", {}) or {}),
        tokenizer=make_tokenizer() if make_tokenizer is not None and mode != "none" and params.tools else None,
        messages=params.messages, override=bool(getattr(params, "chat_template", None)),
    )


def new_call_id() -> str:
    """OpenAI-style: ``call_`` and 24 random hex characters, unique for every call."""
    return "call_" + secrets.token_hex(12)


def choice_mode(tool_choice: Any) -> tuple[str, str | None]:
    """("none"|"auto"|"required"|"named", the named function or None)."""
    if isinstance(tool_choice, dict):
        return "named", tool_choice["function"]["name"]
    return str(tool_choice), None


def needs_tools(params: Any) -> bool:
    """Whether a chat request goes through a `ToolRun`: it offers tools, or its history has calls or results."""
    return bool(params.tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in params.messages or ())


class ToolRun:
    def __init__(self, *, tools: Sequence[dict[str, Any]], tool_choice: Any = "auto", parallel_tool_calls: bool = True,
                 template: str | None, bos_token: str = "", eos_token: str = "", tokenizer: Any = None,
                 messages: Sequence[dict[str, Any]] = (), override: bool = False) -> None:
        """``template``: the chat template in use (the model's, or an override; None = ChatML);
        ``tokenizer``: the backend's llguidance tokenizer, or None to run without a grammar."""
        self.tools = list(tools)
        self.mode, self.named = choice_mode(tool_choice)
        self.schemas = _schemas(self.tools)
        if self.mode in ("required", "named") and not self.schemas:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"tool_choice {self.mode!r} needs at least one tool in 'tools'.")
        if self.named is not None and self.named not in self.schemas:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"tool_choice names the function {self.named!r}, which is not in 'tools'.")
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}
        self.template, self.template_kind = template or FALLBACK_TEMPLATE, ("override" if override else "model") if template else "fallback"
        self.format: ToolFormat = formats.detect(self.template)
        self.forced = self.mode in ("required", "named")
        if messages:
            self._fall_back_if_refused(messages)
        self.parallel = bool(parallel_tool_calls) and self.format.parallel
        self.mask: grammar.CallMask | None = None
        if self.mode != "none" and self.schemas and tokenizer is not None:
            offered = {self.named: self.schemas[self.named]} if self.named else self.schemas
            text = self.format.grammar(offered, parallel=self.parallel)
            if self.forced:
                self.mask = grammar.CallMask(tokenizer, text)
            else:
                self.mask = grammar.CallMask(tokenizer, text, trigger=self.format.trigger, trigger_in_body=self.format.trigger_in_body,
                                             anywhere=self.format.anywhere)

    def _fall_back_if_refused(self, messages: Sequence[dict[str, Any]]) -> None:
        """A template whose own tool support refuses this conversation (Llama 3.1 takes one call per
        message, say) is used through Hearth's own prompt instead; a template that refuses even
        that, through ChatML (as the backends fall back for a broken template)."""
        for fmt, template, kind in ((self.format, self.template, self.template_kind), (formats.FORMATS["hearth"], self.template, self.template_kind),
                                    (formats.FORMATS["hearth"], FALLBACK_TEMPLATE, "fallback")):
            self.format, self.template, self.template_kind = fmt, template, kind
            try:
                self.render(messages)
                return
            except RuntimeFailure:
                log.warning("the chat template refused this conversation with the %s tool format", fmt.name, exc_info=True)

    # ---- what the backend gets ---------------------------------------------------------------------

    def backend_kwargs(self) -> dict[str, Any]:
        """What `Backend.chat` takes for this run: the renderer (and which template it is) and the mask."""
        return {"render": (self.render, self.template_kind), "mask": self.mask}

    @property
    def prefill(self) -> str:
        """Text put after the generation prompt: the trigger, when the reply must be calls."""
        return self.format.trigger if self.forced and not self.format.trigger_in_body else ""

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        offered = self.tools if self.mode != "none" else None
        shaped = self.format.messages(messages, offered)
        listed = offered if self.format.template_tools else None
        return render.render(self.template, shaped, tools=listed, **self._tokens) + self.prefill

    def stream(self, on_token: TokenSink) -> TokenSink:
        """The token sink for the backend: the reply's content goes to ``on_token``, calls do not."""
        if self.mode == "none":
            return on_token
        gate = _ContentGate(self.format, closed=self.forced)

        def sink(piece: str) -> None:
            shown = gate.feed(piece)
            if shown:
                on_token(shown)

        return sink

    # ---- what the result gets ----------------------------------------------------------------------

    def apply(self, completion: Completion) -> tuple[Completion, dict[str, Any]]:
        """The finished reply as the result should carry it (content as ``text``, the finish reason)
        and the result's extra fields: ``tool_calls`` and ``tools`` (see `ChatResult`)."""
        content, calls, finish, info = self.finish(completion)
        return dataclasses.replace(completion, text=content, finish_reason=finish), {"tool_calls": calls, "tools": info}

    def finish(self, completion: Completion) -> tuple[str, list[dict[str, Any]] | None, str, dict[str, Any]]:
        """(content, tool_calls or None, finish_reason, info) for a finished reply."""
        info: dict[str, Any] = {"format": self.format.name, "choice": self.mode, "grammar": self.mask.costs() if self.mask else None}
        if self.mode == "none":
            return completion.text, None, completion.finish_reason, info
        parsed = self.format.parse(self.prefill + completion.text)
        error = parsed.error
        if error is None and parsed.calls:
            unknown = [c.name for c in parsed.calls if c.name not in self.schemas]
            if unknown:
                error = f"the model called {unknown[0]!r}, which is not among the tools"
        if error is None and parsed.calls:
            calls = [{"id": new_call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in parsed.calls]
            return parsed.content, calls, "tool_calls", info
        if error is not None or self.forced:
            info["error"] = error or "the reply has no tool call"
            if completion.finish_reason == "length":
                info["error"] += " (cut off by max_tokens)"
        content = parsed.content if (error is not None or self.forced) else completion.text
        return content, None, completion.finish_reason, info


class _ContentGate:
    """Passes the reply's text until a call starts; holds back what may be the start of the trigger."""

    def __init__(self, fmt: ToolFormat, *, closed: bool) -> None:
        self._fmt = fmt
        self._closed = closed
        self._held = ""
        self._seen = ""  # everything so far (for a trigger that must open the reply)

    def feed(self, piece: str) -> str:
        if self._closed:
            return ""
        self._seen += piece
        self._held += piece
        trigger = self._fmt.trigger
        if not self._fmt.anywhere:
            stripped = self._seen.lstrip()
            if not stripped or trigger.startswith(stripped[: len(trigger)]) and len(stripped) < len(trigger):
                return ""  # still undecided
            if stripped.startswith(trigger):
                self._closed = True
                return ""
            self._fmt = _OPEN  # plain text: everything passes from now on
            out, self._held = self._held, ""
            return out
        at = self._held.find(trigger) if trigger else -1
        if at >= 0:
            self._closed = True
            out, self._held = self._held[:at], ""
            return out if out.strip() else ""  # only whitespace before the call: nothing to show
        keep = max((n for n in range(1, len(trigger)) if self._held.endswith(trigger[:n])), default=0)
        out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return out


class _Open(formats.ToolFormat):
    """A gate's stand-in once the reply is known to be plain text."""

    name, trigger, anywhere = "open", "", True


_OPEN = _Open()


def _schemas(tools: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """name -> prepared arguments schema; INVALID_PARAMS naming the tool and keyword for anything unsupported."""
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool["function"]
        name = fn["name"]
        if name in out:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"tools[{i}]: the function name {name!r} is used twice.")
        prepared = schema.prepare(fn.get("parameters"), where=f"tools[{i}].function.parameters")
        if prepared.get("type", "object") != "object":
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"tools[{i}].function.parameters must be an object schema (a function's arguments are named).")
        out[name] = prepared
    return out
