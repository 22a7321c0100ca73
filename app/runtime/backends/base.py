"""What every backend offers the engine: load with explicit settings, stream a chat, close."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.runtime.protocol import Sampling

TokenSink = Callable[[str], None]
IsCancelled = Callable[[], bool]


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens whose KV was reused from the previous turn
    prompt_seconds: float  # prompt processing, up to the first token
    decode_seconds: float  # from the first token to the last
    # What the context held for this reply (see backends.context): n_ctx, prompt_tokens, dropped_messages,
    # dropped_range, shifted, evaluated_tokens, cached_tokens, policy. None for backends without one.
    context: dict[str, Any] | None = None
    template: str | None = None  # "model", "override" or "fallback": which chat template rendered the prompt
    # With a drafter (see backends.hooks): verify steps, tokens drafted and accepted, and why it was off if it was.
    speculation: dict[str, Any] | None = None
    # An API request on llama.cpp: seconds spent saving and restoring the studio conversation's KV around it.
    kept: dict[str, float] | None = None

    @property
    def decode_tps(self) -> float:
        # The first token comes out of prompt processing; the rest are decode steps.
        steps = self.completion_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens,
            },
            "timings": {
                "ttft_ms": round(self.prompt_seconds * 1000, 2),
                "decode_seconds": round(self.decode_seconds, 4),
                "decode_tps": round(self.decode_tps, 2),
            },
            **({"context": dict(self.context)} if self.context is not None else {}),
            **({"template": self.template} if self.template is not None else {}),
            **({"speculation": dict(self.speculation)} if self.speculation is not None else {}),
            **({"kept": {k: round(v * 1000, 2) for k, v in self.kept.items()}} if self.kept is not None else {}),  # in ms
        }


class Backend(Protocol):
    name: str

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        sampling: Sampling,
        *,
        on_token: TokenSink,
        is_cancelled: IsCancelled,
        context_policy: str = "rolling_window",
        chat_template: str | None = None,
    ) -> Completion: ...

    def close(self) -> None: ...
