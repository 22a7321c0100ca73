"""Turns a transcript row into a QTextDocument: header, reasoning, Markdown answer, figures."""

from __future__ import annotations

import html
import re
from typing import Any

from PySide6.QtGui import QTextBlockFormat, QTextCharFormat, QTextCursor, QTextDocument, QTextDocumentFragment, QTextFormat

from app.ui.chat.highlight import highlight_code_blocks
from app.ui.chat.sources import link_markers, sources_html

SPEAKERS = {"user": "You", "assistant": "Assistant", "system": "System prompt", "notice": "Hearth"}
STATE_NOTES = {"streaming": " …", "interrupted": " (interrupted)", "failed": " (failed)"}
THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
THINK_PREVIEW = 240
COPY_ANCHOR = "copy-code:"  # the href of a code block's "Copy" link, followed by the block's number


def split_thinking(text: str) -> tuple[str, str]:
    """(reasoning, answer) for replies of reasoning models that wrap their thoughts in <think>."""
    thoughts = [m.group(1).strip() for m in THINK.finditer(text)]
    return "\n".join(t for t in thoughts if t), THINK.sub("", text).strip()


def header_html(role: str, state: str, version: tuple[int, int] | None) -> str:
    color = "#8a5a00" if role == "notice" else "#555"
    switcher = f" &nbsp;<span style='color:#888'>‹ {version[0]}/{version[1]} ›</span>" if version and version[1] > 1 else ""
    return f"<div style='color:{color}; font-weight:600'>{SPEAKERS.get(role, role)}{STATE_NOTES.get(state, '')}{switcher}</div>"


def tokens_in_context(context: dict[str, Any]) -> int:
    """The conversation's tokens in the model's context after a reply: its prompt plus the reply.
    The one count both the line under a reply and the context bar show."""
    return int(context.get("prompt_tokens") or 0) + int(context.get("completion_tokens") or 0)


def stats_html(stats: dict[str, Any]) -> str:
    if not stats or "tokens" not in stats:
        return ""
    line = (f"{stats.get('tokens', 0)} tokens · {stats.get('tps', 0):.1f} tok/s · "
            f"first token {stats.get('ttft_ms', 0):.0f} ms")
    context = stats.get("context") or {}
    if context.get("n_ctx"):
        line += f" · context {tokens_in_context(context)}/{context['n_ctx']}"
    return f"<div style='color:#888; font-size:small'>{line}</div>"


def build_document(doc: QTextDocument, *, role: str, text: str, state: str, stats: dict[str, Any],
                   version: tuple[int, int] | None = None) -> None:
    """Fill `doc`. Replies become Markdown (code blocks coloured) once finished; while streaming they stay plain text."""
    cursor = QTextCursor(doc)
    cursor.insertHtml(header_html(role, state, version))
    cursor.insertBlock()
    thinking, answer = split_thinking(text) if role == "assistant" else ("", text)
    if thinking:
        preview = thinking if len(thinking) <= THINK_PREVIEW else thinking[:THINK_PREVIEW] + " …"
        cursor.insertHtml(f"<div style='color:#999; font-style:italic'>Thinking… {html.escape(preview)}</div>")
        cursor.insertBlock()
    if not answer:
        if state == "streaming":
            cursor.insertHtml("<i>thinking…</i>")
    elif role == "assistant" and state != "streaming":
        start = cursor.position()
        # [n] markers link to the reply's sources (the delegate opens them)
        cursor.insertFragment(QTextDocumentFragment.fromMarkdown(link_markers(answer, len(stats.get("sources") or []))))
        highlight_code_blocks(doc, start)  # code blocks coloured by language
        add_code_captions(doc, start)
    else:
        cursor.insertText(answer)
    extra = stats_html(stats)
    if extra:
        cursor.insertBlock()
        cursor.insertHtml(extra)
    sources = sources_html(stats.get("sources") or [], stats.get("docs")) if role == "assistant" else ""
    if sources:
        cursor.insertBlock()
        cursor.insertHtml(sources)


def code_blocks(doc: QTextDocument, start: int = 0) -> list[tuple[str, str, int]]:
    """(language, code, first block's position) for each fenced code block from ``start`` on."""
    found: list[tuple[str, str, int]] = []
    block = doc.findBlock(start)
    lines: list[str] = []
    lang, first = "", -1
    while block.isValid():
        fmt = block.blockFormat()
        if fmt.property(QTextFormat.Property.BlockCodeFence):
            if not lines:
                lang, first = str(fmt.property(QTextFormat.Property.BlockCodeLanguage) or ""), block.position()
            lines.append(block.text())
        elif lines:
            found.append((lang, "\n".join(lines), first))
            lines = []
        block = block.next()
    if lines:
        found.append((lang, "\n".join(lines), first))
    return found


def add_code_captions(doc: QTextDocument, start: int = 0) -> None:
    """Above each code block, a line with its language and a "Copy" link (``copy-code:N``) that the
    transcript's delegate answers by putting the block's code on the clipboard."""
    for number, (lang, _code, first) in reversed(list(enumerate(code_blocks(doc, start)))):
        cursor = QTextCursor(doc)
        cursor.setPosition(first)
        cursor.movePosition(QTextCursor.MoveOperation.PreviousCharacter)  # the end of the block before
        cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
        label = html.escape(lang) if lang else "code"
        cursor.insertHtml(f"<span style='color:#888; font-size:small'>{label} · </span>"
                          f"<a href='{COPY_ANCHOR}{number}' style='font-size:small'>Copy</a>")


def code_for_anchor(text: str, anchor: str) -> str | None:
    """The code that a reply's ``copy-code:N`` link copies (None for any other link)."""
    if not anchor.startswith(COPY_ANCHOR):
        return None
    doc = QTextDocument()
    doc.setMarkdown(split_thinking(text)[1])
    blocks = code_blocks(doc)
    number = int(anchor.removeprefix(COPY_ANCHOR) or -1)
    return blocks[number][1] if 0 <= number < len(blocks) else None
