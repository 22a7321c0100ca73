"""The first three pages of the fine-tune wizard: base model, data (report and preview), settings.

Each page talks to the worker through its own requests (`BridgePage.run`); the wizard
(``wizard.py``) holds what the pages share.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.runtime.protocol import Method
from app.ui.errors import worded
from app.ui.wizards.common import BridgePage
from app.ui.models.hub_models import fmt_bytes

if TYPE_CHECKING:
    from app.ui.wizards.finetune.wizard import FinetuneWizard


class Page(BridgePage):
    def wiz(self) -> FinetuneWizard:
        return self.wizard()  # type: ignore[return-value]



class BaseModelPage(Page):
    """A model from the library, or a Hugging Face folder typed or browsed to."""

    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Base model")
        self.setSubTitle("Which model should learn from your data? A GGUF from the library is converted for training once.")
        self.combo = QComboBox(self)
        self.path = QLineEdit(self)
        self.path.setPlaceholderText("…or a Hugging Face model folder")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        self.status = QLabel("Loading the library…", self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.combo)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.path.textChanged.connect(lambda _: self.completeChanged.emit())
        self.combo.currentIndexChanged.connect(lambda _: self.completeChanged.emit())

    def initializePage(self) -> None:
        if self.combo.count() == 0:
            self.run(Method.MODELS_LIST, {}).on_success(self._on_listed).on_failure(
                lambda failure: self.status.setText(f"The library could not be read: {worded(failure)}"))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A Hugging Face model folder")
        if folder:
            self.path.setText(folder)

    def _on_listed(self, result: dict[str, Any]) -> None:
        for model in result.get("models", []):
            self.combo.addItem(f"{model['name']} ({model.get('quantization', '')})", model["id"])
        self.status.setText(f"{self.combo.count()} model(s) in the library.")

    def chosen(self) -> str | None:
        return self.path.text().strip() or self.combo.currentData()

    def isComplete(self) -> bool:
        return bool(self.chosen())

    def validatePage(self) -> bool:
        self.wiz().base = self.chosen()
        return self.wiz().base is not None


class DataPage(Page):
    """The data file, its validation report (every bad row by line) and a preview in the chat template."""

    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Your data")
        self.setSubTitle("JSONL, JSON or CSV: chat messages, instruction/output, prompt/completion or plain text.")
        self.path = QLineEdit(self)
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse)
        self.check_button = QPushButton("Check", self)
        self.check_button.clicked.connect(self.check)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        row.addWidget(self.check_button)
        self.skip = QRadioButton("Skip bad rows", self)
        self.stop = QRadioButton("Stop on bad rows", self)
        self.skip.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.skip)
        group.addButton(self.stop)
        self.skip.toggled.connect(lambda _: self.completeChanged.emit())
        choice = QHBoxLayout()
        choice.addWidget(self.skip)
        choice.addWidget(self.stop)
        choice.addStretch(1)
        self.summary = QLabel("", self)
        self.summary.setWordWrap(True)
        self.issues = QListWidget(self)
        self.preview = QTextBrowser(self)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addLayout(choice)
        layout.addWidget(self.summary)
        layout.addWidget(self.issues, 1)
        layout.addWidget(QLabel("Preview (the highlighted part is what the model learns to say):", self))
        layout.addWidget(self.preview, 2)
        self.result: dict[str, Any] | None = None
        self.path.textChanged.connect(self._forget)

    def _browse(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Training data", "", "Data (*.jsonl *.json *.csv)")
        if name:
            self.path.setText(name)
            self.check()

    def _forget(self) -> None:
        self.result = None
        self.completeChanged.emit()

    def check(self) -> None:
        if not self.path.text().strip():
            return
        self.result = None
        self.summary.setText("Reading the data…")
        self.issues.clear()
        self.preview.clear()
        (self.run(Method.FINETUNE_PREPARE, {"base": self.wiz().base, "data": self.path.text().strip()})
         .on_progress(self._on_progress).on_success(self._on_prepared)
         .on_failure(lambda failure: self.summary.setText(f"The data could not be read: {worded(failure)}")))
        self.completeChanged.emit()

    def _on_progress(self, data: dict[str, Any]) -> None:
        if data.get("message"):
            self.summary.setText(str(data["message"]))

    def _on_prepared(self, result: dict[str, Any]) -> None:
        self.result = result
        report = result["report"]
        self.summary.setText(report["summary"])
        for issue in report["issues"]:
            self.issues.addItem(f"line {issue['line']}: {issue['reason']}")
        parts = []
        for example in result.get("preview", []):
            body = "".join(
                f"<span style='background:#ffe2c6'>{html.escape(s['text'])}</span>" if s["trained"] else html.escape(s["text"])
                for s in example["segments"]
            )
            parts.append(f"<p><b>line {example['line']}</b></p><pre>{body}</pre>")
        self.preview.setHtml("".join(parts))
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        r = self.result
        return bool(r and r.get("plan") and not (self.stop.isChecked() and r["report"]["issue_count"]))

    def validatePage(self) -> bool:
        wiz = self.wiz()
        wiz.data_path = self.path.text().strip()
        wiz.prepared = self.result
        wiz.on_error = "stop" if self.stop.isChecked() else "skip"
        return self.isComplete()


INT_SETTINGS = {"rank": (1, 512), "alpha": (1, 1024), "epochs": (1, 100), "batch_size": (1, 256), "grad_accum": (1, 256),
                "seq_length": (16, 32768), "threads": (1, 256)}
LABELS = {"rank": "LoRA rank", "alpha": "LoRA alpha", "learning_rate": "Learning rate", "epochs": "Epochs", "batch_size": "Batch size",
          "grad_accum": "Gradient accumulation", "seq_length": "Sequence length", "grad_checkpointing": "Gradient checkpointing",
          "packing": "Packing", "threads": "CPU threads", "quantize_4bit": "4-bit base (QLoRA)"}


class SettingsPage(Page):
    """The planner's settings, each with its reason (tooltip and text), every one editable."""

    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Settings")
        self.setSubTitle("Chosen for this computer; change any of them. Hover a setting to read why.")
        self.form = QFormLayout()
        self.editors: dict[str, QWidget] = {}
        self.plan: dict[str, Any] = {}
        for name, label in LABELS.items():
            if name in INT_SETTINGS:
                editor: QWidget = QSpinBox(self)
                editor.setRange(*INT_SETTINGS[name])  # type: ignore[attr-defined]
            elif name == "learning_rate":
                editor = QDoubleSpinBox(self)
                editor.setDecimals(6)  # type: ignore[attr-defined]
                editor.setRange(1e-6, 0.1)  # type: ignore[attr-defined]
                editor.setSingleStep(1e-4)  # type: ignore[attr-defined]
            else:
                editor = QCheckBox(self)
            self.editors[name] = editor
            self.form.addRow(label, editor)
        self.max_steps = QSpinBox(self)
        self.max_steps.setRange(0, 1_000_000)
        self.max_steps.setSpecialValueText("no limit")
        self.form.addRow("Stop after steps", self.max_steps)
        self.output = QLineEdit(self)
        self.output.setPlaceholderText("default: Hearth's data folder")
        self.form.addRow("Run folder", self.output)
        self.memory = QLabel("", self)
        self.memory.setWordWrap(True)
        self.reasons = QLabel("", self)
        self.reasons.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.memory)
        layout.addWidget(self.reasons)
        layout.addStretch(1)

    def initializePage(self) -> None:
        prepared = self.wiz().prepared or {}
        self.plan = prepared.get("plan") or {}
        for name, editor in self.editors.items():
            choice = self.plan.get(name)
            if not choice:
                continue
            value = choice["value"]
            if isinstance(editor, QCheckBox):
                editor.setChecked(bool(value))
            elif isinstance(editor, QSpinBox):
                editor.setValue(int(value))
            elif isinstance(editor, QDoubleSpinBox):
                editor.setValue(float(value))
            editor.setToolTip(choice["reason"])
        memory = self.plan.get("memory")
        if memory:
            parts = memory["value"]
            self.memory.setText(f"<b>Memory estimate: {fmt_bytes(parts['total'])}</b> — {html.escape(memory['reason'])}")
        self.reasons.setText("<br>".join(f"<b>{LABELS[n]}</b>: {html.escape(self.plan[n]['reason'])}" for n in ("rank", "learning_rate", "epochs", "batch_size") if n in self.plan))

    def settings(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, editor in self.editors.items():
            values[name] = editor.isChecked() if isinstance(editor, QCheckBox) else editor.value()  # type: ignore[attr-defined]
        if self.max_steps.value() > 0:
            values["max_steps"] = self.max_steps.value()
        values["on_error"] = self.wiz().on_error
        return values

    def validatePage(self) -> bool:
        self.wiz().settings = self.settings()
        self.wiz().output = self.output.text().strip() or None
        return True
