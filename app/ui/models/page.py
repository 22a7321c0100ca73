"""The Models page: the local library as a table (load, delete, add a folder) and a Download tab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.runtime.protocol import Method, RuntimeFailure
from app.ui.bridge import RuntimeBridge
from app.ui.errors import worded
from app.ui.models.details import ModelDetails
from app.ui.models.hub_models import RowsModel, fmt_bytes
from app.ui.models.hub_panel import HubPanel
from app.ui.request import Request


COLUMNS: tuple[tuple[str, str], ...] = (
    ("Name", "name"),
    ("Kind", "embedding"),  # an embedding model turns text into vectors (/v1/embeddings); it cannot chat
    ("Architecture", "architecture"),
    ("Parameters", "parameters"),
    ("Quantization", "quantization"),
    ("Size", "file_size"),
    ("Context", "context_length"),
    ("On this machine", "fit"),
    ("Source", "source"),
    ("Path", "path"),
)


def _format(key: str, value: Any) -> str:
    if key == "parameters":
        return f"{value / 1e9:.1f} B" if value >= 1e9 else f"{value / 1e6:.0f} M"
    if key == "file_size":
        return fmt_bytes(value)
    if key == "context_length":
        return f"{value:,}"
    if key == "embedding":
        return "Embedding" if value is True else "Chat"
    if key == "fit":
        return str(value.get("summary", "")) if isinstance(value, dict) else ""
    return str(value)


class LibraryTableModel(RowsModel):
    """A table over the plain model records (dicts of ModelInfo) the worker sends."""

    columns = tuple((title, lambda row, key=key: _format(key, row.get(key, ""))) for title, key in COLUMNS)

    def tooltip(self, row: dict[str, Any]) -> str | None:
        fit = row.get("fit") or {}
        return "\n".join(part for part in (row.get("path"), fit.get("placement") or fit.get("summary")) if part)

    def set_models(self, models: list[dict[str, Any]]) -> None:
        self.set_rows(models)

    def model_at(self, row: int) -> dict[str, Any]:
        return self.row(row)


class ModelsPage(QWidget):
    sig_models_changed = Signal(list)  # the library's model records
    sig_load_requested = Signal(str)  # a model id chosen for chat

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._bridge = bridge
        self._listing: Request | None = None  # the newest library read; an older answer is dropped
        self._note = ""  # what the last delete did, shown with the re-read library
        self.table_model = LibraryTableModel(self)
        self.table = QTableView(self)
        self.table.setModel(self.table_model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().hide()
        self.table.doubleClicked.connect(lambda index: self._use(index.row()))
        self.status = QLabel("Reading the library…", self)
        self.status.setWordWrap(True)  # a failure is a sentence or two
        refresh = QPushButton("Refresh", self)
        refresh.clicked.connect(self.refresh)
        self.use_button = QPushButton("Chat with this model", self)
        self.use_button.clicked.connect(lambda: self._use(self.table.currentIndex().row()))
        self.add_folder_button = QPushButton("Add folder…", self)
        self.add_folder_button.clicked.connect(self._pick_folder)
        self.delete_button = QPushButton("Delete", self)
        self.delete_button.clicked.connect(lambda: self.delete(self.table.currentIndex().row()))
        self.import_button = QPushButton("Import file…", self)
        self.import_button.clicked.connect(self._pick_file)
        self.reveal_button = QPushButton("Show in folder", self)
        self.reveal_button.clicked.connect(lambda: self.reveal(self.table.currentIndex().row()))
        self.details = ModelDetails(self)
        self._details: Request | None = None
        self.table.selectionModel().currentRowChanged.connect(lambda current, _previous: self.show_details(current.row()))
        buttons = QHBoxLayout()
        buttons.addWidget(self.status, 1)
        buttons.addWidget(refresh)
        buttons.addWidget(self.add_folder_button)
        buttons.addWidget(self.import_button)
        buttons.addWidget(self.reveal_button)
        buttons.addWidget(self.delete_button)
        buttons.addWidget(self.use_button)
        library_tab = QWidget(self)
        library_layout = QVBoxLayout(library_tab)
        split = QSplitter(Qt.Orientation.Vertical, library_tab)
        split.addWidget(self.table)
        split.addWidget(self.details)
        split.setSizes([400, 250])
        library_layout.addWidget(split, 1)
        library_layout.addLayout(buttons)
        self.hub_panel = HubPanel(bridge, self)
        self.hub_panel.sig_downloaded.connect(lambda result: self.refresh())
        self.tabs = QTabWidget(self)
        self.tabs.addTab(library_tab, "Library")
        self.tabs.addTab(self.hub_panel, "Download")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)

    def refresh(self) -> None:
        self._listing = self._bridge.run(Method.MODELS_LIST, replaces=self._listing).on_success(self._on_listed).on_failure(self._on_list_failed)

    def add_folder(self, path: str) -> None:
        self._change(Method.MODELS_ADD_FOLDER, {"path": path})

    def delete(self, row: int) -> None:
        """Delete a model file after the person confirms; the embedded model cannot be deleted."""
        if not 0 <= row < self.table_model.rowCount():
            return
        model = self.table_model.model_at(row)
        if model.get("source") == "embedded":
            self.status.setText(f"{model['name']} is Hearth's embedded model; it cannot be deleted.")
            return
        size = _format("file_size", model.get("file_size", 0))
        answer = QMessageBox.question(self, "Delete model", f"Delete {model['name']} ({size})?\n\n{model['path']}\n\nThe file is removed from disk.")
        if answer == QMessageBox.StandardButton.Yes:
            self._change(Method.MODELS_DELETE, {"model": model["path"]})

    def import_file(self, path: str) -> None:
        """Copy a GGUF file into the library (checked first by the worker; a bad file is refused)."""
        self.status.setText(f"Importing {Path(path).name}…")
        self._change(Method.MODELS_IMPORT, {"path": path})

    def show_details(self, row: int) -> None:
        if 0 <= row < self.table_model.rowCount():
            self._details = (self._bridge.run(Method.MODELS_DETAILS, {"model": self.table_model.model_at(row)["path"]}, replaces=self._details)
                             .on_success(self.details.show_details)
                             .on_failure(lambda failure: self.details.setPlainText(worded(failure))))

    def reveal(self, row: int) -> None:
        if 0 <= row < self.table_model.rowCount():
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(self.table_model.model_at(row)["path"]).parent)))

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import a GGUF model", "", "GGUF models (*.gguf)")
        if path:
            self.import_file(path)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of GGUF models")
        if folder:
            self.add_folder(folder)

    def _use(self, row: int) -> None:
        if 0 <= row < self.table_model.rowCount():
            model = self.table_model.model_at(row)
            if model.get("embedding"):
                self.status.setText(f"{model['name']} is an embedding model: it turns text into vectors for search "
                                    "(the API's /v1/embeddings, document collections) and cannot chat.")
                return
            self.sig_load_requested.emit(str(model["id"]))

    def _change(self, method: Method, params: dict[str, Any]) -> None:
        """A delete, an import or an added folder: the library is read again after each."""
        self._bridge.run(method, params).on_success(self._on_changed).on_failure(lambda failure: self.status.setText(worded(failure)))

    def _on_changed(self, result: dict[str, Any]) -> None:
        if "freed" in result:
            self._note = f"Deleted {result['deleted']} ({_format('file_size', result['freed'])} freed)."
        elif "id" in result and "path" in result:
            self._note = f"Imported {Path(result['path']).name}."
        self.refresh()

    def _on_listed(self, result: dict[str, Any]) -> None:
        models = result.get("models", [])
        self.table_model.set_models(models)
        self.status.setText(f"{len(models)} model{'s' if len(models) != 1 else ''} in the library. {self._note}".strip())
        self._note = ""
        self.sig_models_changed.emit(models)

    def _on_list_failed(self, failure: RuntimeFailure) -> None:
        self.status.setText(f"Could not read the library: {worded(failure)}")
