"""Blocks into chunks that follow the document's structure.

A chunk is one or more consecutive blocks of the same section (the text under one heading) and the
same page, up to about ``target`` characters; a heading starts a new chunk and is its first line,
so the chunks of a document, joined in order, are its text again (without markup) (a whole document that fits
the context is rebuilt from them). A block longer than ``limit`` is cut at line ends (keeping its
line numbers exact), and a single huge line at sentence or word ends.

Each chunk remembers its page (PDF), its first and last line (paragraphs for DOCX) and its section
path ("Chapter 3 > Terms"), which the index searches with a lower weight than the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from app.runtime.docs.extract import Block

TARGET_CHARS = 1000  # about 250 tokens: one or two paragraphs, a precise hit for a question
LIMIT_CHARS = 1600


@dataclass(frozen=True)
class Chunk:
    text: str
    line_start: int
    line_end: int
    page: int | None = None
    heading: str = ""  # the section path, outermost first, " > " between


def chunk_blocks(blocks: Iterable[Block], *, target: int = TARGET_CHARS, limit: int = LIMIT_CHARS) -> list[Chunk]:
    chunks: list[Chunk] = []
    sections: dict[int, str] = {}
    parts: list[Block] = []
    path = ""

    def flush() -> None:
        if parts:
            text = "\n\n".join(b.text for b in parts)
            chunks.append(Chunk(text, parts[0].line_start, parts[-1].line_end, parts[0].page, path))
            parts.clear()

    for block in blocks:
        for piece in _split(block, limit):
            if piece.kind == "heading":
                flush()
                sections = {lvl: t for lvl, t in sections.items() if lvl < piece.level}
                sections[piece.level] = " ".join(piece.text.split())
                path = " > ".join(sections[lvl] for lvl in sorted(sections))
                parts.append(piece)
                continue
            size = sum(len(b.text) + 2 for b in parts)
            only_heading = len(parts) == 1 and parts[0].kind == "heading"
            if parts and (piece.page != parts[-1].page or (size + len(piece.text) > target and not only_heading)):
                flush()
            parts.append(piece)
    flush()
    return chunks


def _split(block: Block, limit: int) -> Iterator[Block]:
    """The block, or pieces of it no longer than ``limit``: at line ends first (exact lines), then
    at sentence ends, then at spaces, then anywhere."""
    if len(block.text) <= limit:
        yield block
        return
    lines = block.text.split("\n")
    if len(lines) > 1:
        current: list[str] = []
        first = block.line_start
        for offset, line in enumerate(lines):
            if current and sum(len(x) + 1 for x in current) + len(line) > limit:
                yield from _split(Block("\n".join(current), block.kind, first, block.line_start + offset - 1, block.page, block.level), limit)
                current, first = [], block.line_start + offset
            current.append(line)
        if current:
            yield from _split(Block("\n".join(current), block.kind, first, block.line_end, block.page, block.level), limit)
        return
    for piece in _cut_line(block.text, limit):
        yield Block(piece, block.kind, block.line_start, block.line_end, block.page, block.level)


_BREAKS = (re.compile(r"(?<=[.!?])\s+"), re.compile(r"\s+"))


def _cut_line(text: str, limit: int) -> Iterator[str]:
    while len(text) > limit:
        cut = 0
        for pattern in _BREAKS:
            ends = [m.end() for m in pattern.finditer(text, 0, limit) if m.end() > limit // 3]
            if ends:
                cut = ends[-1]
                break
        cut = cut or limit
        yield text[:cut].rstrip()
        text = text[cut:]
    if text.strip():
        yield text
