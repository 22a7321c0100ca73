"""Sampling and streaming text for the torch backend, with llama.cpp's meaning of each setting.

Sampling follows llama.cpp's default chain, so a conversation's settings mean the same in both
backends: repeat penalty over the last 64 tokens, top-k, top-p, min-p, temperature, then a draw
from a seeded generator (temperature 0 is greedy). Text comes out incrementally: a token can end
in the middle of a UTF-8 character (byte-level BPE) or change how the previous token reads, so the
new text is the difference of two decodes of a short window, held back while it ends in a
replacement character; stop strings are held back while they might still be starting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.runtime.backends.hooks import LogitsMask, apply_constraint
from app.runtime.protocol import Sampling

PENALTY_LAST_N = 64  # llama.cpp's default penalty window


class Sampler:
    def __init__(self, sampling: Sampling, *, device: Any) -> None:
        import torch

        self.s = sampling
        self.generator = torch.Generator(device=device)
        seed = sampling.seed if sampling.seed is not None else int(torch.seed() & 0x7FFFFFFF)
        self.generator.manual_seed(seed)

    @property
    def greedy(self) -> bool:
        """Every draw is the arg-max (temperature 0): what a speculating draft can count on."""
        return self.s.temperature <= 0

    def __call__(self, logits: Any, history: Sequence[int]) -> int:
        """The next token from ``logits`` ([vocab], any dtype) given the tokens so far."""
        import torch

        s = self.s
        logits = logits.float()
        if s.repeat_penalty != 1.0 and history:
            recent = torch.tensor(sorted(set(history[-PENALTY_LAST_N:])), device=logits.device)
            picked = logits[recent]
            logits[recent] = torch.where(picked > 0, picked / s.repeat_penalty, picked * s.repeat_penalty)
        if s.temperature <= 0:
            return int(torch.argmax(logits))
        if 0 < s.top_k < logits.numel():
            values, indices = torch.topk(logits, s.top_k)
        else:
            values, indices = torch.sort(logits, descending=True)
        probs = torch.softmax(values, dim=-1)  # sorted, highest first
        keep = values.numel()
        if s.top_p < 1.0:
            # the smallest head whose mass reaches top_p (at least one token)
            keep = min(keep, int(torch.searchsorted(torch.cumsum(probs, -1), torch.tensor(s.top_p, device=probs.device))) + 1)
        if s.min_p > 0:
            keep = min(keep, max(1, int((probs >= s.min_p * probs[0]).sum())))
        values, indices = values[:keep], indices[:keep]
        probs = torch.softmax(values / s.temperature, dim=-1)
        choice = torch.multinomial(probs, 1, generator=self.generator)
        return int(indices[choice])


def constrain(logits: Any, mask: LogitsMask, generated: Sequence[int]) -> Any:
    """``logits`` ([vocab], torch) with a logits mask's answer applied, as llama.cpp's loop applies
    it (`hooks.apply_constraint` on a numpy copy); None when the mask allows no token at all."""
    import torch

    row = logits.float().cpu().numpy().copy()  # [vocab] float32
    if not apply_constraint(row, mask(generated, row)):
        return None
    return torch.from_numpy(row).to(logits.device)


class IncrementalText:
    """Token ids in, new text out: never half a character, and stable under merges."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # where the window that is decoded again starts
        self._read = 0  # ids whose text was already emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        now = self._decode(self.ids[self._prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held at the end (a last incomplete character stays a replacement)."""
        before = self._decode(self.ids[self._prefix : self._read])
        now = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return now[len(before) :]
