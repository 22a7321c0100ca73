"""What the quantize and fine-tune wizards share: a page that runs one request at a time, and the
sidebar page that explains the wizard and opens it."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget, QWizard, QWizardPage

from app.runtime.protocol import Method
from app.ui.bridge import RuntimeBridge
from app.ui.request import Request


class BridgePage(QWizardPage):
    """A wizard page with one request of its own at a time; the wizard carries the bridge."""

    request: Request | None = None

    def run(self, method: Method, params: dict[str, Any] | None = None) -> Request:
        """Send ``method``; a request this page sent before (it was shown again after Back, or
        Check was pressed again) is replaced: its answer is dropped."""
        self.request = self.wizard().bridge.run(method, params, owner=self, replaces=self.request)  # type: ignore[attr-defined]
        return self.request


class WizardLauncher(QWidget):
    """A sidebar page: what the wizard does, the button that opens it, and the last run's outcome.

    Subclasses give the words and ``make_wizard``; a wizard has ``sig_load_requested(str)``, which
    is passed on ("Chat with it") and closes the wizard.
    """

    sig_load_requested = Signal(str)  # a library model id, from the wizard's "Chat with it"

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None, *, title: str, blurb: str, button: str) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.wizard: Any = None
        text = QLabel(blurb, self)
        text.setWordWrap(True)
        self.start_button = QPushButton(button, self)
        self.start_button.clicked.connect(lambda: self.open_wizard())
        self.last = QLabel("", self)
        self.last.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"<h2>{title}</h2>", self))
        layout.addWidget(text)
        layout.addWidget(self.start_button)
        layout.addWidget(self.last)
        layout.addStretch(1)

    def make_wizard(self, **options: Any) -> QWizard:
        raise NotImplementedError

    def summary(self, wizard: Any) -> str | None:
        """One line about the run the wizard just finished, or None when it made nothing."""
        return None

    def open_wizard(self, **options: Any) -> Any:
        wizard = self.make_wizard(**options)
        wizard.sig_load_requested.connect(self.sig_load_requested)
        wizard.sig_load_requested.connect(lambda _: wizard.accept())
        wizard.finished.connect(lambda _: self._summarize(wizard))
        self.wizard = wizard
        wizard.show()
        return wizard

    def _summarize(self, wizard: Any) -> None:
        line = self.summary(wizard)
        if line:
            self.last.setText(line)
