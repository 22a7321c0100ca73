"""The sources of an answer: stored as "source" message parts, shown under the reply, opened in a
text view, and linked from the reply's [n] markers.

The runtime's chat result says which passages the model was given (`ChatResult.docs`); each
becomes one part of the reply (collection, file, page or line, text, score), so the sources stay
with the answer in the store and in an export. In the transcript a row's ``stats["sources"]``
carries them (never written into the message's meta: the parts are the one record), the reply's
[n] markers become ``source:n`` links, and a line of ``source:n`` links follows the reply; the
delegate reports a click on one and the page opens `PassageView`.
"""

from __future__ import annotations

import html
import re
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QVBoxLayout, QWidget

from app.chats import MessagePart, PartKind

SOURCE_ANCHOR = "source:"
STORED_TEXT_LIMIT = 20_000  # characters of a passage kept in its part (a whole document can be long)
_MARKER = re.compile(r"\[(\d{1,2})\](?!\()")  # [3], not a Markdown link's [3](...)
_FENCE = re.compile(r"^\s*(```|~~~)")


def source_parts(docs: dict[str, Any] | None) -> list[tuple[PartKind, dict[str, Any]]]:
    """The parts to store for a reply, one per passage of the chat result's ``docs``."""
    if not isinstance(docs, dict):
        return []
    parts: list[tuple[PartKind, dict[str, Any]]] = []
    for passage in docs.get("passages") or []:
        text = str(passage.get("text") or "")
        data = {
            "n": int(passage.get("number") or len(parts) + 1),
            "collection": docs.get("collection"),
            "file": passage.get("path"),
            "name": passage.get("name"),
            "location": passage.get("location"),
            "page": passage.get("page"),
            "line": passage.get("line"),
            "heading": passage.get("heading") or "",
            "text": text[:STORED_TEXT_LIMIT],
            "score": passage.get("score"),
            "whole": passage.get("location") == "whole document",
        }
        if len(text) > STORED_TEXT_LIMIT:
            data["truncated"] = True
        parts.append((PartKind.SOURCE, data))
    return parts


def docs_meta(docs: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the reply's meta keeps about the documents: which collection, how, and why."""
    if not isinstance(docs, dict):
        return None
    return {k: docs.get(k) for k in ("collection", "mode", "reason", "tokens", "budget")}


def sources_of(parts: list[MessagePart]) -> list[dict[str, Any]]:
    return [p.data for p in parts if p.kind is PartKind.SOURCE]


def label(source: dict[str, Any]) -> str:
    """"notes.md, line 12" / "atlas.pdf, page 3" / "jam.md (whole document)"."""
    name = source.get("name") or str(source.get("file") or "?").rsplit("/", 1)[-1]
    if source.get("whole"):
        return f"{name} (whole document)"
    if source.get("location"):
        return f"{name}, {source['location']}"
    if source.get("page"):
        return f"{name}, page {source['page']}"
    if source.get("line"):
        return f"{name}, line {source['line']}"
    return str(name)


def link_markers(answer: str, count: int) -> str:
    """The reply's Markdown with each [n] (1 <= n <= count) made a ``source:n`` link; code blocks are
    left as they are."""
    if count <= 0:
        return answer
    out, fenced = [], False
    for line in answer.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            line = _MARKER.sub(lambda m: f"[\\[{m.group(1)}\\]]({SOURCE_ANCHOR}{m.group(1)})"
                               if 1 <= int(m.group(1)) <= count else m.group(0), line)
        out.append(line)
    return "\n".join(out)


def sources_html(sources: list[dict[str, Any]], docs: dict[str, Any] | None = None) -> str:
    """The line under a reply: its sources as links, and why these went in."""
    if not sources and not docs:
        return ""
    links = " · ".join(f"<a href='{SOURCE_ANCHOR}{int(s.get('n') or i)}'>[{int(s.get('n') or i)}] {html.escape(label(s))}</a>"
                       for i, s in enumerate(sources, 1))
    line = f"<div style='font-size:small'>Sources: {links}</div>" if links else ""
    reason = (docs or {}).get("reason")
    if reason:
        line += f"<div style='color:#888; font-size:small'>{html.escape(str(reason))}</div>"
    return line


def source_for_anchor(anchor: str, sources: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The source a ``source:n`` link names (None for any other link or an unknown number)."""
    if not anchor.startswith(SOURCE_ANCHOR):
        return None
    number = anchor.removeprefix(SOURCE_ANCHOR)
    return next((s for i, s in enumerate(sources, 1) if str(s.get("n") or i) == number), None)


class PassageView(QDialog):
    """A passage the model was given, read in the app: where it is, and its text."""

    def __init__(self, source: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.source = source
        self.setWindowTitle(f"[{source.get('n', '?')}] {label(source)}")
        self.resize(640, 480)
        where = QLabel(self)
        where.setWordWrap(True)
        where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        details = [str(source.get("file") or "")]
        if source.get("collection"):
            details.append(f"collection “{source['collection']}”")
        if source.get("heading"):
            details.append(str(source["heading"]))
        if isinstance(source.get("score"), (int, float)):
            details.append(f"score {source['score']:.3f}")
        where.setText(" · ".join(d for d in details if d))
        self.text = QPlainTextEdit(self)
        self.text.setReadOnly(True)
        self.text.setPlainText(str(source.get("text") or "") + ("\n\n… (cut: the whole document is longer)" if source.get("truncated") else ""))
        self.text.setAccessibleName("Passage")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, parent=self)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(where)
        layout.addWidget(self.text, 1)
        layout.addWidget(buttons)
