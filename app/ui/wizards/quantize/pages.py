"""The four pages of the quantize wizard: pick a model, pick targets, run, compare the results.

Each page talks to the worker through its own requests (`BridgePage.run`); the wizard
(``wizard.py``) holds what the pages share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QTableView,
    QVBoxLayout,
)

from app.runtime.protocol import ErrorKind, Method, RuntimeFailure
from app.ui.errors import worded
from app.ui.wizards.common import BridgePage
from app.ui.models.hub_models import fmt_bytes, fmt_eta
from app.ui.widgets.charts import BarChart
from app.ui.wizards.quantize.tables import LibraryModel, ResultsModel, result_rows

if TYPE_CHECKING:
    from app.ui.wizards.quantize.wizard import QuantizeWizard


class _Page(BridgePage):
    def wiz(self) -> QuantizeWizard:
        return self.wizard()  # type: ignore[return-value]



class PickModelPage(_Page):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Pick a model")
        self.setSubTitle("Which model from your library should get smaller?")
        self.table = QTableView(self)
        self.models = LibraryModel(self)
        self.table.setModel(self.models)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.status = QLabel("Loading the library…", self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.status)
        self.table.selectionModel().selectionChanged.connect(lambda *_: self.completeChanged.emit())

    def initializePage(self) -> None:
        self.run(Method.MODELS_LIST, {}).on_success(self._on_listed).on_failure(
            lambda failure: self.status.setText(f"The library could not be read: {worded(failure)}"))

    def _on_listed(self, result: dict[str, Any]) -> None:
        self.models.set_rows(result.get("models", []))
        self.status.setText(f"{self.models.rowCount()} model(s) in the library.")
        preferred = self.wiz().preselect
        for i, row in enumerate(self.models.rows()):
            if preferred and preferred in (row.get("id"), row.get("path")):
                self.table.selectRow(i)

    def select_model(self, model_id: str) -> bool:
        for i, row in enumerate(self.models.rows()):
            if model_id in (row.get("id"), row.get("path")):
                self.table.selectRow(i)
                return True
        return False

    def chosen(self) -> dict[str, Any] | None:
        rows = self.table.selectionModel().selectedRows()
        return self.models.row(rows[0].row()) if rows else None

    def isComplete(self) -> bool:
        return self.chosen() is not None

    def validatePage(self) -> bool:
        self.wiz().model = self.chosen()
        return self.wiz().model is not None


class TargetsPage(_Page):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Pick the size")
        self.setSubTitle("Let Hearth pick what suits this computer, or choose several to compare.")
        self.recommended = QRadioButton("Recommended for this computer", self)
        self.recommended.setChecked(True)
        self.several = QRadioButton("Choose several to compare", self)
        group = QButtonGroup(self)
        group.addButton(self.recommended)
        group.addButton(self.several)
        self.reason = QLabel("Asking the planner…", self)
        self.reason.setWordWrap(True)
        self.list = QListWidget(self)
        self.list.setEnabled(False)
        self.imatrix = QCheckBox("Use an importance matrix for the types of 4 bits or less: measured once per model on "
                                 "sample text, it keeps them closer to the original (and the 1- and 2-bit types need it)", self)
        self.imatrix.setChecked(True)
        self.evaluate = QCheckBox("Measure quality and speed against the original (perplexity, KL divergence, tokens/s)", self)
        self.evaluate.setChecked(True)
        self.warnings = QLabel("", self)
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet("color: #b05a00")
        layout = QVBoxLayout(self)
        for w in (self.recommended, self.reason, self.several, self.list, self.imatrix, self.evaluate, self.warnings):
            layout.addWidget(w)
        self._listing: dict[str, Any] | None = None
        self.several.toggled.connect(self.list.setEnabled)
        self.several.toggled.connect(lambda *_: self.completeChanged.emit())
        self.list.itemChanged.connect(lambda *_: self.completeChanged.emit())
        self.imatrix.toggled.connect(lambda *_: self._ask())  # which types are offered, and the pick, depend on it

    def initializePage(self) -> None:
        self._ask()

    def imatrix_mode(self) -> str:
        return "auto" if self.imatrix.isChecked() else "none"

    def _ask(self) -> None:
        wiz = self.wiz()
        checked = set(self.chosen()) if self.several.isChecked() else set()
        self._listing = None
        self.list.clear()
        self.reason.setText("Asking the planner…")
        assert wiz.model is not None
        (self.run(Method.QUANTIZE_TARGETS, {"model": wiz.model["path"], "imatrix": self.imatrix_mode()})
         .on_success(lambda result: self._on_targets(result, checked)).on_failure(self._on_failed))

    def _on_targets(self, result: dict[str, Any], checked: set[str] | None = None) -> None:
        self._listing = result
        rec = result.get("recommended")
        if rec:
            self.recommended.setEnabled(True)
            how = ", with an importance matrix" if rec.get("imatrix") else ""
            self.recommended.setText(f"Recommended for this computer: {rec['name']} (about {fmt_bytes(rec['expected_size'])}{how})")
            self.reason.setText(str(result.get("recommended_reason", "")))
        else:
            self.recommended.setEnabled(False)
            self.several.setChecked(True)
            self.reason.setText(str(result.get("recommended_reason") or "The planner has no recommendation for this model."))
        rows = sorted(result.get("targets", []), key=lambda t: (not t.get("common"), t["kind"] != "gguf"))
        for t in rows:
            text = f"{t['name']} — about {fmt_bytes(t['expected_size'])} — {t['description']}" + (" · importance matrix" if t.get("imatrix") else "")
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, t["name"])
            flags = item.flags() | Qt.ItemFlag.ItemIsUserCheckable
            if not t.get("available", not t.get("needs_imatrix")):
                flags &= ~Qt.ItemFlag.ItemIsEnabled
                item.setToolTip("llama.cpp makes this type only with an importance matrix: tick the box below.")
            item.setFlags(flags)
            item.setCheckState(Qt.CheckState.Checked if checked and t["name"] in checked and flags & Qt.ItemFlag.ItemIsEnabled else Qt.CheckState.Unchecked)
            self.list.addItem(item)
        self.warnings.setText("\n".join(result.get("warnings", [])))
        self.completeChanged.emit()

    def _on_failed(self, failure: RuntimeFailure) -> None:
        self.reason.setText(worded(failure))
        self.recommended.setEnabled(False)

    def check(self, names: list[str]) -> None:
        """Tick these targets (and switch to choosing several)."""
        self.several.setChecked(True)
        for i in range(self.list.count()):
            item = self.list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.data(Qt.ItemDataRole.UserRole) in names else Qt.CheckState.Unchecked)

    def chosen(self) -> list[str]:
        if self._listing is None:
            return []
        if self.recommended.isChecked():
            rec = self._listing.get("recommended")
            return [rec["name"]] if rec else []
        return [
            self.list.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.list.count())
            if self.list.item(i).checkState() == Qt.CheckState.Checked
        ]

    def isComplete(self) -> bool:
        return bool(self.chosen())

    def validatePage(self) -> bool:
        self.wiz().targets = self.chosen()
        self.wiz().evaluate = self.evaluate.isChecked()
        self.wiz().imatrix = self.imatrix_mode()
        return True


class RunPage(_Page):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Quantizing")
        self.setSubTitle("You can keep chatting meanwhile; Cancel removes everything this run made.")
        self.step = QLabel("Starting…", self)
        self.overall = QProgressBar(self)
        self.current = QProgressBar(self)
        self.detail = QLabel("", self)
        self.detail.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.clicked.connect(self.cancel)
        layout = QVBoxLayout(self)
        for w in (self.step, self.overall, self.current, self.detail):
            layout.addWidget(w)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addStretch(1)
        self.done = False
        self.error = ""

    def initializePage(self) -> None:
        wiz = self.wiz()
        self.done, self.error = False, ""
        self.overall.setValue(0)
        self.current.setValue(0)
        self.cancel_button.setEnabled(True)
        assert wiz.model is not None
        params: dict[str, Any] = {"model": wiz.model["path"], "targets": list(wiz.targets), "evaluate": wiz.evaluate, "imatrix": wiz.imatrix}
        if wiz.calibration_chunks:
            params["calibration_chunks"] = wiz.calibration_chunks
        if wiz.eval_tokens:
            params["eval_tokens"] = wiz.eval_tokens
        (self.run(Method.QUANTIZE_RUN, params)
         .on_progress(self._on_progress).on_success(self._on_finished).on_stopped(self._on_stopped).on_failure(self._on_failed))

    def running(self) -> bool:
        return self.request is not None and self.request.running

    def cancel(self) -> None:
        if self.request is not None and self.running():
            self.request.cancel()
            self.cancel_button.setEnabled(False)
            self.detail.setText("Cancelling…")

    def _on_progress(self, data: dict[str, Any]) -> None:
        step, steps = data.get("step"), data.get("steps")
        if step and steps:
            self.step.setText(f"Step {step} of {steps}: {data.get('step_title', '')}")
            fraction = data.get("fraction") or 0.0
            self.overall.setValue(int(100 * (step - 1 + (0 if data.get("stage") == "step" else fraction)) / steps))
        if data.get("stage") != "step" and data.get("fraction") is not None:
            self.current.setValue(int(100 * data["fraction"]))
            eta = data.get("eta_s")
            self.detail.setText(str(data.get("message", "")) + (f" — about {fmt_eta(eta)} left" if eta is not None else ""))

    def _on_finished(self, result: dict[str, Any]) -> None:
        self.done = True
        self.wiz().report = result
        self.overall.setValue(100)
        self.current.setValue(100)
        self.step.setText(f"Done in {result.get('seconds', 0):.0f} s.")
        self.detail.setText("")
        self.cancel_button.setEnabled(False)
        self.completeChanged.emit()

    def _on_stopped(self, result: dict[str, Any]) -> None:
        """A cancelled run: the worker removed what it made; nothing was added."""
        self._ended("Cancelled.", str(result.get("message") or "Cancelled; nothing was added to the library."))

    def _on_failed(self, failure: RuntimeFailure) -> None:
        # kind cancelled: cancelled while it waited for its turn
        self._ended("Cancelled." if failure.kind is ErrorKind.CANCELLED else "The quantization failed.", worded(failure))

    def _ended(self, step: str, message: str) -> None:
        self.error = message
        self.step.setText(step)
        self.detail.setText(message)
        self.cancel_button.setEnabled(False)
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return self.done


METRICS = (("Size (MB)", "file_size", 1 / 2**20), ("Perplexity", "perplexity", 1.0), ("KL divergence", "kl_mean", 1.0), ("Tokens/s", "decode_tps", 1.0))


class ResultsPage(_Page):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Results")
        self.setSubTitle("Each result against the original; the highlighted one is Hearth's pick for this computer.")
        self.table = QTableView(self)
        self.results = ResultsModel(self)
        self.table.setModel(self.results)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.metric = QComboBox(self)
        for title, _, _ in METRICS:
            self.metric.addItem(title)
        self.metric.currentIndexChanged.connect(self._draw)
        self.chart = BarChart(parent=self)
        self.chart.setMinimumHeight(180)
        self.reason = QLabel("", self)
        self.reason.setWordWrap(True)
        self.chat_button = QPushButton("Chat with it", self)
        self.chat_button.clicked.connect(self._chat)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.metric)
        layout.addWidget(self.chart)
        layout.addWidget(self.reason)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.chat_button)
        layout.addLayout(row)

    def initializePage(self) -> None:
        report = self.wiz().report or {}
        self.results.set_rows(result_rows(report))
        self.table.resizeColumnsToContents()
        best = self.results.recommended_row()
        self.table.selectRow(best if best is not None else self.results.rowCount() - 1)
        why = report.get("recommended_reason", "")
        imatrix = report.get("imatrix")
        if imatrix:
            made = {"measured": "measured for this run", "cached": "measured earlier, reused", "given": "your file"}.get(str(imatrix.get("made")), "")
            why += f"\nImportance matrix ({made}): {imatrix.get('path')}. The “Made with” column says which results used it."
        self.reason.setText(("\n".join(report.get("warnings", [])) + "\n" if report.get("warnings") else "") + why)
        self._draw()

    def _draw(self) -> None:
        title, key, scale = METRICS[max(self.metric.currentIndex(), 0)]
        rows = [r for r in self.results.rows() if isinstance(r.get(key), (int, float))]
        highlight = next((i for i, r in enumerate(rows) if r.get("recommended")), None)
        self.chart.set_data([str(r["target"]) for r in rows], [r[key] * scale for r in rows], highlight=highlight, unit=title)

    def selected(self) -> dict[str, Any] | None:
        rows = self.table.selectionModel().selectedRows()
        return self.results.row(rows[0].row()) if rows else None

    def _chat(self) -> None:
        row = self.selected()
        if row is None or not row.get("model_id"):
            self.reason.setText("Pick a GGUF result to chat with (torch results run in the torch backend).")
            return
        self.wiz().sig_load_requested.emit(str(row["model_id"]))
