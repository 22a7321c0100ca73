"""A tool call waiting for the person: its name and arguments, and Run once / Always / Don't run.

Cards stack in a panel above the input while calls wait; an answered card goes away, and the call
and its result stay in the transcript as one collapsed "tool" row (`tool_flow.tool_row`).
"""

from __future__ import annotations

import json

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

ONCE, ALWAYS, DENY = "once", "always", "deny"


def pretty_arguments(arguments: str) -> str:
    """The model's JSON arguments, indented when they parse (shown as they are when not)."""
    try:
        return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    except ValueError:
        return arguments


class ToolCallCard(QFrame):
    sig_answered = Signal(str, str)  # call id, ONCE | ALWAYS | DENY

    def __init__(self, call_id: str, name: str, server: str, arguments: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.call_id, self.name = call_id, name
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAccessibleName(f"Tool call {name}")
        title = QLabel(f"The model wants to run <b>{name}</b>" + (f" on <i>{server}</i>" if server else "") + ":", self)
        self.arguments = QPlainTextEdit(pretty_arguments(arguments), self)
        self.arguments.setReadOnly(True)
        self.arguments.setMaximumHeight(90)
        self.once_button = QPushButton("Run once", self)
        self.always_button = QPushButton(f"Always run {name}", self)
        self.always_button.setToolTip(f"Run {name} without asking again in this conversation")
        self.deny_button = QPushButton("Don't run", self)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.once_button, self.always_button, self.deny_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(self.arguments)
        layout.addLayout(buttons)
        self.once_button.clicked.connect(lambda: self.sig_answered.emit(self.call_id, ONCE))
        self.always_button.clicked.connect(lambda: self.sig_answered.emit(self.call_id, ALWAYS))
        self.deny_button.clicked.connect(lambda: self.sig_answered.emit(self.call_id, DENY))


class ToolCardsPanel(QWidget):
    """The waiting cards, one under the other; hidden while none waits."""

    sig_answered = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.cards: dict[str, ToolCallCard] = {}
        self.hide()

    def add(self, call_id: str, name: str, server: str, arguments: str) -> ToolCallCard:
        card = ToolCallCard(call_id, name, server, arguments, self)
        card.sig_answered.connect(self.sig_answered)
        self.cards[call_id] = card
        self._layout.addWidget(card)
        self.show()
        return card

    def remove(self, call_id: str) -> None:
        card = self.cards.pop(call_id, None)
        if card is not None:
            self._layout.removeWidget(card)
            card.deleteLater()
        self.setVisible(bool(self.cards))

    def clear(self) -> None:
        for call_id in list(self.cards):
            self.remove(call_id)
