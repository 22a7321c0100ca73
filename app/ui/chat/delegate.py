"""Paints one transcript row: who spoke, the text (wrapped), and the reply's figures."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSize
from PySide6.QtGui import QAbstractTextDocumentLayout, QPainter, QPalette, QTextDocument
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from app.ui.chat.transcript import Roles

PADDING = 10
SPEAKERS = {"user": "You", "assistant": "Assistant", "system": "System prompt", "notice": "Hearth"}
STATE_NOTES = {"streaming": " …", "interrupted": " (interrupted)", "failed": " (failed)"}


def render_html(role: str, text: str, state: str, stats: dict[str, Any]) -> str:
    speaker = SPEAKERS.get(role, role)
    body = html.escape(text).replace("\n", "<br>") or ("<i>thinking…</i>" if state == "streaming" else "")
    color = "#8a5a00" if role == "notice" else "#555"
    parts = [f"<div style='color:{color}; font-weight:600'>{speaker}{STATE_NOTES.get(state, '')}</div>", f"<div>{body}</div>"]
    if stats:
        parts.append(
            f"<div style='color:#888; font-size:small'>{stats.get('tokens', 0)} tokens · "
            f"{stats.get('tps', 0):.1f} tok/s · first token {stats.get('ttft_ms', 0):.0f} ms</div>"
        )
    return "".join(parts)


class MessageDelegate(QStyledItemDelegate):
    def _document(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QTextDocument:
        doc = QTextDocument()
        doc.setDefaultFont(option.font)
        doc.setDocumentMargin(0)
        doc.setHtml(render_html(index.data(Roles.ROLE), index.data(Roles.TEXT) or "", index.data(Roles.STATE), index.data(Roles.STATS) or {}))
        doc.setTextWidth(max(50, option.rect.width() - 2 * PADDING))
        return doc

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        doc = self._document(option, index)
        return QSize(int(doc.idealWidth()) + 2 * PADDING, int(doc.size().height()) + 2 * PADDING)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> None:
        painter.save()
        role = index.data(Roles.ROLE)
        background = option.palette.color(QPalette.ColorRole.AlternateBase) if role == "user" else option.palette.color(QPalette.ColorRole.Base)
        painter.fillRect(option.rect, background)
        if option.state & QStyle.StateFlag.State_Selected:
            painter.fillRect(option.rect, option.palette.color(QPalette.ColorRole.Highlight).lighter(190))
        doc = self._document(option, index)
        painter.translate(option.rect.left() + PADDING, option.rect.top() + PADDING)
        context = QAbstractTextDocumentLayout.PaintContext()
        doc.documentLayout().draw(painter, context)
        painter.restore()
