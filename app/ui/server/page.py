"""The Server page: start/stop the OpenAI-compatible API in the worker, its address and key, a live log.

The server runs in the worker next to the model (no second copy); this page only sends
`server.start` / `server.stop` and polls `server.log` for finished requests while it runs.
"""

from __future__ import annotations

import secrets
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.runtime.protocol import Method, RuntimeFailure
from app.ui.bridge import RuntimeBridge
from app.ui.errors import worded
from app.ui.request import Request
from app.ui.server.log_model import RequestLogModel

POLL_MS = 700


class ServerPage(QWidget):
    sig_running_changed = Signal(bool, str)  # running, base URL ("" when stopped)

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from app import settings as settings_module

        saved = settings_module.load()
        self._bridge = bridge
        self._control: Request | None = None  # the pending start/stop/status request (the newest one counts)
        self._poll: Request | None = None  # the log read in flight (one at a time)
        self._last_seq = 0
        self.url = ""

        self.host = QLineEdit(saved.server_host, self)
        self.host.setToolTip("127.0.0.1: only this computer. Any other address lets other machines in, and needs an API key.")
        self.port = QSpinBox(self)
        self.port.setRange(0, 65535)
        self.port.setValue(saved.server_port)
        self.port.setToolTip("0 picks a free port")
        self.key = QLineEdit(saved.server_api_key or "", self)
        self.key.setEchoMode(QLineEdit.EchoMode.PasswordEchoOnEdit)
        self.key.setPlaceholderText("none (only allowed on 127.0.0.1)")
        generate = QPushButton("New key", self)
        generate.clicked.connect(lambda: self.key.setText(secrets.token_urlsafe(24)))
        key_row = QHBoxLayout()
        key_row.addWidget(self.key, 1)
        key_row.addWidget(generate)
        self.toggle = QPushButton("Start server", self)
        self.toggle.clicked.connect(self._toggle)
        self.address = QLabel("Stopped.", self)
        self.address.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Address", self.host)
        form.addRow("Port", self.port)
        form.addRow("API key", key_row)
        controls = QHBoxLayout()
        controls.addWidget(self.toggle)
        controls.addWidget(self.address, 1)

        self.log_model = RequestLogModel(self)
        self.log_view = QTableView(self)
        self.log_view.setModel(self.log_model)
        self.log_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.log_view.verticalHeader().hide()
        self.log_view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.log_view.horizontalHeader().setStretchLastSection(True)
        self.log_model.rowsInserted.connect(lambda *args: self.log_view.scrollToBottom())

        layout = QVBoxLayout(self)
        intro = QLabel("Serve the loaded model to editors, agents and scripts through an OpenAI-compatible API. "
                       "Requests wait in line with your own chats; the chat keeps its place.", self)
        intro.setWordWrap(True)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addLayout(controls)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("Requests", self))
        layout.addWidget(self.log_view, 1)

        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll_log)
        bridge.sig_ready.connect(lambda info: self.refresh())
        bridge.sig_worker_restarted.connect(lambda: self._set_running(False, ""))

    @property
    def running(self) -> bool:
        return bool(self.url)

    def refresh(self) -> None:
        """Ask the worker whether its server runs (after a start of the window or a worker restart)."""
        if self._control is None or not self._control.running:
            self._send_control(Method.SERVER_STATUS)

    def start(self) -> None:
        params: dict[str, Any] = {"host": self.host.text().strip(), "port": self.port.value(), "api_key": self.key.text().strip() or None}
        self.status.setText("Starting…")
        self.toggle.setEnabled(False)
        self._send_control(Method.SERVER_START, params)

    def stop(self) -> None:
        self.toggle.setEnabled(False)
        self._send_control(Method.SERVER_STOP)

    def _send_control(self, method: Method, params: dict[str, Any] | None = None) -> None:
        self._control = self._bridge.run(method, params, replaces=self._control).on_success(self._on_control).on_failure(self._on_control_failed)

    def _toggle(self) -> None:
        self.stop() if self.running else self.start()

    def _poll_log(self) -> None:
        if self._poll is None or not self._poll.running:
            # A failed read is tried again at the next tick: nothing to tell the person.
            self._poll = self._bridge.run(Method.SERVER_LOG, {"since": self._last_seq}).on_success(self._on_log).on_failure(lambda failure: None)

    def _on_log(self, result: dict[str, Any]) -> None:
        entries = list(result.get("entries", []))
        if entries:
            self._last_seq = max(int(e["log_seq"]) for e in entries)
            self.log_model.append(entries)
        if not result.get("running"):
            self._set_running(False, "")

    def _on_control(self, result: dict[str, Any]) -> None:
        self._set_running(bool(result.get("running")), str(result.get("url", "")))
        self.status.setText("")

    def _on_control_failed(self, failure: RuntimeFailure) -> None:
        self.toggle.setEnabled(True)
        self.status.setText(worded(failure))

    def _set_running(self, running: bool, url: str) -> None:
        self.url = url if running else ""
        self.toggle.setEnabled(True)
        self.toggle.setText("Stop server" if running else "Start server")
        for field in (self.host, self.port, self.key):
            field.setEnabled(not running)
        if running:
            self.address.setText(f"Serving at {url}/v1  (OpenAI-compatible; model ids as on the Models page)")
            self._poll_log()
            self._timer.start()
        else:
            self.address.setText("Stopped.")
            self._timer.stop()
        self.sig_running_changed.emit(running, self.url)
