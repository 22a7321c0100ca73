"""The fine-tune wizard and the sidebar page that opens it.

The wizard holds what its pages share (base, data, settings, the run's result) and the one signal
the window cares about: "Chat with it" asks for the exported model to be loaded by library id.
Closing the wizard while training cancels the run (the child is killed; checkpoints stay).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QWidget, QWizard

from app.ui.bridge import RuntimeBridge
from app.ui.wizards.common import WizardLauncher
from app.ui.wizards.finetune.pages import BaseModelPage, DataPage, SettingsPage
from app.ui.wizards.finetune.run_pages import ExportPage, TrainPage


class FinetuneWizard(QWizard):
    sig_load_requested = Signal(str)  # a library model id: load it and open the chat

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Fine-tune a model")
        self.bridge = bridge
        self.base: str | None = None
        self.data_path: str | None = None
        self.on_error = "skip"
        self.prepared: dict[str, Any] | None = None
        self.settings: dict[str, Any] = {}
        self.output: str | None = None
        self.train_result: dict[str, Any] | None = None
        self.export_result: dict[str, Any] | None = None
        self.base_page = BaseModelPage()
        self.data_page = DataPage()
        self.settings_page = SettingsPage()
        self.train_page = TrainPage()
        self.export_page = ExportPage()
        for page in (self.base_page, self.data_page, self.settings_page, self.train_page, self.export_page):
            self.addPage(page)
        self.setOption(QWizard.WizardOption.NoBackButtonOnLastPage, True)
        self.resize(820, 640)

    def reject(self) -> None:
        self.train_page.cancel()  # a run the person walks away from is cancelled, not orphaned
        super().reject()


class FinetunePage(WizardLauncher):
    """The Fine-tune page of the sidebar: what fine-tuning does, and the button that starts it."""

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(
            bridge, parent, title="Fine-tune", button="Fine-tune a model…",
            blurb="Teach a model from your own examples: questions and answers, instructions, or plain text. "
            "Hearth checks the data, picks settings that fit this computer (LoRA, or QLoRA on a small GPU), "
            "shows the model learning, survives a crash by resuming from its last checkpoint, and adds the "
            "result to your library.",
        )

    def make_wizard(self, **options: Any) -> FinetuneWizard:
        return FinetuneWizard(self.bridge, self)

    def summary(self, wizard: FinetuneWizard) -> str | None:
        result = wizard.train_result
        return f"Last run: {result['steps']} steps, in {result.get('run_dir', '')}." if result else None
