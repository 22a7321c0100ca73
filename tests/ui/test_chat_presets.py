"""User presets: saved, chosen and deleted from the chat settings dialog; built-in ones stay."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QMessageBox

from app.ui.chat import generation
from app.ui.chat.settings_dialog import SettingsDialog


def test_a_user_preset_can_be_deleted_and_a_built_in_one_cannot(qtbot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    generation.save_preset("Terse", "Answer in five words.")
    dialog = SettingsDialog(system_prompt="", settings={})
    qtbot.addWidget(dialog)
    dialog.preset.setCurrentText("Pirate")
    assert not dialog.delete_preset.isEnabled()
    with pytest.raises(ValueError, match="built-in"):
        generation.delete_preset("Pirate")

    dialog.preset.setCurrentText("Terse")
    assert dialog.delete_preset.isEnabled() and dialog.prompt.toPlainText() == "Answer in five words."
    monkeypatch.setattr(QMessageBox, "question", lambda *args, **kwargs: QMessageBox.StandardButton.Yes)
    dialog.delete_preset.click()
    assert "Terse" not in generation.load_presets() and "Pirate" in generation.load_presets()
    assert dialog.preset.findText("Terse") == -1 and not dialog.delete_preset.isEnabled()
    assert dialog.prompt.toPlainText() == "Answer in five words."  # the conversation keeps its prompt
    assert generation.delete_preset("Terse") is False
