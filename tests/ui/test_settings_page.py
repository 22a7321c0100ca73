"""The Settings page: shows the file, validates, saves field by field, themes the studio."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication

from app import settings
from app.paths import paths
from app.settings import Settings, validate
from app.ui import theme
from app.ui.settings.page import PRIVACY, SettingsPage


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "settings.json"
    settings.save(Settings(model_dirs=["/srv/models"], context_length=4096, server_port=9000, first_run_done=True,
                           remote_endpoints=[{"name": "lab", "url": "http://10.0.0.2:8000/v1"}]), path)
    return path


def test_the_page_shows_the_file_and_saves_edits(qtbot, settings_file: Path) -> None:  # type: ignore[no-untyped-def]
    page = SettingsPage(path=settings_file)
    qtbot.addWidget(page)
    assert page.folders.item(0).text() == "/srv/models"
    assert page.context_length.value() == 4096 and page.threads.text() == "Automatic (one per core)"
    assert page.server_port.value() == 9000 and page.endpoints.item(0, 1).text() == "http://10.0.0.2:8000/v1"
    assert not page.dirty()

    page.threads.setValue(3)
    page.context_length.setValue(0)  # back to automatic
    page.server_cors.setText("http://localhost:3000, https://example.org")
    page.add_endpoint({"name": "gpu box", "url": "https://gpu.example.org/v1", "api_key": "sk-1"})
    with qtbot.waitSignal(page.sig_saved) as saved:
        assert page.save() == []
    on_disk = settings.load(settings_file)
    assert on_disk == saved.args[0]
    assert on_disk.n_threads == 3 and on_disk.context_length is None
    assert on_disk.server_cors_origins == ["http://localhost:3000", "https://example.org"]
    assert on_disk.remote_endpoints[1] == {"name": "gpu box", "url": "https://gpu.example.org/v1", "api_key": "sk-1"}
    assert on_disk.first_run_done is True  # a field the page does not edit is kept
    assert "Saved" in page.status.text()


def test_an_invalid_value_is_refused_with_the_reason(qtbot, settings_file: Path) -> None:  # type: ignore[no-untyped-def]
    page = SettingsPage(path=settings_file)
    qtbot.addWidget(page)
    page.server_host.setText("0.0.0.0")  # reachable from other computers, and no API key
    problems = page.save()
    assert len(problems) == 1 and "set an API key" in problems[0]
    assert "Not saved" in page.status.text() and "0.0.0.0" in page.status.text()
    assert settings.load(settings_file).server_host == "127.0.0.1"  # the file is untouched
    page.server_api_key.setText("a-long-secret")
    assert page.save() == [] and settings.load(settings_file).server_host == "0.0.0.0"


def test_a_folder_added_elsewhere_meanwhile_is_kept(qtbot, settings_file: Path) -> None:  # type: ignore[no-untyped-def]
    page = SettingsPage(path=settings_file)
    qtbot.addWidget(page)
    # The Models page (through the worker) adds a folder while this page is open with edits.
    other = settings.load(settings_file)
    other.model_dirs.append("/mnt/usb/models")
    settings.save(other, settings_file)
    page.remove_selected_folder()  # nothing selected: no change
    page.folders.setCurrentRow(0)
    page.remove_selected_folder()
    page.add_folder("/home/me/gguf")
    assert page.save() == []
    assert settings.load(settings_file).model_dirs == ["/mnt/usb/models", "/home/me/gguf"]


def test_where_data_lives_and_the_privacy_statement(qtbot, settings_file: Path) -> None:  # type: ignore[no-untyped-def]
    page = SettingsPage(path=settings_file)
    qtbot.addWidget(page)
    shown = [page.locations.itemAtPosition(row, 1).widget().text() for row in range(page.locations.rowCount())]
    assert str(paths().chats_db) in shown and str(paths().logs) in shown and str(paths().models) in shown
    assert page.privacy_label.text() == PRIVACY and "Nothing is sent anywhere" in PRIVACY


def test_a_theme_change_restyles_the_studio(qtbot, settings_file: Path) -> None:  # type: ignore[no-untyped-def]
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    page = SettingsPage(path=settings_file)
    qtbot.addWidget(page)
    old_sheet, old_palette, old_style = app.styleSheet(), app.palette(), app.style().name()
    page.sig_theme_changed.connect(lambda name: theme.apply(app, name))
    try:
        page.theme.setCurrentIndex(page.theme.findData("dark"))
        with qtbot.waitSignal(page.sig_theme_changed) as changed:
            page.save()
        assert changed.args == ["dark"]
        dark = theme.palettes()["dark"]
        assert dark["window"] in app.styleSheet() and "@" not in app.styleSheet().split("*/", 1)[1]
        assert app.palette().color(QPalette.ColorRole.Window).name() == dark["window"]
    finally:
        app.setStyleSheet(old_sheet)
        app.setPalette(old_palette)
        app.setStyle(old_style)


def test_validation_catches_each_kind_of_mistake() -> None:
    assert validate(Settings()) == []
    bad = Settings(theme="neon", context_length=16, n_threads=0, model_dirs=["models"], server_port=70000,
                   server_cors_origins=["example.org"], server_queue_limit=0, server_max_tokens=0,
                   remote_endpoints=[{"name": "a", "url": "ftp://x"}, {"name": "a", "url": "http://y"}, {"url": "http://z"}])
    problems = " ".join(validate(bad))
    for fragment in ("neon", "context length", "Threads", "'models' must be a full path", "70000", "example.org",
                     "queue limit", "maximum tokens", "Remote engine a: the URL", "Two remote engines are named 'a'", "needs a name"):
        assert fragment in problems, fragment
