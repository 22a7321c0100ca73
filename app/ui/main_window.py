"""The main window: a sidebar of pages and a status bar with the model, backend and live speed."""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QMouseEvent, QShowEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QMainWindow, QMessageBox, QStackedWidget, QWidget

from app import APP_NAME
from app.chats import ChatStoreError, backups, open_history
from app.chats.schema import MEMORY
from app.paths import paths
from app.runtime.protocol import Method, RuntimeFailure
from app.ui import resources
from app.ui.bridge import RuntimeBridge
from app.ui.chat.page import ChatPage
from app.ui.models.page import ModelsPage
from app.ui.request import Request
from app.ui.server.page import ServerPage
from app.ui.settings.page import SettingsPage
from app.ui.welcome.page import WelcomePage
from app.ui.wizards.finetune import FinetunePage
from app.ui.wizards.quantize import QuantizePage

MEMORY_POLL_MS = 2000
NOTICE_MS = 15_000  # how long a notice stays in the status bar (it is in the log for good)
PageT = TypeVar("PageT", bound=QWidget)


class PlanLabel(QLabel):
    """The plan in one line; a click shows every choice with its reason."""

    def __init__(self) -> None:
        super().__init__("")
        self._plan: dict[str, Any] | None = None
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Click to see why Hearth chose these settings")

    def set_plan(self, plan: dict[str, Any] | None, summary: str = "") -> None:
        self._plan = plan
        self.setText(summary if plan else "")

    def details(self) -> str:
        if not self._plan:
            return ""
        lines = []
        for name, choice in self._plan.items():
            if isinstance(choice, dict) and "reason" in choice:
                mark = " (set by you)" if choice.get("overridden") else ""
                lines.append(f"<p><b>{name.replace('_', ' ').capitalize()}</b>{mark}: {html.escape(choice['reason'])}</p>")
        return "".join(lines)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if self._plan:
            QMessageBox.information(self.window(), "How Hearth runs this model", self.details())
        super().mousePressEvent(event)


class MainWindow(QMainWindow):
    sig_shown = Signal()  # the first time the window is shown (start-up timing)
    sig_engine_status = Signal(dict)  # an engine.status (or engine.load) answer the status bar now shows

    def __init__(self, bridge: RuntimeBridge, *, first_run: bool = False) -> None:
        """`first_run` opens on the welcome page (app.py passes ``not settings.first_run_done``)."""
        super().__init__()
        self.setWindowTitle(APP_NAME)
        self.setWindowIcon(resources.app_icon())
        self.resize(1100, 720)
        self._bridge = bridge
        self._load: Request | None = None
        self._shown = False

        self.pages = QStackedWidget(self)
        self.sidebar = QListWidget(self)
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setFixedWidth(150)
        self.sidebar.setAccessibleName("Pages")
        self._sidebar_pages: list[QWidget] = []
        # The sidebar, top to bottom: one line per page (its widget takes the bridge and a parent).
        self.chat_page = self.add_page("Chat", ChatPage(bridge, self), icon="chat")
        self.models_page = self.add_page("Models", ModelsPage(bridge, self), icon="models")
        self.quantize_page = self.add_page("Quantize", QuantizePage(bridge, self), icon="quantize")
        self.finetune_page = self.add_page("Fine-tune", FinetunePage(bridge, self), icon="finetune")
        self.server_page = self.add_page("Server", ServerPage(bridge, self), icon="server")
        self.settings_page = self.add_page("Settings", SettingsPage(self), icon="settings")
        self.welcome_page = WelcomePage(bridge, self)  # not in the sidebar: first run only
        self.pages.addWidget(self.welcome_page)
        self.sidebar.currentRowChanged.connect(self._on_sidebar_row)
        self.sidebar.setCurrentRow(0)
        if first_run:
            self.show_welcome()
        central = QWidget(self)
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.sidebar)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)

        self.model_label = QLabel("No model loaded")
        self.plan_label = PlanLabel()
        self.speed_label = QLabel("")
        self.speculation_label = QLabel("")  # the last reply's acceptance rate (issue 18)
        self.runtime_label = QLabel("Starting the runtime…")
        self.memory_label = QLabel("")
        bar = self.statusBar()
        for label in (self.model_label, self.plan_label, self.speed_label, self.speculation_label):
            bar.addWidget(label)
        bar.addPermanentWidget(self.memory_label)
        bar.addPermanentWidget(self.runtime_label)

        bridge.sig_ready.connect(self._on_ready)
        bridge.sig_start_failed.connect(lambda why: self.runtime_label.setText(f"Runtime failed to start: {why}"))
        bridge.sig_worker_died.connect(self._on_worker_died)
        bridge.sig_worker_restarted.connect(self._on_ready)
        bridge.notices.sig_notice.connect(lambda text: self.statusBar().showMessage(text, NOTICE_MS))
        self.chat_page.sig_speed.connect(lambda tps: self.speed_label.setText(f"decode {tps:.1f} tok/s"))
        self.chat_page.sig_speculation.connect(self.speculation_label.setText)
        self.chat_page.sig_model_loading.connect(self.model_label.setText)
        self.chat_page.sig_model_used.connect(lambda model_id: self.refresh_status())
        self.chat_page.sig_planned.connect(self._on_progress)
        for page in (self.models_page, self.quantize_page, self.finetune_page):
            page.sig_load_requested.connect(self.load_model)  # "Load" / "Chat with it"
        self.welcome_page.sig_start_chat.connect(self._start_chatting)
        self.welcome_page.sig_download.connect(self.show_download)
        self.models_page.sig_models_changed.connect(self.chat_page.set_models)
        self.chat_page.sig_status_changed.connect(self.refresh_status)
        self._memory_timer = QTimer(self)
        self._memory_timer.timeout.connect(self._update_memory)
        self._memory_timer.start(MEMORY_POLL_MS)
        self.settings_page.sig_restore_backup.connect(self.restore_chats)
        self.notice_box: QMessageBox | None = None  # what opening the chat history had to tell

    @property
    def bridge(self) -> RuntimeBridge:
        return self._bridge

    def add_page(self, title: str, page: PageT, *, icon: str | None = None) -> PageT:
        """Add a page to the sidebar, below the last one added; returns the page. The stack keeps
        sidebar pages first, in sidebar order, so row N of the sidebar is index N of the stack."""
        row = len(self._sidebar_pages)
        self.sidebar.insertItem(row, title)
        if icon:
            item = self.sidebar.item(row)
            item.setIcon(resources.icon(icon))
        self.pages.insertWidget(row, page)
        self._sidebar_pages.append(page)
        return page

    def show_page(self, page: QWidget) -> None:
        """Show a sidebar page (and select it) or a page outside the sidebar (the welcome)."""
        if page in self._sidebar_pages:
            self.sidebar.setCurrentRow(self._sidebar_pages.index(page))
        else:
            self.sidebar.blockSignals(True)
            self.sidebar.setCurrentRow(-1)
            self.sidebar.blockSignals(False)
        self.pages.setCurrentWidget(page)

    def show_welcome(self) -> None:
        self.show_page(self.welcome_page)
        self._focus_welcome()

    def _focus_welcome(self) -> None:
        """Focus on the sidebar would make its first row current (Qt does that on focus-in) and
        leave the welcome for the chat before anyone has read it; the start button takes it."""
        if self.pages.currentWidget() is self.welcome_page:
            self.welcome_page.start_button.setFocus()

    def show_download(self) -> None:
        """The Models page's Download tab: where a bigger model comes from."""
        self.show_page(self.models_page)
        self.models_page.tabs.setCurrentWidget(self.models_page.hub_panel)

    def _on_sidebar_row(self, row: int) -> None:
        if 0 <= row < len(self._sidebar_pages):
            self.pages.setCurrentWidget(self._sidebar_pages[row])

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._focus_welcome()  # children are visible now, so the focus request holds
        if not self._shown:
            self._shown = True
            self.sig_shown.emit()
            QTimer.singleShot(0, self.show_store_notice)

    def show_store_notice(self) -> None:
        """Tell the person, once, what opening the chat history had to do (a damaged file moved
        aside and salvaged, a history that could not be opened): `ChatStore.notice`."""
        notice, self.chat_page.store.notice = self.chat_page.store.notice, None
        if not notice:
            return
        box = QMessageBox(QMessageBox.Icon.Warning, "Your chat history", notice, QMessageBox.StandardButton.Ok, self)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # the path can be copied
        box.open()  # window-modal, never blocks the event loop
        self.notice_box = box

    def restore_chats(self, backup: Path) -> None:
        """Settings' "Restore a backup…": close the history, move it aside, put the backup in its
        place and open it; takes effect at once."""
        page, status = self.chat_page, self.settings_page.status
        if page.busy:
            status.setText("Not restored: a reply is being written. Stop it, then restore.")
            return
        path = page.store.path if str(page.store.path) != MEMORY else paths().chats_db
        page.replies.abandon()
        page.store.close()
        try:
            moved = backups.restore(backup, path, now=datetime.now())
        except (ChatStoreError, OSError) as exc:
            status.setText(f"Not restored: {exc}")
        else:
            status.setText(f"Restored the backup {backup.name}. Your previous history is kept at {moved}.")
        page.set_store(open_history(path))
        self.show_store_notice()

    def load_model(self, model_id: str) -> None:
        self.chat_page.model = model_id
        self.sidebar.setCurrentRow(0)
        self.model_label.setText(f"Loading {model_id}…")
        # The newest choice is the one the status bar follows.
        self._load = (self._bridge.run(Method.ENGINE_LOAD, {"model": model_id}, replaces=self._load)
                      .on_progress(self._on_progress).on_success(self._show_status).on_failure(self._on_load_failed))

    def _start_chatting(self) -> None:
        self.show_page(self.chat_page)
        self.chat_page.input.setFocus()

    def refresh_status(self) -> None:
        self._bridge.run(Method.ENGINE_STATUS).on_success(self._show_status)

    # ---- runtime events -----------------------------------------------------------------------

    def _on_ready(self, info: dict[str, Any] | None = None) -> None:
        self.runtime_label.setText("Runtime ready")
        self.models_page.refresh()
        self.refresh_status()

    def _on_worker_died(self, why: str) -> None:
        self.runtime_label.setText("Runtime stopped; restarting…")
        self.model_label.setText("No model loaded")
        self.plan_label.set_plan(None)
        self.statusBar().showMessage(why, 10000)

    def _on_load_failed(self, failure: RuntimeFailure) -> None:
        self.model_label.setText("No model loaded")
        self._bridge.notices.failure(failure)

    def _on_progress(self, data: dict[str, Any]) -> None:
        """A load's progress (here or inside a chat request): the plan is shown before the load starts."""
        if data.get("stage") == "planned":
            self.plan_label.set_plan(data.get("plan"), str(data.get("message", "")))

    def _show_status(self, status: dict[str, Any]) -> None:
        if not status.get("loaded"):
            self.model_label.setText("No model loaded (the embedded model loads on your first message)")
            self.plan_label.set_plan(None)
        else:
            self.model_label.setText(f"{status['model']['name']} · {status['backend']}")
            self.plan_label.set_plan(status.get("plan"), str(status.get("summary", "")))
        self.sig_engine_status.emit(status)

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
