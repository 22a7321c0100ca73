"""The main window: a sidebar of pages and a status bar with the model, backend and live speed."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QMainWindow, QStackedWidget, QWidget

from app import APP_NAME
from app.runtime.protocol import Method
from app.ui.bridge import RuntimeBridge
from app.ui.chat.page import ChatPage
from app.ui.models.page import ModelsPage

MEMORY_POLL_MS = 2000


class MainWindow(QMainWindow):
    sig_shown = Signal()  # the first time the window is shown (start-up timing)

    def __init__(self, bridge: RuntimeBridge) -> None:
        super().__init__()
        self.setWindowTitle(APP_NAME)
        self.resize(1100, 720)
        self._bridge = bridge
        self._status_request: str | None = None
        self._load_request: str | None = None
        self._shown = False

        self.chat_page = ChatPage(bridge, self)
        self.models_page = ModelsPage(bridge, self)
        self.pages = QStackedWidget(self)
        self.sidebar = QListWidget(self)
        self.sidebar.setFixedWidth(150)
        self.sidebar.setAccessibleName("Pages")
        for title, page in (("Chat", self.chat_page), ("Models", self.models_page)):
            self.sidebar.addItem(title)
            self.pages.addWidget(page)
        self.sidebar.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.sidebar.setCurrentRow(0)
        central = QWidget(self)
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.sidebar)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)

        self.model_label = QLabel("No model loaded")
        self.backend_label = QLabel("")
        self.speed_label = QLabel("")
        self.runtime_label = QLabel("Starting the runtime…")
        self.memory_label = QLabel("")
        bar = self.statusBar()
        for label in (self.model_label, self.backend_label, self.speed_label):
            bar.addWidget(label)
        bar.addPermanentWidget(self.memory_label)
        bar.addPermanentWidget(self.runtime_label)

        bridge.sig_ready.connect(self._on_ready)
        bridge.sig_start_failed.connect(lambda why: self.runtime_label.setText(f"Runtime failed to start: {why}"))
        bridge.sig_worker_died.connect(self._on_worker_died)
        bridge.sig_worker_restarted.connect(self._on_ready)
        bridge.sig_finished.connect(self._on_finished)
        bridge.sig_failed.connect(self._on_failed)
        self.chat_page.sig_speed.connect(lambda tps: self.speed_label.setText(f"{tps:.1f} tok/s"))
        self.chat_page.sig_model_loading.connect(self.model_label.setText)
        self.chat_page.sig_model_used.connect(lambda model_id: self.refresh_status())
        self.models_page.sig_load_requested.connect(self.load_model)
        self._memory_timer = QTimer(self)
        self._memory_timer.timeout.connect(self._update_memory)
        self._memory_timer.start(MEMORY_POLL_MS)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._shown:
            self._shown = True
            self.sig_shown.emit()

    def load_model(self, model_id: str) -> None:
        self.chat_page.model = model_id
        self.sidebar.setCurrentRow(0)
        self.model_label.setText(f"Loading {model_id}…")
        self._load_request = self._bridge.request(Method.ENGINE_LOAD, {"model": model_id})

    def refresh_status(self) -> None:
        self._status_request = self._bridge.request(Method.ENGINE_STATUS)

    # ---- runtime events -----------------------------------------------------------------------

    def _on_ready(self, info: dict[str, Any] | None = None) -> None:
        self.runtime_label.setText("Runtime ready")
        self.models_page.refresh()
        self.refresh_status()

    def _on_worker_died(self, why: str) -> None:
        self.runtime_label.setText("Runtime stopped; restarting…")
        self.model_label.setText("No model loaded")
        self.backend_label.setText("")
        self.statusBar().showMessage(why, 10000)

    def _on_finished(self, request_id: str, result: dict[str, Any]) -> None:
        if request_id == self._load_request:
            self._load_request = None
            self._show_status(result)
        elif request_id == self._status_request:
            self._status_request = None
            self._show_status(result)

    def _on_failed(self, request_id: str, kind: str, message: str) -> None:
        if request_id == self._load_request:
            self._load_request = None
            self.model_label.setText("No model loaded")
            self.statusBar().showMessage(message, 15000)

    def _show_status(self, status: dict[str, Any]) -> None:
        if not status.get("loaded"):
            self.model_label.setText("No model loaded (the embedded model loads on your first message)")
            self.backend_label.setText("")
            return
        model, options = status["model"], status.get("options", {})
        self.model_label.setText(f"{model['name']} · {model['quantization']}")
        gpu = "CPU" if options.get("n_gpu_layers", 0) == 0 else "GPU"
        self.backend_label.setText(f"{status['backend']} · {gpu} · {options.get('n_ctx', 0) // 1024}k ctx")

    def _update_memory(self) -> None:
        pid = self._bridge.client.pid
        if pid is None or not self._bridge.client.alive:
            self.memory_label.setText("")
            return
        import psutil

        try:
            rss = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return
        self.memory_label.setText(f"Runtime memory {rss / 2**20:.0f} MB")
