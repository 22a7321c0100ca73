"""The "Restore a backup…" dialog: the daily chat backups, newest first, with what each holds."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from app.chats import backups

EXPLAIN = (
    "Hearth keeps a copy of your conversations each day you use it (the last {keep}). Restoring one "
    "first moves your current history aside, next to it, so nothing is lost; the chat page then "
    "shows the backup."
)


class BackupDialog(QDialog):
    """Lists `backups.list_backups(folder)`; `chosen()` is the one to restore once accepted."""

    def __init__(self, folder: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Restore a backup")
        self.found = backups.list_backups(folder)
        self.list = QListWidget(self)
        self.list.setAccessibleName("Backups")
        for backup in self.found:
            item = QListWidgetItem(backup.describe())
            item.setData(Qt.ItemDataRole.UserRole, str(backup.path))
            if backup.conversations is None:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)  # cannot be restored
            self.list.addItem(item)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel, self)
        self.restore_button = self.buttons.addButton("Restore", QDialogButtonBox.ButtonRole.AcceptRole)
        self.restore_button.setEnabled(False)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.list.currentRowChanged.connect(lambda row: self.restore_button.setEnabled(self.chosen() is not None))
        explain = QLabel(EXPLAIN.format(keep=backups.KEEP) if self.found else "There is no backup yet: Hearth makes "
                         "the first one the first time you open it on a day when you have conversations.")
        explain.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(explain)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.buttons)

    def chosen(self) -> Path | None:
        item = self.list.currentItem()
        if item is None or not item.flags() & Qt.ItemFlag.ItemIsEnabled:
            return None
        return Path(item.data(Qt.ItemDataRole.UserRole))
