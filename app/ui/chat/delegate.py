"""Paints one transcript row: who spoke (with its ‹ 2/3 › version), the text, and the reply's figures."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from PySide6.QtCore import QAbstractItemModel, QEvent, QModelIndex, QObject, QPersistentModelIndex, QPointF, QSize, Qt, Signal
from PySide6.QtGui import QAbstractTextDocumentLayout, QGuiApplication, QMouseEvent, QPainter, QPalette, QTextBlockFormat, QTextCursor, QTextDocument
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from app.ui.chat.render import build_document, code_for_anchor
from app.ui.chat.transcript import Roles

PADDING = 10
CACHE_SIZE = 256  # rendered rows kept


def _wrap_code_lines(doc: QTextDocument) -> None:
    """Markdown code blocks are non-breaking; in a chat column they must wrap, not scroll sideways."""
    cursor = QTextCursor(doc)
    cursor.select(QTextCursor.SelectionType.Document)
    wrap = QTextBlockFormat()
    wrap.setNonBreakableLines(False)
    cursor.mergeBlockFormat(wrap)


class MessageDelegate(QStyledItemDelegate):
    """Rendering Markdown is the costly part of a repaint, so finished documents are kept, keyed
    by everything they show; a streamed token changes the key of its own row only."""

    sig_copied = Signal(str)  # a code block's text, just put on the clipboard by its "Copy" link
    sig_link = Signal(int, str)  # (row, href) of any other link clicked in a row: a reply's sources

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cache: OrderedDict[tuple[Any, ...], QTextDocument] = OrderedDict()

    def _document(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QTextDocument:
        role, text, state = index.data(Roles.ROLE), index.data(Roles.TEXT) or "", index.data(Roles.STATE)
        stats, version = index.data(Roles.STATS) or {}, index.data(Roles.VERSION)
        width = max(50, option.rect.width() - 2 * PADDING)
        key = (role, text, state, json.dumps(stats, sort_keys=True, default=str), version, width, option.font.toString())
        doc = self._cache.get(key)
        if doc is not None:
            self._cache.move_to_end(key)
            return doc
        doc = QTextDocument()
        doc.setDefaultFont(option.font)
        doc.setDocumentMargin(0)
        build_document(doc, role=role, text=text, state=state, stats=stats, version=version)
        _wrap_code_lines(doc)
        doc.setTextWidth(width)
        self._cache[key] = doc
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
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

    def anchor_at(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex, point: QPointF) -> str:
        """The link under ``point`` (view coordinates) in this row, or ""."""
        doc = self._document(option, index)
        local = QPointF(point.x() - option.rect.left() - PADDING, point.y() - option.rect.top() - PADDING)
        return doc.documentLayout().anchorAt(local)

    def editorEvent(self, event: QEvent, model: QAbstractItemModel, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> bool:
        """A click on a code block's "Copy" link copies that block."""
        if event.type() == QEvent.Type.MouseButtonRelease and isinstance(event, QMouseEvent) and event.button() == Qt.MouseButton.LeftButton:
            anchor = self.anchor_at(option, index, event.position())
            code = code_for_anchor(index.data(Roles.TEXT) or "", anchor)
            if code is not None:
                QGuiApplication.clipboard().setText(code)
                self.sig_copied.emit(code)
                return True
            if anchor:
                self.sig_link.emit(index.row(), anchor)
                return True
        return super().editorEvent(event, model, option, index)
