"""The conversations list beside the transcript: search, rename, delete with undo.

The list is a QAbstractListModel over plain rows (`Conversation`s, or search hits when the search
box holds text); the panel only asks the page to open, rename or delete by id, so the store has
one owner (the page), opened here by `open_store`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QInputDialog, QLabel, QLineEdit, QListView, QPushButton, QVBoxLayout, QWidget

from app.chats import ChatStore, Conversation, SearchHit, open_history
from app.paths import paths

Index = QModelIndex | QPersistentModelIndex
UNDO_MS = 15_000
SEARCH_DELAY_MS = 200
log = logging.getLogger(__name__)


def open_store() -> ChatStore:
    """The user's chat history, whatever state its file is in (`open_history`: a damaged file is
    moved aside and salvaged, one that cannot be opened leaves an in-memory history); what the
    person must hear about is in `store.notice`, which the main window shows."""
    try:
        paths().ensure()
    except OSError:
        log.exception("Hearth's folders cannot be created")  # open_history says so in the window
    return open_history(paths().chats_db)


@dataclass(frozen=True)
class ConversationRow:
    conversation_id: int
    title: str
    snippet: str = ""  # a search hit's matching text
    message_id: int | None = None  # the message a search hit points at


class ConversationListModel(QAbstractListModel):
    ID_ROLE = Qt.ItemDataRole.UserRole + 1

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._rows: list[ConversationRow] = []

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return f"{row.title}\n{row.snippet}" if row.snippet else row.title
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.snippet or row.title
        if role == self.ID_ROLE:
            return row.conversation_id
        return None

    def set_rows(self, rows: list[ConversationRow]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def row_at(self, row: int) -> ConversationRow:
        return self._rows[row]

    def rows(self) -> list[ConversationRow]:
        return list(self._rows)

    def find(self, conversation_id: int) -> int:
        return next((i for i, r in enumerate(self._rows) if r.conversation_id == conversation_id), -1)

    @staticmethod
    def from_conversations(conversations: list[Conversation]) -> list[ConversationRow]:
        return [ConversationRow(c.id, c.title) for c in conversations]

    @staticmethod
    def from_hits(hits: list[SearchHit]) -> list[ConversationRow]:
        seen: set[int] = set()
        rows = []
        for hit in hits:  # best first; one row per conversation
            if hit.conversation_id not in seen:
                seen.add(hit.conversation_id)
                rows.append(ConversationRow(hit.conversation_id, hit.title, hit.snippet, hit.message_id))
        return rows


class ConversationsPanel(QWidget):
    sig_open = Signal(int, object)  # conversation id, message id to reveal (a search hit) or None
    sig_rename = Signal(int, str)
    sig_delete = Signal(int)
    sig_undo_delete = Signal()
    sig_search = Signal(str)  # the search text changed (after a short pause); "" = list all

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list_model = ConversationListModel(self)
        self.search_box = QLineEdit(self)
        self.search_box.setPlaceholderText("Search chats…")
        self.search_box.setClearButtonEnabled(True)
        self.view = QListView(self)
        self.view.setModel(self.list_model)
        self.view.setAccessibleName("Conversations")
        self.view.setWordWrap(True)
        self.rename_button = QPushButton("Rename", self)
        self.delete_button = QPushButton("Delete", self)
        self.undo_label = QLabel("Conversation deleted", self)
        self.undo_button = QPushButton("Undo", self)
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._undo_timer = QTimer(self)
        self._undo_timer.setSingleShot(True)
        self._undo_timer.setInterval(UNDO_MS)

        buttons = QHBoxLayout()
        buttons.addWidget(self.rename_button)
        buttons.addWidget(self.delete_button)
        undo = QHBoxLayout()
        undo.addWidget(self.undo_label, 1)
        undo.addWidget(self.undo_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.search_box)
        layout.addWidget(self.view, 1)
        layout.addLayout(undo)
        layout.addLayout(buttons)
        self.setMinimumWidth(180)
        self.setMaximumWidth(280)
        self.show_undo(False)

        self.search_box.textChanged.connect(lambda _text: self._search_timer.start())
        self._search_timer.timeout.connect(lambda: self.sig_search.emit(self.search_box.text().strip()))
        self.view.clicked.connect(self._open)
        self.rename_button.clicked.connect(self._rename)
        self.delete_button.clicked.connect(self._delete)
        self.undo_button.clicked.connect(self._undo)
        self._undo_timer.timeout.connect(lambda: self.show_undo(False))

    def set_rows(self, rows: list[ConversationRow], current: int | None) -> None:
        self.list_model.set_rows(rows)
        self.select(current)

    def select(self, conversation_id: int | None) -> None:
        row = -1 if conversation_id is None else self.list_model.find(conversation_id)
        self.view.setCurrentIndex(self.list_model.index(row) if row >= 0 else QModelIndex())

    def selected_id(self) -> int | None:
        index = self.view.currentIndex()
        return index.data(ConversationListModel.ID_ROLE) if index.isValid() else None

    def show_undo(self, visible: bool) -> None:
        self.undo_label.setVisible(visible)
        self.undo_button.setVisible(visible)
        if visible:
            self._undo_timer.start()

    def _open(self, index: QModelIndex) -> None:
        row = self.list_model.row_at(index.row())
        self.sig_open.emit(row.conversation_id, row.message_id)

    def _rename(self) -> None:
        cid = self.selected_id()
        if cid is None:
            return
        old = self.list_model.row_at(self.list_model.find(cid)).title
        title, ok = QInputDialog.getText(self, "Rename chat", "Title:", text=old)
        if ok and title.strip():
            self.sig_rename.emit(cid, title.strip())

    def _delete(self) -> None:
        cid = self.selected_id()
        if cid is not None:
            self.sig_delete.emit(cid)

    def _undo(self) -> None:
        self.show_undo(False)
        self.sig_undo_delete.emit()
