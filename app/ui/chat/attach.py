"""The chat's documents bar: which collection a conversation answers from, attaching files and
folders to it (a button, or dropped on the page), and the indexing job's progress, pause and cancel.

Indexing is the runtime's ``docs.add`` job (`bridge.run`): it reports progress per file, a pause or
a cancel keeps every file indexed so far (the next run continues), and its report names each file
it skipped with the reason. Choosing a collection runs it too, without new paths: the index then
catches up with files changed since (only those are read again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from app.runtime.protocol import Method, RuntimeFailure
from app.ui.bridge import RuntimeBridge
from app.ui.errors import worded
from app.ui.request import Request

NONE_LABEL = "No documents"
SKIPPED_SHOWN = 3  # skipped files named in the line; all of them are in its tooltip


def report_line(report: dict[str, Any]) -> str:
    """One line about an indexing run: what was indexed, and what was skipped and why."""
    status = report.get("status", "done")
    name = report.get("collection", "")
    indexed = len(report.get("indexed") or [])
    if status in ("paused", "cancelled"):
        return str(report.get("message") or f"Indexing {status}.")
    line = f"“{name}”: {report.get('files', 0)} file(s), {indexed} indexed now, {report.get('unchanged', 0)} unchanged"
    skipped = report.get("skipped") or []
    if skipped:
        named = "; ".join(f"{Path(s['path']).name} ({s['reason']})" for s in skipped[:SKIPPED_SHOWN])
        more = f" and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
        line += f". Skipped {len(skipped)}: {named}{more}"
    return line + "."


class DocsBar(QWidget):
    sig_collection_chosen = Signal(object)  # the collection name the person picked, or None
    sig_indexed = Signal(dict)  # a finished (or stopped) docs.add report

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._bridge = bridge
        self.collection: str | None = None
        self.job: Request | None = None
        self._listing: Request | None = None
        self.picker = QComboBox(self)
        self.picker.setAccessibleName("Documents collection")
        self.picker.setToolTip("Answer from a document collection: its passages go into the model's context and "
                               "every answer shows its sources")
        self.picker.addItem(NONE_LABEL, None)
        self.picker.activated.connect(self._picked)
        self.files_button = QPushButton("Attach files…", self)
        self.files_button.clicked.connect(self._choose_files)
        self.folder_button = QPushButton("Attach folder…", self)
        self.folder_button.clicked.connect(self._choose_folder)
        self.progress = QProgressBar(self)
        self.progress.setMaximumWidth(160)
        self.pause_button = QPushButton("Pause", self)
        self.pause_button.clicked.connect(self.pause)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel("", self)
        self.status.setObjectName("hint")
        self.status.setWordWrap(True)
        self.default_name = "chat"  # the collection made for files attached to a conversation without one
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (QLabel("Documents:", self), self.picker, self.files_button, self.folder_button, self.progress,
                       self.pause_button, self.cancel_button):
            layout.addWidget(widget)
        layout.addWidget(self.status, 1)
        self._show_job(False)

    # ---- the conversation's collection --------------------------------------------------------

    def set_collection(self, name: str | None) -> None:
        """Show the conversation's collection (from its settings); nothing is run."""
        self.collection = name
        if name is not None and self.picker.findData(name) < 0:
            self.picker.addItem(name, name)
        self.picker.setCurrentIndex(max(0, self.picker.findData(name)) if name else 0)

    def refresh(self) -> None:
        """List the collections there are (docs.list) in the picker."""
        self._listing = self._bridge.run(Method.DOCS_LIST, owner=self, replaces=self._listing).on_success(self._fill)

    def _fill(self, result: dict[str, Any]) -> None:
        names = [str(c["name"]) for c in result.get("collections") or []]
        self.picker.clear()
        self.picker.addItem(NONE_LABEL, None)
        for name in names:
            self.picker.addItem(name, name)
        self.set_collection(self.collection)

    def _picked(self, index: int) -> None:
        name = self.picker.itemData(index)
        self.collection = name
        self.sig_collection_chosen.emit(name)
        if name is not None:
            self.index(name)  # opening a collection brings its index up to date

    # ---- attaching and indexing ---------------------------------------------------------------

    def attach(self, paths: list[str]) -> Request | None:
        """Add files and folders to the conversation's collection (made when it has none) and index them."""
        paths = [p for p in paths if p]
        if not paths:
            return None
        name = self.collection or self.default_name
        if name != self.collection:
            self.set_collection(name)
            self.sig_collection_chosen.emit(name)
        return self.index(name, paths)

    def index(self, name: str, paths: list[str] | None = None) -> Request | None:
        if self.job is not None:
            self.status.setText("Indexing is already running; pause or cancel it first.")
            return None
        self.status.setText(f"Indexing “{name}”…")
        self.progress.setRange(0, 0)
        self._show_job(True)
        self.job = (self._bridge.run(Method.DOCS_ADD, {"name": name, "paths": list(paths or [])}, owner=self)
                    .on_progress(self._on_progress).on_success(self._on_done).on_stopped(self._on_done)
                    .on_failure(self._on_failed))
        return self.job

    def pause(self) -> None:
        if self.job is not None:
            self.job.pause()
            self.status.setText("Pausing…")

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling…")

    def _on_progress(self, data: dict[str, Any]) -> None:
        total, done = data.get("total"), data.get("done")
        if isinstance(total, int) and total > 0 and isinstance(done, int):
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        if data.get("message"):
            self.status.setText(f"Indexing: {data['message']}")

    def _on_done(self, report: dict[str, Any]) -> None:
        self.job = None
        self._show_job(False)
        self.status.setText(report_line(report))
        skipped = report.get("skipped") or []
        self.status.setToolTip("\n".join(f"{s['path']}: {s['reason']}" for s in skipped))
        self.sig_indexed.emit(report)
        self.refresh()

    def _on_failed(self, failure: RuntimeFailure) -> None:
        self.job = None
        self._show_job(False)
        self.status.setText(worded(failure))

    def _show_job(self, running: bool) -> None:
        for widget in (self.progress, self.pause_button, self.cancel_button):
            widget.setVisible(running)

    # ---- buttons ------------------------------------------------------------------------------

    def _choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Attach files to this conversation")
        self.attach(paths)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Attach a folder to this conversation")
        self.attach([folder] if folder else [])
