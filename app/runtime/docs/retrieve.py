"""What of a collection goes into the model's context for one question, within a token budget.

As LM Studio does: when every document of the collection fits in the budget (the context left
after the conversation and the answer), they all go in whole -- the model sees everything, and
the same prefix serves the next question. Otherwise the best chunks for the question go in, in
rank order, as many as fit. Either way the `Retrieval` says which and why, in words the chat
shows, and numbers its passages [1], [2]... with their sources, so that the model can cite them
and the answer can show them.

``count_tokens`` is the model's tokenizer (any ``str -> int``); the whole prompt block is counted
at the end, so what goes in is never over the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.runtime.docs.index import Collection, Embedder, Hit

# A BPE token is rarely more than this many characters of text on average: a collection with more
# characters than budget x this cannot fit, and is not tokenized to find out.
MAX_CHARS_PER_TOKEN = 16


@dataclass(frozen=True)
class Passage:
    number: int  # [number] in the prompt
    path: str
    location: str  # "page 3", "lines 10-24", "whole document"
    heading: str
    text: str
    tokens: int
    score: float | None = None  # None for a whole document
    page: int | None = None  # 1-based, for a chunk of a PDF
    line: int | None = None  # the chunk's first line (paragraph for DOCX)

    @property
    def name(self) -> str:
        return Path(self.path).name

    def header(self) -> str:
        section = f" ({self.heading})" if self.heading else ""
        return f"[{self.number}] {self.name}, {self.location}{section}"

    def block(self) -> str:
        return f"{self.header()}\n{self.text}"

    def to_dict(self) -> dict[str, object]:
        return {"number": self.number, "path": self.path, "name": self.name, "location": self.location,
                "heading": self.heading, "text": self.text, "tokens": self.tokens, "score": self.score,
                "page": self.page, "line": self.line}


@dataclass(frozen=True)
class Retrieval:
    collection: str
    query: str
    mode: Literal["whole", "chunks", "none"]
    passages: list[Passage]
    tokens: int  # of `prompt()`
    budget: int
    reason: str  # which and why, for the person
    left_out: list[str] = field(default_factory=list)  # candidates that did not fit, as "name, location"

    def prompt(self) -> str:
        """The block for the system prompt: an instruction to cite, then the numbered passages."""
        if not self.passages:
            return ""
        return "\n\n".join([instruction(self.collection, self.mode), *(p.block() for p in self.passages)])

    def sources(self) -> list[dict[str, object]]:
        return [p.to_dict() for p in self.passages]

    def to_dict(self) -> dict[str, object]:
        return {"collection": self.collection, "query": self.query, "mode": self.mode, "tokens": self.tokens,
                "budget": self.budget, "reason": self.reason, "passages": self.sources(), "left_out": list(self.left_out),
                "prompt": self.prompt()}


def instruction(collection: str, mode: str) -> str:
    what = "documents" if mode == "whole" else "passages"
    return (f"Answer from these {what} of the collection \"{collection}\" when they hold the answer, "
            "and cite them by number, like [1]. Say so when they do not hold it.")


def retrieve(
    collection: Collection,
    query: str,
    *,
    count_tokens: Callable[[str], int],
    budget: int,
    max_passages: int = 8,
    candidates: int = 40,
    embedder: Embedder | None = None,
) -> Retrieval:
    """The documents whole when they all fit in ``budget`` tokens, else the best chunks that fit."""
    whole = _whole_documents(collection, count_tokens, budget)
    if whole is not None:
        passages, tokens = whole
        reason = (f"All {len(passages)} document(s) of \"{collection.name}\" fit whole: {tokens:,} of the "
                  f"{budget:,} tokens left for documents.")
        return Retrieval(collection.name, query, "whole", passages, tokens, budget, reason)
    hits = collection.search(query, k=candidates, embedder=embedder)
    if not hits:
        return Retrieval(collection.name, query, "none", [], 0, budget,
                         f"Nothing in \"{collection.name}\" matches the question; the model answers without documents.")
    return _best_chunks(collection, query, hits, count_tokens, budget, max_passages)


def _whole_documents(collection: Collection, count_tokens: Callable[[str], int], budget: int) -> tuple[list[Passage], int] | None:
    """Every document as a passage, or None as soon as they cannot all fit."""
    if collection.total_chars() > budget * MAX_CHARS_PER_TOKEN:
        return None
    passages: list[Passage] = []
    used = 0
    for number, (path, _kind, text) in enumerate(collection.documents(), start=1):
        passage = Passage(number, path, "whole document", "", text, 0)
        tokens = count_tokens(passage.block())
        used += tokens
        if used > budget:
            return None
        passages.append(Passage(number, path, "whole document", "", text, tokens))
    if not passages:
        return None
    total = _prompt_tokens(collection.name, "whole", passages, count_tokens)
    return (passages, total) if total <= budget else None


def _best_chunks(collection: Collection, query: str, hits: list[Hit], count_tokens: Callable[[str], int],
                 budget: int, max_passages: int) -> Retrieval:
    chosen: list[Passage] = []
    left_out: list[str] = []
    used = count_tokens(instruction(collection.name, "chunks"))
    for hit in hits:
        if len(chosen) == max_passages:
            break
        passage = Passage(len(chosen) + 1, hit.path, hit.location(), hit.heading, hit.text, 0, round(hit.score, 6))
        tokens = count_tokens(passage.block()) + 2  # and the blank line between passages
        if used + tokens > budget:
            left_out.append(f"{passage.name}, {passage.location}")
            continue
        chosen.append(Passage(passage.number, hit.path, passage.location, hit.heading, hit.text, tokens, passage.score,
                              hit.page, None if hit.page is not None else hit.line_start))
        used += tokens
    total = _prompt_tokens(collection.name, "chunks", chosen, count_tokens)
    while chosen and total > budget:  # the counts of the parts did not add up exactly: drop the last
        dropped = chosen.pop()
        left_out.insert(0, f"{dropped.name}, {dropped.location}")
        total = _prompt_tokens(collection.name, "chunks", chosen, count_tokens)
    size = collection.total_chars()
    if not chosen:
        reason = (f"The documents of \"{collection.name}\" are too long for the {budget:,} tokens left, and even the "
                  "best passage does not fit; the model answers without documents.")
        return Retrieval(collection.name, query, "none", [], 0, budget, reason, left_out)
    reason = (f"The documents of \"{collection.name}\" ({size:,} characters) do not fit whole in the {budget:,} tokens "
              f"left, so the {len(chosen)} best-matching passage(s) of {len(hits)} candidates go in ({total:,} tokens)"
              + (f"; {len(left_out)} more did not fit." if left_out else "."))
    return Retrieval(collection.name, query, "chunks", chosen, total, budget, reason, left_out)


def _prompt_tokens(name: str, mode: Literal["whole", "chunks"], passages: list[Passage], count_tokens: Callable[[str], int]) -> int:
    if not passages:
        return 0
    return count_tokens(Retrieval(name, "", mode, passages, 0, 0, "").prompt())
