"""The quantize wizard and the sidebar page that opens it.

The wizard holds what its pages share (the chosen model and targets, the report) and the one
signal the window cares about: "Chat with it" asks for a model to be loaded by library id.
Closing the wizard while a run is going cancels the run; the worker removes what it made.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget, QWizard

from app.ui.bridge import RuntimeBridge
from app.ui.wizards.quantize.pages import PickModelPage, ResultsPage, RunPage, TargetsPage


class QuantizeWizard(QWizard):
    sig_load_requested = Signal(str)  # a library model id: load it and open the chat

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None, *, preselect: str | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Quantize a model")
        self.bridge = bridge
        self.preselect = preselect  # a model id or path to select on the first page
        self.eval_tokens: int | None = None  # held-out tokens to score (None: the runtime's default)
        self.model: dict[str, Any] | None = None
        self.targets: list[str] = []
        self.evaluate = True
        self.report: dict[str, Any] | None = None
        self.pick_page = PickModelPage()
        self.targets_page = TargetsPage()
        self.run_page = RunPage()
        self.results_page = ResultsPage()
        for page in (self.pick_page, self.targets_page, self.run_page, self.results_page):
            self.addPage(page)
        self.setOption(QWizard.WizardOption.NoBackButtonOnLastPage, True)
        self.resize(760, 560)

    def reject(self) -> None:
        self.run_page.cancel()  # a run the person walks away from is cancelled, not orphaned
        super().reject()


class QuantizePage(QWidget):
    """The Quantize page of the sidebar: what quantizing does, and the button that starts it."""

    sig_load_requested = Signal(str)  # a library model id, from the wizard's "Chat with it"

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.wizard: QuantizeWizard | None = None
        title = QLabel("<h2>Quantize</h2>", self)
        text = QLabel(
            "Make a model smaller so that it fits this computer and answers faster. Hearth converts and "
            "quantizes it with llama.cpp's own tools, measures how much quality each size keeps "
            "(perplexity and KL divergence against the original, and speed), and adds the results "
            "to your library.",
            self,
        )
        text.setWordWrap(True)
        self.start_button = QPushButton("Quantize a model…", self)
        self.start_button.clicked.connect(lambda: self.open_wizard())
        self.last = QLabel("", self)
        self.last.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(text)
        layout.addWidget(self.start_button)
        layout.addWidget(self.last)
        layout.addStretch(1)

    def open_wizard(self, preselect: str | None = None) -> QuantizeWizard:
        wizard = QuantizeWizard(self.bridge, self, preselect=preselect)
        wizard.sig_load_requested.connect(self.sig_load_requested)
        wizard.sig_load_requested.connect(lambda _: wizard.accept())
        wizard.finished.connect(lambda _: self._summarize(wizard))
        self.wizard = wizard
        wizard.show()
        return wizard

    def _summarize(self, wizard: QuantizeWizard) -> None:
        report = wizard.report
        if report:
            made = ", ".join(str(r["target"]) for r in report.get("results", []))
            self.last.setText(f"Last run: {made} from {report['source']['name']}, in {report.get('output_dir', '')}.")
