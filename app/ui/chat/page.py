"""The chat page: the transcript, an input box, Send/Stop; replies stream in token by token."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QAbstractItemView, QHBoxLayout, QLabel, QListView, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from app.runtime.protocol import ErrorKind, Method, Sampling
from app.ui.bridge import RuntimeBridge
from app.ui.chat.delegate import MessageDelegate
from app.ui.chat.transcript import ChatMessage, TranscriptModel


class ChatPage(QWidget):
    sig_speed = Signal(float)  # live decode tokens/s of the reply being streamed
    sig_model_loading = Signal(str)  # a message such as "Loading SmolLM2…"
    sig_model_used = Signal(str)  # the model id that answered

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._bridge = bridge
        self.sampling = Sampling()
        self.model: str | None = None  # None: the loaded model, or the embedded one
        self._request_id: str | None = None
        self._row = -1
        self._tokens = 0
        self._first_token_at = 0.0
        self._sent_at = 0.0

        self.transcript = TranscriptModel(self)
        self.view = QListView(self)
        self.view.setModel(self.transcript)
        self._delegate = MessageDelegate(self.view)
        self.view.setItemDelegate(self._delegate)
        self.view.setWordWrap(True)
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.view.setAccessibleName("Transcript")

        self.input = QPlainTextEdit(self)
        self.input.setPlaceholderText("Ask anything. Enter sends, Shift+Enter starts a new line.")
        self.input.setFixedHeight(80)
        self.input.installEventFilter(self)
        self.send_button = QPushButton("Send", self)
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self._send_or_stop)
        self.new_button = QPushButton("New chat", self)
        self.new_button.clicked.connect(self.new_chat)
        self.hint = QLabel("", self)
        self.hint.setObjectName("hint")

        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.new_button)
        row = QHBoxLayout()
        row.addWidget(self.input, 1)
        row.addLayout(buttons)
        layout = QVBoxLayout(self)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.hint)
        layout.addLayout(row)

        bridge.sig_token.connect(self._on_token)
        bridge.sig_progress.connect(self._on_progress)
        bridge.sig_finished.connect(self._on_finished)
        bridge.sig_failed.connect(self._on_failed)
        bridge.sig_worker_died.connect(self._on_worker_died)
        bridge.sig_worker_restarted.connect(self._on_worker_restarted)

    @property
    def busy(self) -> bool:
        return self._request_id is not None

    # ---- actions ------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        text = text.strip()
        if not text or self.busy:
            return
        self.transcript.append(ChatMessage("user", text))
        messages = self.transcript.conversation()
        self._row = self.transcript.append(ChatMessage("assistant", state="streaming"))
        self._tokens, self._sent_at, self._first_token_at = 0, time.perf_counter(), 0.0
        params: dict[str, Any] = {"messages": messages, "model": self.model, "sampling": self.sampling.to_dict()}
        self._request_id = self._bridge.request(Method.CHAT, params)
        self.input.clear()
        self._set_busy(True)
        self.view.scrollToBottom()

    def stop(self) -> None:
        if self._request_id is not None:
            self._bridge.cancel(self._request_id)
            self.hint.setText("Stopping…")

    def new_chat(self) -> None:
        self.stop()
        self.transcript.clear()

    def _send_or_stop(self) -> None:
        if self.busy:
            self.stop()
        else:
            self.send(self.input.toPlainText())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.input and event.type() == QEvent.Type.KeyPress:
            key = QKeyEvent(event)  # type: ignore[call-overload]
            if key.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not key.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self._send_or_stop()
                return True
        return super().eventFilter(watched, event)

    # ---- runtime events -----------------------------------------------------------------------

    def _on_token(self, request_id: str, text: str) -> None:
        if request_id != self._request_id:
            return
        now = time.perf_counter()
        if self._tokens == 0:
            self._first_token_at = now
            self.hint.setText("")
        self._tokens += 1
        self.transcript.append_text(self._row, text)
        self._delegate.sizeHintChanged.emit(self.transcript.index(self._row))
        if self._tokens > 1 and now > self._first_token_at:
            self.sig_speed.emit((self._tokens - 1) / (now - self._first_token_at))
        self.view.scrollToBottom()

    def _on_progress(self, request_id: str, data: dict[str, Any]) -> None:
        if request_id == self._request_id and data.get("message"):
            self.hint.setText(str(data["message"]) + ("…" if data.get("stage") == "loading" else ""))
            if data.get("stage") == "loading":
                self.sig_model_loading.emit(str(data["message"]))

    def _on_finished(self, request_id: str, result: dict[str, Any]) -> None:
        if request_id != self._request_id:
            return
        usage, timings = result.get("usage", {}), result.get("timings", {})
        stats = {"tokens": usage.get("completion_tokens", 0), "tps": timings.get("decode_tps", 0.0), "ttft_ms": timings.get("ttft_ms", 0.0)}
        cancelled = result.get("finish_reason") == "cancelled"
        self.transcript.finish(self._row, "interrupted" if cancelled else "complete", stats)
        self.hint.setText("Stopped." if cancelled else "")
        if result.get("model"):
            self.sig_model_used.emit(str(result["model"]))
        self._done()

    def _on_failed(self, request_id: str, kind: str, message: str) -> None:
        if request_id != self._request_id:
            return
        died = kind == ErrorKind.WORKER_DIED.value
        self.transcript.finish(self._row, "interrupted" if died else "failed")
        if not died:  # a death is reported once, by _on_worker_died
            self.transcript.append(ChatMessage("notice", message))
        self._done()

    def _on_worker_died(self, why: str) -> None:
        self.transcript.append(ChatMessage("notice", f"{why} Your conversation is kept."))
        self.hint.setText("Restarting the runtime…")

    def _on_worker_restarted(self) -> None:
        self.hint.setText("The runtime was restarted. You can continue the conversation.")

    def _done(self) -> None:
        self._request_id = None
        self._delegate.sizeHintChanged.emit(self.transcript.index(self._row))
        self._set_busy(False)
        self.view.scrollToBottom()

    def _set_busy(self, busy: bool) -> None:
        self.send_button.setText("Stop" if busy else "Send")
        self.input.setReadOnly(busy)
