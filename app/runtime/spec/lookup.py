"""Prompt lookup: guess the next tokens by finding the context's last few tokens earlier in the
context (or in attached text) and proposing what followed them there.

No second model, so a guess costs microseconds; it pays where the reply repeats what it has seen
(quoting or editing a text, code, a list it already wrote). The index maps every n-gram
(``min_n``..``max_n`` tokens) to the position after its latest occurrence and grows by one token at
a time; when the context is not an extension of what was indexed (a new conversation, a context
shift) it is rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_N = 4
MIN_N = 2


class NgramIndex:
    """n-gram -> the position right after its latest occurrence in ``tokens`` (whose continuation exists)."""

    def __init__(self, *, max_n: int = MAX_N, min_n: int = MIN_N) -> None:
        self.max_n, self.min_n = max_n, min_n
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self.tokens.append(int(token))
            end = len(self.tokens) - 1  # the new token continues every n-gram ending just before it
            for n in range(self.min_n, self.max_n + 1):
                if end - n >= 0:
                    self._next[tuple(self.tokens[end - n : end])] = end

    def follow(self, key: Sequence[int], limit: int) -> list[int]:
        at = self._next.get(tuple(key))
        return [] if at is None else self.tokens[at : at + limit]


class PromptLookup:
    """The `Drafter` for prompt lookup; ``attached`` are tokens of text the person gave (a document)
    that the reply may quote without the conversation holding it."""

    free = True  # a guess costs nothing: `adaptive` may compute one every step to learn the acceptance rate

    def __init__(self, attached: Sequence[int] = (), *, max_n: int = MAX_N, min_n: int = MIN_N) -> None:
        self.max_n, self.min_n = max_n, min_n
        self._history = NgramIndex(max_n=max_n, min_n=min_n)
        self._attached = NgramIndex(max_n=max_n, min_n=min_n)
        self._attached.extend(attached)

    def _sync(self, tokens: Sequence[int]) -> None:
        held = self._history.tokens
        n = len(held)
        if len(tokens) < n or (n and list(tokens[:n]) != held):
            self._history = NgramIndex(max_n=self.max_n, min_n=self.min_n)
            n = 0
        # the last token is indexed too: its n-grams point at "after it", which only the next token fills
        self._history.extend(tokens[n:])

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        if limit <= 0 or not tokens:
            return []
        self._sync(tokens)
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(tokens) <= n:
                continue
            key = tokens[-n:]
            found = self._history.follow(key, limit) or self._attached.follow(key, limit)
            if found:
                return found
        return []

    def observe(self, proposed: int, accepted: int) -> None:
        """Nothing to adapt here: `adaptive` keeps the rate and chooses k."""
