"""Paints one transcript row: who spoke (with its ‹ 2/3 › version), the text, and the reply's figures."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSize
from PySide6.QtGui import QAbstractTextDocumentLayout, QPainter, QPalette, QTextDocument
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from app.ui.chat.render import build_document
from app.ui.chat.transcript import Roles

PADDING = 10


class MessageDelegate(QStyledItemDelegate):
    def _document(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QTextDocument:
        doc = QTextDocument()
        doc.setDefaultFont(option.font)
        doc.setDocumentMargin(0)
        build_document(doc, role=index.data(Roles.ROLE), text=index.data(Roles.TEXT) or "", state=index.data(Roles.STATE),
                       stats=index.data(Roles.STATS) or {}, version=index.data(Roles.VERSION))
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
