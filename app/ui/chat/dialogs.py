"""The chat page's dialogs and message menu: thin shells over the page's public actions.

Kept apart from `page` so the page stays short; every action here ends in a page method that the
tests call directly (`apply_settings`, `export_file`, `import_file`, `edit_message`, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import QPoint
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMenu, QMessageBox

from app.chats import ChatStoreError
from app.ui.chat.settings_dialog import SettingsDialog

if TYPE_CHECKING:
    from app.ui.chat.page import ChatPage

log = logging.getLogger(__name__)


def edit_settings(page: ChatPage) -> None:
    if page.conversation is None:
        return
    dialog = SettingsDialog(system_prompt=page.conversation.system_prompt, settings=page.conversation.settings, parent=page)
    if dialog.exec():
        page.apply_settings(system_prompt=dialog.system_prompt(), settings=dialog.settings())
        if dialog.idle_minutes() != page.idle.minutes:
            _guard(page, lambda: page.set_idle_unload(dialog.idle_minutes()))


def export_chat(page: ChatPage) -> None:
    title = page.conversation.title if page.conversation else "chat"
    path, _ = QFileDialog.getSaveFileName(page, "Export chat", f"{title}.md", "Markdown (*.md);;JSON, every version (*.json)")
    if path:
        _guard(page, lambda: page.export_file(path))


def import_chat(page: ChatPage) -> None:
    path, _ = QFileDialog.getOpenFileName(page, "Import chat", "", "Hearth chat (*.json)")
    if path:
        _guard(page, lambda: page.import_file(path))


def edit_message(page: ChatPage, row: int) -> None:
    if row < 0 or page.busy or page.transcript.message(row).role != "user":
        return
    text, ok = QInputDialog.getMultiLineText(page, "Edit message", "Message:", page.transcript.message(row).text)
    if ok:
        page.edit_message(row, text)


def message_menu(page: ChatPage, pos: QPoint) -> None:
    """Copy, edit and re-run, regenerate, ‹ previous / next › version, branch from here."""
    row = page.view.indexAt(pos).row()
    if row < 0 or page.transcript.message(row).message_id is None:
        return
    message, menu = page.transcript.message(row), QMenu(page)
    menu.addAction("Copy", lambda: page.copy_message(row))
    if not page.busy:
        if message.role == "user":
            menu.addAction("Edit and re-run…", lambda: edit_message(page, row))
        if message.role == "assistant" and row == page.transcript.rowCount() - 1:
            menu.addAction("Regenerate", page.regenerate)
        if message.version > 1:
            menu.addAction(f"‹ Version {message.version - 1}", lambda: page.switch_version(row, -1))
        if message.version < message.version_count:
            menu.addAction(f"Version {message.version + 1} ›", lambda: page.switch_version(row, +1))
        menu.addAction("Branch from here", lambda: page.branch_at(row))
    menu.exec(page.view.viewport().mapToGlobal(pos))


def _guard(page: ChatPage, action: Callable[[], object]) -> None:
    try:
        action()
    except (OSError, ValueError, ChatStoreError) as exc:
        log.exception("chat file operation failed")
        QMessageBox.warning(page, "Hearth", str(exc))
