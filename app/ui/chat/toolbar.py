"""The chat page's top bar (model picker, Unload, Settings, Template, Export, Import) and its context bar."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QStyle, QStyleOptionComboBox, QWidget

from app.ui.chat.render import tokens_in_context

DEFAULT_MODEL_TEXT = "Default model"
DEFAULT_MODEL_TIP = "The loaded model, or the built-in one when none is loaded"
PICKER_MAX_WIDTH = 420  # pixels: wider names are elided, and shown whole in the list and the tooltip


class ChatToolbar(QWidget):
    sig_model_chosen = Signal(object)  # a library model id, or None for the default
    sig_unload = Signal()
    sig_settings = Signal()
    sig_template = Signal()
    sig_export = Signal()
    sig_import = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.models = QComboBox(self)
        self.models.setAccessibleName("Model")
        self.models.setMinimumContentsLength(16)
        self.models.addItem(DEFAULT_MODEL_TEXT, None)
        self.models.setItemData(0, DEFAULT_MODEL_TIP, Qt.ItemDataRole.ToolTipRole)
        self.models.currentIndexChanged.connect(self._fit_choice)
        self.unload_button = QPushButton("Unload", self)
        self.unload_button.setToolTip("Free the memory the loaded model uses")
        self.settings_button = QPushButton("Settings…", self)
        self.template_button = QPushButton("Template…", self)
        self.template_button.setToolTip("View the model's chat template, or override it for this conversation")
        self.export_button = QPushButton("Export…", self)
        self.import_button = QPushButton("Import…", self)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Model:", self))
        layout.addWidget(self.models, 1)
        for button in (self.unload_button, self.settings_button, self.template_button, self.export_button, self.import_button):
            layout.addWidget(button)
        self.models.activated.connect(lambda row: self.sig_model_chosen.emit(self.models.itemData(row)))
        self.unload_button.clicked.connect(self.sig_unload)
        self.settings_button.clicked.connect(self.sig_settings)
        self.template_button.clicked.connect(self.sig_template)
        self.export_button.clicked.connect(self.sig_export)
        self.import_button.clicked.connect(self.sig_import)

    def set_models(self, models: list[dict[str, Any]]) -> None:
        """Fill the picker from the library's records (`models.list`), keeping the choice."""
        current = self.current_model()
        self.models.clear()
        self.models.addItem(DEFAULT_MODEL_TEXT, None)
        self.models.setItemData(0, DEFAULT_MODEL_TIP, Qt.ItemDataRole.ToolTipRole)
        for record in models:
            label = str(record.get("name") or record["id"])
            if record.get("quantization"):
                label += f" · {record['quantization']}"
            self.models.addItem(label, str(record["id"]))
            self.models.setItemData(self.models.count() - 1, label, Qt.ItemDataRole.ToolTipRole)
        self.select_model(current)
        # The list shows every name whole, however narrow the picker is.
        widest = max((self.models.fontMetrics().horizontalAdvance(self.models.itemText(i)) for i in range(self.models.count())), default=0)
        self.models.view().setMinimumWidth(widest + 40)

    def _fit_choice(self) -> None:
        """Make the picker as wide as the chosen model's name (up to a limit), so it is not cut off."""
        text = self.models.currentText()
        self.models.setToolTip(str(self.models.currentData(Qt.ItemDataRole.ToolTipRole) or text))
        option = QStyleOptionComboBox()
        self.models.initStyleOption(option)
        option.currentText = text
        needed = self.models.style().sizeFromContents(QStyle.ContentsType.CT_ComboBox, option,
                                                      QSize(self.models.fontMetrics().horizontalAdvance(text), 0), self.models).width()
        self.models.setMinimumWidth(min(needed, PICKER_MAX_WIDTH))

    def select_model(self, model_id: str | None) -> None:
        row = self.models.findData(model_id) if model_id is not None else 0
        if row < 0:  # not in the library list (yet): show it anyway
            self.models.addItem(str(model_id), model_id)
            row = self.models.count() - 1
        self.models.setCurrentIndex(row)

    def current_model(self) -> str | None:
        data = self.models.currentData()
        return None if data is None else str(data)


class ContextBar(QWidget):
    """How full the model's memory is for this conversation, and whether old turns were dropped."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bar = QProgressBar(self)
        self.bar.setMaximumHeight(14)
        self.bar.setTextVisible(True)
        self.dropped = QLabel("", self)
        self.dropped.setStyleSheet("color: #8a5a00")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Context:", self))
        layout.addWidget(self.bar, 1)
        layout.addWidget(self.dropped)
        self.show_context(None)

    def show_context(self, context: dict[str, Any] | None) -> None:
        context = context or {}
        n_ctx, used = int(context.get("n_ctx") or 0), tokens_in_context(context)
        self.setVisible(n_ctx > 0)
        if n_ctx > 0:
            self.bar.setRange(0, n_ctx)
            self.bar.setValue(min(used, n_ctx))
            self.bar.setFormat(f"{used} / {n_ctx} tokens")
        dropped = int(context.get("dropped_messages") or 0)
        self.dropped.setText(
            f"{dropped} older message{'s' if dropped != 1 else ''} no longer fit in the model's memory" if dropped else "")
