"""The Download tab: search the Hub, pick a repository and a variant, watch downloads.

Everything goes through the RuntimeBridge. A download is a pausable worker job: Pause sends
``pause`` (the worker keeps the partial file and answers ``status: "paused"``), Resume sends the
same request again (it resumes from the partial file), Cancel sends ``cancel`` (the worker removes
the partial file and answers ``status: "cancelled"``); Cancel on a paused row asks the worker to
discard the partial file it kept.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QItemSelection, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.runtime.protocol import JobStatus, Method, RuntimeFailure
from app.ui.bridge import RuntimeBridge
from app.ui.errors import worded
from app.ui.models.hub_models import DownloadsModel, RowsModel, SearchResultsModel, VariantsModel
from app.ui.request import Request

SORTS = (("Most downloaded", "downloads"), ("Most liked", "likes"), ("Recently updated", "updated"))


def _table(model: RowsModel, parent: QWidget) -> QTableView:
    view = QTableView(parent)
    view.setModel(model)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    view.horizontalHeader().setStretchLastSection(True)
    view.verticalHeader().hide()
    return view


class HubPanel(QWidget):
    sig_downloaded = Signal(dict)  # a finished download's result: {"repo_id", "files", "paths", "bytes"}

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._bridge = bridge
        self._search: Request | None = None  # the newest search and file listing; older answers are dropped
        self._files: Request | None = None
        self._files_repo = ""
        self.results_model = SearchResultsModel(self)
        self.variants_model = VariantsModel(self)
        self.downloads_model = DownloadsModel(self)

        self.query = QLineEdit(self)
        self.query.setPlaceholderText("Search the Hugging Face Hub for GGUF models")
        self.query.returnPressed.connect(self.search)
        self.sort = QComboBox(self)
        for title, key in SORTS:
            self.sort.addItem(title, key)
        self.search_button = QPushButton("Search", self)
        self.search_button.clicked.connect(self.search)
        top = QHBoxLayout()
        top.addWidget(self.query, 1)
        top.addWidget(self.sort)
        top.addWidget(self.search_button)

        self.results = _table(self.results_model, self)
        self.results.selectionModel().selectionChanged.connect(self._on_result_picked)
        self.variants = _table(self.variants_model, self)
        self.download_button = QPushButton("Download", self)
        self.download_button.clicked.connect(self.download_selected)
        self.downloads = _table(self.downloads_model, self)
        self.pause_button = QPushButton("Pause", self)
        self.pause_button.clicked.connect(lambda: self.pause_or_resume(self.downloads.currentIndex().row()))
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.clicked.connect(lambda: self.cancel_download(self.downloads.currentIndex().row()))
        self.downloads.selectionModel().currentRowChanged.connect(lambda *_: self._sync_buttons())
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        bridge.sig_ready.connect(lambda info: self.list_paused())  # at start, and after a worker restart

        split = QSplitter(Qt.Orientation.Horizontal, self)
        split.addWidget(self.results)
        right = QWidget(split)
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.variants, 1)
        rl.addWidget(self.download_button)
        split.addWidget(right)
        row = QHBoxLayout()
        row.addWidget(QLabel("Downloads", self), 1)
        row.addWidget(self.pause_button)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(split, 2)
        layout.addLayout(row)
        layout.addWidget(self.downloads, 1)
        layout.addWidget(self.status)
        self._sync_buttons()

    # ---- actions ------------------------------------------------------------------------------

    def search(self) -> None:
        self.status.setText("Searching…")
        self._search = (self._bridge.run(Method.HUB_SEARCH, {"query": self.query.text(), "sort": self.sort.currentData()}, replaces=self._search)
                        .on_success(self._on_searched).on_failure(self._show_failure))

    def show_files(self, repo_id: str) -> None:
        self.variants_model.set_rows([])
        self.status.setText(f"Listing the files of {repo_id}…")
        self._files = (self._bridge.run(Method.HUB_FILES, {"repo_id": repo_id}, replaces=self._files)
                       .on_success(self._on_files).on_failure(self._show_failure))
        self._files_repo = repo_id

    def download_selected(self) -> None:
        row = self.variants.currentIndex().row()
        if 0 <= row < self.variants_model.rowCount():
            self.download(self._files_repo, self.variants_model.row(row))

    def download(self, repo_id: str, variant: dict[str, Any]) -> None:
        i = self.downloads_model.find("key", f"{repo_id}:{variant['name']}")
        if i >= 0 and self.downloads_model.row(i)["state"] in ("queued", "downloading"):
            return
        row = {"key": f"{repo_id}:{variant['name']}", "repo_id": repo_id, "name": variant["name"], "files": list(variant["files"]),
               "total": variant["size"], "downloaded": variant.get("partial_bytes", 0), "done_bytes": 0, "speed": None, "eta": None,
               "state": "queued", "message": "", "request": None, "discard": False}
        if i < 0:
            i = self.downloads_model.add(row)
        self._start(i)

    def list_paused(self) -> Request:
        """Show the paused downloads left on disk (a restart forgets the list, not the files)."""
        return self._bridge.run(Method.HUB_PARTIALS, owner=self).on_success(self._on_partials)

    def _on_partials(self, result: dict[str, Any]) -> None:
        for part in result.get("partials", []):
            repo_id, filename = str(part["repo_id"]), str(part["filename"])
            if self.downloads_model.find("key", f"{repo_id}:{filename}") >= 0 or any(
                    r["repo_id"] == repo_id and filename in r["files"] for r in self.downloads_model.rows()):
                continue
            self.downloads_model.add({"key": f"{repo_id}:{filename}", "repo_id": repo_id, "name": filename, "files": [filename],
                                      "filename": filename, "total": 0, "downloaded": int(part.get("partial_bytes", 0)),
                                      "done_bytes": 0, "speed": None, "eta": None, "state": "paused",
                                      "message": "Paused before Hearth last closed; Resume continues it.", "request": None, "discard": False})
        self._sync_buttons()

    def pause_or_resume(self, i: int) -> None:
        if not 0 <= i < self.downloads_model.rowCount():
            return
        row = self.downloads_model.row(i)
        if row["state"] in ("queued", "downloading"):
            self.downloads_model.update(i, state="pausing")
            row["request"].pause()
        elif row["state"] in ("paused", "failed"):
            self._start(i)
        self._sync_buttons()

    def cancel_download(self, i: int) -> None:
        """Stop for good: a running download is cancelled (the worker removes its partial file); a
        paused one has its partial file discarded."""
        if not 0 <= i < self.downloads_model.rowCount():
            return
        row = self.downloads_model.row(i)
        if row["state"] in ("queued", "downloading", "pausing"):
            self.downloads_model.update(i, state="cancelling", discard=True)
            row["request"].cancel()
        elif row["state"] != "done":
            self._discard(i)

    # ---- internals ----------------------------------------------------------------------------

    def _start(self, i: int) -> None:
        row = self.downloads_model.row(i)
        # A row listed from disk after a restart knows its file, not its variant.
        which = {"filename": row["filename"]} if row.get("filename") else {"variant": row["name"]}
        request = self._bridge.run(Method.HUB_DOWNLOAD, {"repo_id": row["repo_id"], **which}, owner=self)
        # The row is found again by its request: rows come and go while a download runs.
        (request.on_progress(lambda data: self._on_progress(request, data))
         .on_success(lambda result: self._on_download_ended(request, result))
         .on_stopped(lambda result: self._on_download_ended(request, result))
         .on_failure(lambda failure: self._on_download_failed(request, failure)))
        self.downloads_model.update(i, request=request, state="queued", done_bytes=0, message="", discard=False)
        self._sync_buttons()

    def _discard(self, i: int) -> None:
        row = self.downloads_model.row(i)
        self._bridge.run(Method.HUB_DISCARD, {"repo_id": row["repo_id"], "files": row["files"]}).on_failure(self._show_failure)
        self.downloads_model.remove(i)
        self.status.setText(f"Download of {row['repo_id']} · {row['name']} cancelled.")
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        i = self.downloads.currentIndex().row()
        state = self.downloads_model.row(i)["state"] if 0 <= i < self.downloads_model.rowCount() else None
        self.pause_button.setText("Resume" if state in ("paused", "failed") else "Pause")
        self.pause_button.setEnabled(state in ("queued", "downloading", "paused", "failed"))
        self.cancel_button.setEnabled(state is not None and state not in ("done", "cancelling"))

    def _on_result_picked(self, selected: QItemSelection, deselected: QItemSelection) -> None:
        rows = self.results.selectionModel().selectedRows()
        if rows:
            self.show_files(str(self.results_model.row(rows[0].row())["id"]))

    def _on_progress(self, request: Request, data: dict[str, Any]) -> None:
        i = self.downloads_model.find("request", request)
        if i < 0:
            return
        row = self.downloads_model.row(i)
        stage = data.get("stage")
        if stage == "download" and data.get("done") is not None:
            self.downloads_model.update(i, state="downloading" if row["state"] == "queued" else row["state"],
                                        downloaded=row["done_bytes"] + int(data["done"]), speed=data.get("speed"),
                                        eta=data.get("eta_s"), message=str(data.get("message", "")))
        elif stage == "verify":
            self.downloads_model.update(i, state="verifying", message=str(data.get("message", "")))
        elif stage == "done":
            self.downloads_model.update(i, done_bytes=row["downloaded"], state="downloading")
        elif data.get("message"):
            self.downloads_model.update(i, message=str(data["message"]))

    def _on_searched(self, result: dict[str, Any]) -> None:
        models = result.get("models", [])
        self.results_model.set_rows(models)
        self.status.setText(f"{len(models)} model{'s' if len(models) != 1 else ''} found.")

    def _on_files(self, result: dict[str, Any]) -> None:
        self.variants_model.set_rows(result.get("variants", []))
        recommended = next((v for v in result.get("variants", []) if v.get("recommended")), None)
        for r, v in enumerate(result.get("variants", [])):
            if v is recommended:
                self.variants.selectRow(r)
        self.status.setText(str(recommended.get("fit_reason", "")) if recommended else "No variant fits this machine.")

    def _show_failure(self, failure: RuntimeFailure) -> None:
        self.status.setText(worded(failure))

    def _on_download_ended(self, request: Request, result: dict[str, Any]) -> None:
        i = self.downloads_model.find("request", request)
        if i < 0:
            return
        status = result.get("status", JobStatus.DONE.value)
        if status == JobStatus.CANCELLED.value:  # the worker removed the partial file
            row = self.downloads_model.row(i)
            self.downloads_model.remove(i)
            self.status.setText(f"Download of {row['repo_id']} · {row['name']} cancelled.")
            self._sync_buttons()
        elif status == JobStatus.PAUSED.value and self.downloads_model.row(i)["discard"]:
            self._discard(i)  # paused just before a Cancel reached it: drop what the pause kept
        elif status == JobStatus.PAUSED.value:
            message = str(result.get("message", ""))
            self.downloads_model.update(i, state="paused", speed=None, eta=None, message=message)
            self.status.setText(message)
            self._sync_buttons()
        else:
            self.downloads_model.update(i, state="done", downloaded=result.get("bytes", 0), total=result.get("bytes", 0), eta=None)
            self.status.setText(f"{result.get('repo_id')} downloaded: {', '.join(result.get('files', []))}.")
            self._sync_buttons()
            self.sig_downloaded.emit(result)

    def _on_download_failed(self, request: Request, failure: RuntimeFailure) -> None:
        i = self.downloads_model.find("request", request)
        if i < 0:
            return
        if self.downloads_model.row(i)["discard"]:
            self._discard(i)
            return
        self.downloads_model.update(i, state="failed", speed=None, eta=None, message=failure.message)
        self.status.setText(worded(failure))
        self._sync_buttons()
