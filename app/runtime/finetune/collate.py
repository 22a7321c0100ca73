"""Turn examples into token ids and labels, with the loss on the assistant's words only.

TRL's ``assistant_only_loss`` needs ``{% generation %}`` markers in the chat template, and many
templates (SmolLM2's included) have none. Hearth finds the assistant's part itself: it renders the
conversation up to each assistant turn with the generation prompt, renders it again with that turn,
and marks the characters in between; the tokenizer's offsets map characters to tokens. Tokens of
the system prompt, the user's turns and the template's own markup get label -100 (no loss).

The result (``input_ids`` + ``labels``) is what TRL's SFTTrainer takes as a pre-tokenized dataset:
it keeps the labels as they are, truncates to ``max_length`` and packs when asked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from app.runtime.finetune.data import Example

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def render(tokenizer: Any, example: Example) -> str:
    """The text the model sees for one example (the preview shows exactly this)."""
    if example.text is not None:
        return example.text + (tokenizer.eos_token or "")
    return tokenizer.apply_chat_template(list(example.messages), tokenize=False)


def assistant_spans(tokenizer: Any, messages: tuple[dict[str, str], ...]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn in it.

    A span starts after the generation prompt and ends where the next turn starts, so the
    end-of-turn token is trained too (the model must learn to stop).
    """
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not full.startswith(through) or not through.startswith(before):
            raise ValueError("the chat template does not render a conversation as a prefix of its continuation")
        spans.append((len(before), len(through)))
    return full, spans


def encode(tokenizer: Any, example: Example, *, max_length: int, prompt_loss: bool = False) -> Encoded:
    """Token ids and labels for one example; truncated to ``max_length`` tokens (keeping the start)."""
    if example.text is not None:
        ids = tokenizer(render(tokenizer, example), add_special_tokens=False)["input_ids"][:max_length]
        return Encoded(ids, list(ids))
    try:
        text, spans = assistant_spans(tokenizer, example.messages)
    except ValueError:
        log.warning("prompt masking is not possible with this chat template; training on the whole conversation")
        text, spans, prompt_loss = render(tokenizer, example), [], True
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    if prompt_loss:
        labels = list(ids)
    else:
        labels = [token if _inside(start, end, spans) else IGNORE for token, (start, end) in zip(ids, encoded["offset_mapping"])]
    return Encoded(ids[:max_length], labels[:max_length])


def _inside(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    # A token belongs to the answer when it starts inside an assistant span (a token may straddle
    # the boundary with the generation prompt only when the template glues them; it then counts).
    return any(lo <= start < hi for lo, hi in spans) and end > start


def encode_all(tokenizer: Any, examples: list[Example], *, max_length: int, prompt_loss: bool = False) -> list[Encoded]:
    """Encoded examples, leaving out those with nothing left to learn after truncation."""
    out = []
    for example in examples:
        item = encode(tokenizer, example, max_length=max_length, prompt_loss=prompt_loss)
        if item.trained_tokens:
            out.append(item)
    return out
