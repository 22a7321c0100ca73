"""Streamed text with stop strings: every backend shows the same thing for the same tokens.

A stop string can arrive split over several tokens, so text that could be its beginning is held
back until it is clear; the stop string itself is never shown.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopText:
    """Text pieces in, what is safe to show out: stop strings are cut and never shown."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = [s for s in stop if s]
        self._pending = ""  # text that might be the start of a stop string
        self.text = ""  # everything emitted

    def feed(self, piece: str) -> tuple[str, bool]:
        """The text safe to show now, and whether a stop string was reached (the earliest wins)."""
        self._pending += piece
        hits = [(at, stop) for stop in self._stop if (at := self._pending.find(stop)) != -1]
        if hits:
            at = min(hits)[0]
            out, self._pending = self._pending[:at], ""
            self.text += out
            return out, True
        hold = max((_overlap(self._pending, s) for s in self._stop), default=0)
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(out) :]
        self.text += out
        return out, False

    def flush(self, stopped: bool) -> str:
        """What is still held at the end: nothing after a stop, else the held text."""
        tail = "" if stopped else self._pending
        self._pending = ""
        self.text += tail
        return tail


class ByteStopText(StopText):
    """The same for token bytes (llama.cpp): only whole UTF-8 characters are shown."""

    def __init__(self, stop: Sequence[str]) -> None:
        super().__init__(stop)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> tuple[str, bool]:  # type: ignore[override]
        return super().feed(self._decoder.decode(data))

    def flush(self, stopped: bool) -> str:
        if not stopped:
            self._pending += self._decoder.decode(b"", final=True)
        return super().flush(stopped)


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that is a start of ``stop``."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
