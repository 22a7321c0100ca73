"""The last two pages of the fine-tune wizard: training (live chart, samples, cancel) and export.

Training runs in a child process of the worker; this page only draws its events. Cancel (or
closing the wizard) kills the child; its finished checkpoints stay and "Resume" continues from
the newest one.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QListWidget, QProgressBar, QPushButton, QVBoxLayout

from app.runtime.protocol import Method, RuntimeFailure
from app.ui.errors import worded
from app.ui.models.hub_models import fmt_bytes, fmt_eta
from app.ui.widgets.charts import LineChart
from app.ui.wizards.finetune.pages import Page

QTYPES = ("Q4_K_M", "Q5_K_M", "Q8_0", "F16")


class TrainPage(Page):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Training")
        self.setSubTitle("Watch the loss fall. Samples show what the model answers now.")
        self.chart = LineChart("Loss", self, x_label="step", y_label="loss")
        self.progress = QProgressBar(self)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.figures = QLabel("", self)
        self.samples = QListWidget(self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button = QPushButton("Resume", self)
        self.resume_button.clicked.connect(self.resume)
        self.resume_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.resume_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.chart, 3)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.figures)
        layout.addWidget(QLabel("Samples:", self))
        layout.addWidget(self.samples, 1)
        layout.addLayout(buttons)
        self.result: dict[str, Any] | None = None
        self.run_dir: str | None = None

    def initializePage(self) -> None:
        if self.result is None and self.request is None:
            self.start({"base": self.wiz().base, "data": self.wiz().data_path, "settings": self.wiz().settings, "output": self.wiz().output})

    def start(self, params: dict[str, Any]) -> None:
        self.chart.clear()
        self.result = None
        self.resume_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("Starting the training process…")
        (self.run(Method.FINETUNE_TRAIN, params)
         .on_progress(self._on_progress).on_success(self._on_finished).on_stopped(self._on_stopped).on_failure(self._on_failed))
        self.completeChanged.emit()

    def resume(self) -> None:
        if self.run_dir:
            self.start({"resume": self.run_dir})

    def cancel(self) -> None:
        if self.request is not None and self.result is None:
            self.request.cancel()

    def _on_progress(self, data: dict[str, Any]) -> None:
        stage = data.get("stage")
        if data.get("message"):
            self.status.setText(str(data["message"]))
        if isinstance(data.get("fraction"), (int, float)):
            self.progress.setValue(int(100 * data["fraction"]))
        if stage == "start":
            self.progress.setValue(0)
        elif stage == "step":
            self.chart.append("training loss", data["step"], data["loss"])
            tps = data.get("tokens_per_s")
            self.figures.setText(f"learning rate {data['learning_rate']:.2e} · {f'{tps:.0f} tokens/s · ' if tps else ''}{fmt_eta(data.get('eta_s'))} left")
        elif stage == "eval":
            self.chart.append("validation loss", data["step"], data["eval_loss"])
        elif stage == "sample":
            self.samples.insertItem(0, f"step {data['step']}: {data['prompt']} → {data['text']}")
        elif stage == "checkpoint":
            self.run_dir = str(data["path"]).rsplit("/checkpoints/", 1)[0]

    def _on_stopped(self, result: dict[str, Any]) -> None:
        """Cancelled or paused: the finished checkpoints stay, and Resume continues from the newest."""
        self.run_dir = result.get("run_dir") or self.run_dir
        self.cancel_button.setEnabled(False)
        stopped = "Paused." if result.get("status") == "paused" else "Cancelled."
        self.status.setText(stopped + (" Resume continues from the last checkpoint." if result.get("checkpoint") else ""))
        self.resume_button.setEnabled(bool(result.get("checkpoint")))

    def _on_finished(self, result: dict[str, Any]) -> None:
        self.run_dir = result.get("run_dir") or self.run_dir
        self.cancel_button.setEnabled(False)
        self.result = result
        self.wiz().train_result = result
        self.progress.setValue(100)
        estimate = (result.get("memory_estimate") or {}).get("total")  # for the settings as run, overrides included
        first, last = result.get("eval_loss_first"), result.get("eval_loss")
        loss = f" Validation loss {first:.3f} → {last:.3f}." if first is not None and last is not None else ""
        self.status.setText(f"Done: {result['steps']} steps in {result['seconds']:.0f} s.{loss}")
        self.figures.setText(f"Peak memory {fmt_bytes(result['peak_memory']['bytes'])} measured · {fmt_bytes(estimate)} estimated")
        self.completeChanged.emit()

    def _on_failed(self, failure: RuntimeFailure) -> None:
        self.cancel_button.setEnabled(False)
        self.status.setText(html.escape(worded(failure)))
        self.resume_button.setEnabled(self.run_dir is not None)

    def isComplete(self) -> bool:
        return self.result is not None


class ExportPage(Page):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Export")
        self.setSubTitle("Keep the adapter, merge it into the model, or make a GGUF for your library and chat with it.")
        self.merged = QCheckBox("Merged model (a full Hugging Face folder)", self)
        self.gguf = QCheckBox("GGUF in the library, quantized to", self)
        self.gguf.setChecked(True)
        self.qtype = QComboBox(self)
        self.qtype.addItems(QTYPES)
        self.qtype.setCurrentText("Q8_0")
        row = QHBoxLayout()
        row.addWidget(self.gguf)
        row.addWidget(self.qtype)
        row.addStretch(1)
        self.export_button = QPushButton("Export", self)
        self.export_button.clicked.connect(self.export)
        self.progress = QProgressBar(self)
        self.status = QLabel("The adapter is always kept in the run folder.", self)
        self.status.setWordWrap(True)
        self.chat_button = QPushButton("Chat with it", self)
        self.chat_button.setEnabled(False)
        self.chat_button.clicked.connect(self._chat)
        layout = QVBoxLayout(self)
        layout.addWidget(self.merged)
        layout.addLayout(row)
        layout.addWidget(self.export_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.chat_button)
        layout.addStretch(1)
        self.model_id: str | None = None

    def export(self) -> None:
        result = self.wiz().train_result or {}
        formats = ["adapter", *(["merged"] if self.merged.isChecked() else []), *(["gguf"] if self.gguf.isChecked() else [])]
        self.export_button.setEnabled(False)
        self.status.setText("Exporting…")
        (self.run(Method.FINETUNE_EXPORT, {"run_dir": result.get("run_dir"), "formats": formats, "qtype": self.qtype.currentText()})
         .on_progress(self._on_progress).on_success(self._on_finished).on_stopped(self._on_stopped)
         .on_failure(self._on_failed))

    def _on_progress(self, data: dict[str, Any]) -> None:
        if isinstance(data.get("fraction"), (int, float)):
            self.progress.setValue(int(100 * data["fraction"]))
        if data.get("message"):
            self.status.setText(str(data["message"]))

    def _on_stopped(self, result: dict[str, Any]) -> None:
        """Cancelled: the half-made outputs were removed."""
        self.status.setText(str(result.get("message") or "Export cancelled."))
        self.export_button.setEnabled(True)

    def _on_finished(self, result: dict[str, Any]) -> None:
        self.wiz().export_result = result
        self.model_id = result.get("model_id")
        lines = [f"{k}: {v}" for k, v in result.items() if k in ("adapter", "merged", "gguf")]
        self.status.setText("\n".join(lines))
        self.progress.setValue(100)
        self.export_button.setEnabled(True)
        self.chat_button.setEnabled(self.model_id is not None)

    def _on_failed(self, failure: RuntimeFailure) -> None:
        self.status.setText(f"Export failed: {worded(failure)}")
        self.export_button.setEnabled(True)

    def _chat(self) -> None:
        if self.model_id:
            self.wiz().sig_load_requested.emit(self.model_id)
