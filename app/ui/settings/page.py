"""The Settings page: what Hearth may choose for you, the server's defaults, and where data lives.

Saved through app/settings.py. Saving merges field by field into the file as it is now, not as it
was when the page was filled: the Models page and the worker also write settings (a folder added
there must not be lost because this page was open).
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app import settings as settings_module
from app.chats import backups
from app.paths import paths
from app.settings import Settings
from app.ui.settings.backups import BackupDialog

log = logging.getLogger(__name__)

PRIVACY = (
    "Nothing is sent anywhere. Hearth has no telemetry, no accounts and no update checks. It uses the network "
    "only when you ask it to: to search and download models from Hugging Face, to talk to a remote engine you "
    "add below, and to answer other programs when you turn on the local server."
)
THEME_LABELS = {"system": "Follow the system", "light": "Light", "dark": "Dark"}
ENDPOINT_KEYS = ("name", "url", "api_key")
# The Settings fields this page edits; everything else in the file is left as it is.
EDITED = ("model_dirs", "context_length", "n_threads", "theme", "server_host", "server_port", "server_api_key",
          "server_cors_origins", "server_queue_limit", "server_max_tokens", "remote_endpoints")


def merge(baseline: Settings, edited: Settings, current: Settings) -> Settings:
    """`current` with the person's edits (the fields where `edited` differs from `baseline`).

    Folders are merged as a set difference, so a folder another page added meanwhile stays."""
    merged = replace(current)
    for name in EDITED:
        before, after = getattr(baseline, name), getattr(edited, name)
        if before == after:
            continue
        if name == "model_dirs":
            removed = set(before) - set(after)
            kept = [d for d in current.model_dirs if d not in removed]
            merged.model_dirs = kept + [d for d in after if d not in kept]
        else:
            setattr(merged, name, after)
    return merged


def _spin(minimum: int, maximum: int, *, step: int = 1, auto: str | None = None) -> QSpinBox:
    box = QSpinBox()
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setGroupSeparatorShown(True)
    if auto:
        box.setSpecialValueText(auto)  # shown at the minimum, which stands for "Hearth chooses"
    return box


class SettingsPage(QWidget):
    sig_saved = Signal(object)  # the Settings as saved
    sig_theme_changed = Signal(str)  # the theme setting, when a save changed it
    sig_restore_backup = Signal(object)  # Path of the chat backup the person chose to restore

    def __init__(self, parent: QWidget | None = None, *, path: Path | None = None) -> None:
        super().__init__(parent)
        self._path = path
        self._baseline = Settings()

        # Models
        self.folders = QListWidget()
        self.folders.setAccessibleName("Model folders")
        self.folders.setMaximumHeight(110)
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.clicked.connect(self._pick_folder)
        self.remove_folder_button = QPushButton("Remove")
        self.remove_folder_button.clicked.connect(self.remove_selected_folder)
        folder_buttons = QVBoxLayout()
        folder_buttons.addWidget(self.add_folder_button)
        folder_buttons.addWidget(self.remove_folder_button)
        folder_buttons.addStretch(1)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folders, 1)
        folder_row.addLayout(folder_buttons)
        models_box = QGroupBox("Models")
        models_layout = QVBoxLayout(models_box)
        models_layout.addWidget(QLabel("Hearth finds GGUF models in these folders, besides its own and the Hugging Face cache:"))
        models_layout.addLayout(folder_row)

        # Running models
        self.context_length = _spin(0, 1_048_576, step=1024, auto="Automatic (the largest that fits)")
        self.threads = _spin(0, 1024, auto="Automatic (one per core)")
        run_box = QGroupBox("Running models")
        run_form = QFormLayout(run_box)
        run_form.addRow("Default context length (tokens):", self.context_length)
        run_form.addRow("CPU threads:", self.threads)
        run_form.addRow(self._muted("Automatic lets the planner choose from the model and this computer; a number you set always wins."))

        # Appearance
        self.theme = QComboBox()
        for key, label in THEME_LABELS.items():
            self.theme.addItem(label, key)
        look_box = QGroupBox("Appearance")
        QFormLayout(look_box).addRow("Theme:", self.theme)

        # Local server
        self.server_host = QLineEdit()
        self.server_port = _spin(1, 65535)
        self.server_api_key = QLineEdit()
        self.server_api_key.setEchoMode(QLineEdit.EchoMode.PasswordEchoOnEdit)
        self.server_api_key.setPlaceholderText("none (needed when the host is not 127.0.0.1)")
        self.server_cors = QLineEdit()
        self.server_cors.setPlaceholderText("off; e.g. http://localhost:3000, https://example.org")
        self.server_queue = _spin(1, 10_000)
        self.server_max_tokens = _spin(1, 1_048_576, step=256)
        server_box = QGroupBox("Local server defaults (OpenAI-compatible API)")
        server_form = QFormLayout(server_box)
        server_form.addRow("Host:", self.server_host)
        server_form.addRow("Port:", self.server_port)
        server_form.addRow("API key:", self.server_api_key)
        server_form.addRow("Allowed web origins (CORS):", self.server_cors)
        server_form.addRow("Requests waiting or running, at most:", self.server_queue)
        server_form.addRow("Tokens per request, at most:", self.server_max_tokens)

        # Remote engines
        self.endpoints = QTableWidget(0, 3)
        self.endpoints.setHorizontalHeaderLabels(["Name", "URL (OpenAI-compatible)", "API key"])
        self.endpoints.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.endpoints.verticalHeader().setVisible(False)
        self.endpoints.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.endpoints.setMaximumHeight(130)
        self.add_endpoint_button = QPushButton("Add")
        self.add_endpoint_button.clicked.connect(lambda: self.add_endpoint({"name": "", "url": "http://", "api_key": ""}))
        self.remove_endpoint_button = QPushButton("Remove")
        self.remove_endpoint_button.clicked.connect(self._remove_endpoint)
        endpoint_buttons = QVBoxLayout()
        endpoint_buttons.addWidget(self.add_endpoint_button)
        endpoint_buttons.addWidget(self.remove_endpoint_button)
        endpoint_buttons.addStretch(1)
        remote_box = QGroupBox("Remote engines")
        remote_layout = QVBoxLayout(remote_box)
        remote_layout.addWidget(self._muted("Another machine running vLLM, a llama.cpp server or Hearth: what you type there is sent to it."))
        endpoint_row = QHBoxLayout()
        endpoint_row.addWidget(self.endpoints, 1)
        endpoint_row.addLayout(endpoint_buttons)
        remote_layout.addLayout(endpoint_row)

        # Privacy and data
        data_box = QGroupBox("Your data")
        data_layout = QVBoxLayout(data_box)
        self.privacy_label = QLabel(PRIVACY)
        self.privacy_label.setWordWrap(True)
        data_layout.addWidget(self.privacy_label)
        self.locations = QGridLayout()
        data_layout.addLayout(self.locations)
        self._fill_locations()
        self.restore_button = QPushButton("Restore a backup…")
        self.restore_button.setToolTip("Go back to one of the daily copies of your conversations")
        self.restore_button.clicked.connect(self.choose_backup)
        self.backup_dialog: BackupDialog | None = None
        restore_row = QHBoxLayout()
        restore_row.addWidget(self._muted("Your conversations are copied once a day; the last seven copies are kept."), 1)
        restore_row.addWidget(self.restore_button)
        data_layout.addLayout(restore_row)

        # Save
        self.save_button = QPushButton("Save")
        self.save_button.setProperty("primary", True)
        self.save_button.clicked.connect(self.save)
        self.revert_button = QPushButton("Revert")
        self.revert_button.clicked.connect(self.reload)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bar = QHBoxLayout()
        bar.addWidget(self.status, 1)
        bar.addWidget(self.revert_button)
        bar.addWidget(self.save_button)

        body = QWidget()
        column = QVBoxLayout(body)
        column.setContentsMargins(24, 16, 24, 16)
        for box in (data_box, models_box, run_box, look_box, server_box, remote_box):
            column.addWidget(box)
        column.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll, 1)
        footer = QHBoxLayout()
        footer.setContentsMargins(24, 6, 24, 10)
        footer.addLayout(bar)
        layout.addLayout(footer)
        self.reload()

    @staticmethod
    def _muted(text: str) -> QLabel:
        label = QLabel(text)
        label.setProperty("role", "muted")
        label.setWordWrap(True)
        return label

    def _fill_locations(self) -> None:
        where = paths()
        rows = (("Settings", where.settings_file), ("Conversations", where.chats_db), ("Models you download", where.models),
                ("Logs", where.logs), ("Cache", where.cache))
        for row, (title, location) in enumerate(rows):
            value = QLabel(str(location))
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            button = QPushButton("Open")
            folder = location if location.suffix == "" else location.parent
            button.clicked.connect(lambda checked=False, f=folder: self._open(f))
            self.locations.addWidget(QLabel(f"{title}:"), row, 0)
            self.locations.addWidget(value, row, 1)
            self.locations.addWidget(button, row, 2)
        self.locations.setColumnStretch(1, 1)

    # ---- values -------------------------------------------------------------------------------

    def reload(self) -> None:
        """Fill the form from the file as it is now."""
        self._baseline = settings_module.load(self._path)
        self.show_values(self._baseline)
        self.status.setText("")

    def show_values(self, s: Settings) -> None:
        self.folders.clear()
        self.folders.addItems(s.model_dirs)
        self.context_length.setValue(s.context_length or 0)
        self.threads.setValue(s.n_threads or 0)
        index = self.theme.findData(s.theme)
        self.theme.setCurrentIndex(index if index >= 0 else 0)
        self.server_host.setText(s.server_host)
        self.server_port.setValue(s.server_port)
        self.server_api_key.setText(s.server_api_key or "")
        self.server_cors.setText(", ".join(s.server_cors_origins))
        self.server_queue.setValue(s.server_queue_limit)
        self.server_max_tokens.setValue(s.server_max_tokens)
        self.endpoints.setRowCount(0)
        for endpoint in s.remote_endpoints:
            self.add_endpoint(endpoint)

    def values(self) -> Settings:
        """The baseline with the form's values in the fields this page edits."""
        endpoints = []
        for row in range(self.endpoints.rowCount()):
            entry = {key: (self.endpoints.item(row, col).text().strip() if self.endpoints.item(row, col) else "")
                     for col, key in enumerate(ENDPOINT_KEYS)}
            if any(entry.values()) and entry != {"name": "", "url": "http://", "api_key": ""}:
                endpoints.append({k: v for k, v in entry.items() if v or k != "api_key"})
        cors = [o.strip() for o in self.server_cors.text().split(",") if o.strip()]
        return replace(
            self._baseline,
            model_dirs=[self.folders.item(i).text() for i in range(self.folders.count())],
            context_length=self.context_length.value() or None,
            n_threads=self.threads.value() or None,
            theme=str(self.theme.currentData()),
            server_host=self.server_host.text().strip(),
            server_port=self.server_port.value(),
            server_api_key=self.server_api_key.text().strip() or None,
            server_cors_origins=cors,
            server_queue_limit=self.server_queue.value(),
            server_max_tokens=self.server_max_tokens.value(),
            remote_endpoints=endpoints,
        )

    def dirty(self) -> bool:
        edited = self.values()
        return any(getattr(edited, f.name) != getattr(self._baseline, f.name) for f in fields(Settings))

    def save(self) -> list[str]:
        """Validate and save; returns the problems (and shows them) when it did not save."""
        edited = self.values()
        problems = settings_module.validate(edited)
        if problems:
            self.status.setText("Not saved: " + " ".join(problems))
            return problems
        try:
            merged = merge(self._baseline, edited, settings_module.load(self._path))
            settings_module.save(merged, self._path)
        except OSError as exc:
            log.error("settings not saved", exc_info=exc)
            self.status.setText(f"Not saved: {exc}")
            return [str(exc)]
        theme_changed = merged.theme != self._baseline.theme
        self._baseline = merged
        self.show_values(merged)
        self.status.setText("Saved. New settings apply to the next model you load.")
        self.sig_saved.emit(merged)
        if theme_changed:
            self.sig_theme_changed.emit(merged.theme)
        return []

    def choose_backup(self) -> BackupDialog:
        """Open the list of chat backups (window-modal, non-blocking); accepting one emits
        `sig_restore_backup`, which the main window carries out."""
        dialog = BackupDialog(backups.folder_for(paths().chats_db), self)
        dialog.accepted.connect(lambda: self._restore_chosen(dialog))
        dialog.open()
        self.backup_dialog = dialog
        return dialog

    def _restore_chosen(self, dialog: BackupDialog) -> None:
        chosen = dialog.chosen()
        if chosen is not None:
            self.sig_restore_backup.emit(chosen)

    # ---- editing ------------------------------------------------------------------------------

    def add_folder(self, folder: str) -> None:
        if folder and not self.folders.findItems(folder, Qt.MatchFlag.MatchExactly):
            self.folders.addItem(folder)

    def remove_selected_folder(self) -> None:
        for item in self.folders.selectedItems():
            self.folders.takeItem(self.folders.row(item))

    def add_endpoint(self, endpoint: dict[str, Any]) -> None:
        row = self.endpoints.rowCount()
        self.endpoints.insertRow(row)
        for col, key in enumerate(ENDPOINT_KEYS):
            self.endpoints.setItem(row, col, QTableWidgetItem(str(endpoint.get(key) or "")))

    def _remove_endpoint(self) -> None:
        for row in sorted({i.row() for i in self.endpoints.selectedIndexes()}, reverse=True):
            self.endpoints.removeRow(row)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of models")
        if folder:
            self.add_folder(folder)

    @staticmethod
    def _open(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def showEvent(self, event: QShowEvent) -> None:
        """Show what the file says now (another page may have added a folder), unless the
        person has edits not yet saved."""
        super().showEvent(event)
        if not self.dirty():
            self.reload()
