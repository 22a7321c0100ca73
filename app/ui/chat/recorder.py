"""Writes a streamed reply into the store: buffered tokens flushed every ~0.5 s and on finish.

A killed GUI therefore loses at most the last half second of text; the store marks the reply
`streaming` until it is finished, so the next start (`ChatStore.recover`) shows it interrupted.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.chats import ChatStore, ChatStoreError, Message, MessageState

log = logging.getLogger(__name__)

FLUSH_MS = 500


class ReplyRecorder(QObject):
    sig_flushed = Signal(int)  # characters of the reply now in the store

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._store: ChatStore | None = None
        self.message_id: int | None = None
        self._pending: list[str] = []
        self.flushed_chars = 0
        self._timer = QTimer(self)
        self._timer.setInterval(FLUSH_MS)
        self._timer.timeout.connect(self.flush)

    @property
    def active(self) -> bool:
        return self.message_id is not None

    def start(self, store: ChatStore, message_id: int) -> None:
        self._store, self.message_id = store, message_id
        self._pending.clear()
        self.flushed_chars = 0
        self._timer.start()

    def add(self, text: str) -> None:
        if self.message_id is not None:
            self._pending.append(text)

    def flush(self) -> None:
        if self._store is None or self.message_id is None or not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        try:
            self._store.append_text(self.message_id, text)
        except ChatStoreError:
            log.exception("could not save streamed text of message %s", self.message_id)
            return
        self.flushed_chars += len(text)
        self.sig_flushed.emit(self.flushed_chars)

    def finish(self, state: MessageState, meta: dict[str, Any] | None = None) -> Message | None:
        """Write the rest of the text and the figures in one transaction; stop recording."""
        self._timer.stop()
        store, message_id = self._store, self.message_id
        tail = "".join(self._pending)
        self._pending.clear()
        self._store, self.message_id = None, None
        if store is None or message_id is None:
            return None
        try:
            return store.finish_message(message_id, state, tail=tail, meta=meta)
        except ChatStoreError:
            log.exception("could not finish message %s", message_id)
            return None
