"""The chat transcript: a list model over plain message records; a streamed token touches one row."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt

from app.chats import Message

Index = QModelIndex | QPersistentModelIndex


@dataclass
class ChatMessage:
    role: str  # "user" | "assistant" | "system" | "notice" (a note from Hearth, never sent or stored)
    text: str = ""
    state: str = "complete"  # "streaming" | "complete" | "interrupted" | "failed"
    stats: dict[str, Any] = field(default_factory=dict)
    message_id: int | None = None  # the store's id; None for notices
    version: int = 1
    version_count: int = 1

    @classmethod
    def from_record(cls, m: Message) -> ChatMessage:
        return cls(m.role.value, m.content, m.state.value, dict(m.meta), m.id, m.version, m.version_count)


class Roles(IntEnum):
    ROLE = Qt.ItemDataRole.UserRole + 1
    TEXT = Qt.ItemDataRole.UserRole + 2
    STATE = Qt.ItemDataRole.UserRole + 3
    STATS = Qt.ItemDataRole.UserRole + 4
    MESSAGE_ID = Qt.ItemDataRole.UserRole + 5
    VERSION = Qt.ItemDataRole.UserRole + 6  # (version, count), e.g. (2, 3)


class TranscriptModel(QAbstractListModel):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._messages: list[ChatMessage] = []

    # ---- Qt model interface -------------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._messages)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._messages):
            return None
        message = self._messages[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, Roles.TEXT):
            return message.text
        if role == Roles.ROLE:
            return message.role
        if role == Roles.STATE:
            return message.state
        if role == Roles.STATS:
            return message.stats
        if role == Roles.MESSAGE_ID:
            return message.message_id
        if role == Roles.VERSION:
            return (message.version, message.version_count)
        return None

    def roleNames(self) -> dict[int, bytes]:
        return {Roles.ROLE: b"role", Roles.TEXT: b"text", Roles.STATE: b"state", Roles.STATS: b"stats",
                Roles.MESSAGE_ID: b"messageId", Roles.VERSION: b"version"}

    # ---- edits --------------------------------------------------------------------------------

    def append(self, message: ChatMessage) -> int:
        row = len(self._messages)
        self.beginInsertRows(QModelIndex(), row, row)
        self._messages.append(message)
        self.endInsertRows()
        return row

    def append_text(self, row: int, text: str) -> None:
        self._messages[row].text += text
        index = self.index(row)
        self.dataChanged.emit(index, index, [Roles.TEXT])

    def finish(self, row: int, state: str, stats: dict[str, Any] | None = None) -> None:
        message = self._messages[row]
        message.state = state
        if stats is not None:
            message.stats = stats
        index = self.index(row)
        self.dataChanged.emit(index, index, [Roles.STATE, Roles.STATS])

    def set_messages(self, messages: list[ChatMessage]) -> None:
        self.beginResetModel()
        self._messages = list(messages)
        self.endResetModel()

    def clear(self) -> None:
        self.set_messages([])

    def message(self, row: int) -> ChatMessage:
        return self._messages[row]

    def row_of(self, message_id: int) -> int:
        return next((r for r, m in enumerate(self._messages) if m.message_id == message_id), -1)

    def conversation(self) -> list[dict[str, str]]:
        """What the model is sent: user and assistant turns (and a system prompt), never notices."""
        return [
            {"role": m.role, "content": m.text}
            for m in self._messages
            if m.role in ("system", "user", "assistant") and (m.text or m.role != "assistant")
        ]
