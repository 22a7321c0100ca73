"""View the loaded model's chat template and override it for one conversation.

`TemplateEditor` asks the worker for `engine.status` (which carries the model's template and where
it came from), shows it in `TemplateDialog`, and on Save stores the override in the conversation's
settings through `page.set_chat_template`; an empty override means "use the model's".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from app.runtime.protocol import Method, RuntimeFailure
from app.ui.bridge import RuntimeBridge
from app.ui.errors import worded

if TYPE_CHECKING:
    from app.ui.chat.page import ChatPage

FALLBACK_NOTICE = ("The model's chat template failed on this conversation, so Hearth used ChatML instead. "
                   "Use Template… to fix it with an override.")


class TemplateDialog(QDialog):
    """The model's template (read-only) above this conversation's override (editable)."""

    def __init__(self, override: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Chat template")
        self.resize(640, 520)
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.source = QLabel("Asking the runtime for the model's template…", self)
        self.source.setWordWrap(True)
        self.model_template = QPlainTextEdit(self)
        self.model_template.setReadOnly(True)
        self.model_template.setFont(mono)
        self.model_template.setAccessibleName("Model's chat template")
        self.override = QPlainTextEdit(override, self)
        self.override.setFont(mono)
        self.override.setAccessibleName("Template override")
        self.override.setPlaceholderText("Empty: use the model's template. Otherwise a Jinja chat template.")
        self.copy_button = QPushButton("Start from the model's template", self)
        self.copy_button.setEnabled(False)
        self.copy_button.clicked.connect(lambda: self.override.setPlainText(self.model_template.toPlainText()))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.source)
        layout.addWidget(self.model_template, 1)
        layout.addWidget(QLabel("Override for this conversation:", self))
        layout.addWidget(self.override, 1)
        layout.addWidget(self.copy_button)
        layout.addWidget(buttons)

    def show_status(self, status: dict[str, Any]) -> None:
        """Fill in the model's side from an `engine.status` result."""
        if not status.get("loaded"):
            self.source.setText("No model is loaded; send a message first to see its template.")
            return
        name = (status.get("model") or {}).get("name", "the model")
        template, source = status.get("chat_template") or "", str(status.get("template_source") or "")
        if template:
            self.source.setText(f"{name}'s template ({source or 'model'}):")
        else:
            self.source.setText(f"{name} has no chat template of its own; Hearth uses ChatML ({source}).")
        self.model_template.setPlainText(template)
        self.copy_button.setEnabled(bool(template))

    def show_error(self, message: str) -> None:
        self.source.setText(f"Cannot read the model's template: {message}")

    def override_text(self) -> str:
        return self.override.toPlainText().strip()


class TemplateEditor(QObject):
    """Opens the dialog for the page's conversation and routes the status answer into it."""

    sig_status = Signal(dict)  # the engine.status result the open dialog was filled from

    def __init__(self, bridge: RuntimeBridge, page: ChatPage) -> None:
        super().__init__(page)
        self._bridge, self._page = bridge, page
        self.dialog: TemplateDialog | None = None

    def open(self) -> TemplateDialog:
        """Show the dialog (window-modal, not blocking) and ask the worker for the template."""
        if self.dialog is not None:
            self.dialog.close()
        dialog = self.dialog = TemplateDialog(self._page.chat_template, self._page)
        dialog.accepted.connect(lambda: self._page.set_chat_template(dialog.override_text()))
        dialog.finished.connect(lambda: self._forget(dialog))
        (self._bridge.run(Method.ENGINE_STATUS, owner=dialog)
         .on_success(lambda result: self._on_status(dialog, result))
         .on_failure(lambda failure: self._on_failed(dialog, failure)))
        dialog.open()
        return dialog

    def _forget(self, dialog: TemplateDialog) -> None:
        if self.dialog is dialog:
            self.dialog = None
        dialog.deleteLater()

    def _on_status(self, dialog: TemplateDialog, result: dict[str, Any]) -> None:
        if dialog is self.dialog:  # not one closed (and replaced) while the worker answered
            dialog.show_status(result)
            self.sig_status.emit(result)

    def _on_failed(self, dialog: TemplateDialog, failure: RuntimeFailure) -> None:
        if dialog is self.dialog:
            dialog.show_error(worded(failure))
