"""The quantize wizard and the sidebar page that opens it.

The wizard holds what its pages share (the chosen model and targets, the report) and the one
signal the window cares about: "Chat with it" asks for a model to be loaded by library id.
Closing the wizard while a run is going cancels the run; the worker removes what it made.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QWidget, QWizard

from app.ui.bridge import RuntimeBridge
from app.ui.wizards.common import WizardLauncher
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
        self.imatrix = "auto"  # "auto" (Hearth's importance matrix for the types of 4 bits or less) or "none"
        self.calibration_chunks: int | None = None  # calibration chunks (None: the runtime's defaults); tests use fewer
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


class QuantizePage(WizardLauncher):
    """The Quantize page of the sidebar: what quantizing does, and the button that starts it."""

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(
            bridge, parent, title="Quantize", button="Quantize a model…",
            blurb="Make a model smaller so that it fits this computer and answers faster. Hearth converts and "
            "quantizes it with llama.cpp's own tools, measures how much quality each size keeps "
            "(perplexity and KL divergence against the original, and speed), and adds the results "
            "to your library.",
        )

    def make_wizard(self, *, preselect: str | None = None, **options: Any) -> QuantizeWizard:
        return QuantizeWizard(self.bridge, self, preselect=preselect)

    def summary(self, wizard: QuantizeWizard) -> str | None:
        report = wizard.report
        if not report:
            return None
        made = ", ".join(str(r["target"]) for r in report.get("results", []))
        return f"Last run: {made} from {report['source']['name']}, in {report.get('output_dir', '')}."
