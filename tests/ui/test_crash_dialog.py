"""An exception nobody catches, raised in a real slot, ends in the log and in a dialog naming it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QPushButton

from app.ui.crash import CrashReporter, setup_logging


@pytest.fixture
def reporter(tmp_path: Path) -> Iterator[CrashReporter]:
    root = logging.getLogger()
    before = list(root.handlers)
    log_file = setup_logging(tmp_path / "logs")
    assert log_file == tmp_path / "logs" / "studio.log"
    reporter = CrashReporter(log_file)
    reporter.install()
    yield reporter
    reporter.uninstall()
    if reporter.dialog is not None:
        reporter.dialog.close()
    for handler in set(root.handlers) - set(before):
        root.removeHandler(handler)
        handler.close()


def _boom() -> None:
    raise ValueError("the frobnicator is out of frobs")


@pytest.mark.qt_no_exception_capture  # the studio's hook must see it, not pytest-qt's
def test_an_exception_in_a_slot_shows_the_log_path(qtbot, reporter: CrashReporter) -> None:  # type: ignore[no-untyped-def]
    button = QPushButton("Go")
    qtbot.addWidget(button)
    button.clicked.connect(_boom)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: reporter.dialog is not None and reporter.dialog.isVisible(), timeout=5_000)
    dialog = reporter.dialog
    assert isinstance(dialog, QMessageBox)
    assert str(reporter.log_file) in dialog.text()
    assert "ValueError: the frobnicator is out of frobs" in dialog.informativeText()
    assert "_boom" in dialog.detailedText()  # the traceback, for a bug report
    for handler in logging.getLogger().handlers:
        handler.flush()
    logged = reporter.log_file.read_text(encoding="utf-8")  # type: ignore[union-attr]
    assert "unhandled exception in the studio" in logged and "the frobnicator is out of frobs" in logged
    assert 'in _boom\n    raise ValueError' in logged

    # A second error updates the open dialog instead of stacking another on top of it.
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: reporter.count == 2, timeout=5_000)
    assert reporter.dialog is dialog and "2 errors so far" in dialog.informativeText()


@pytest.mark.qt_no_exception_capture
def test_an_exception_in_a_thread_reaches_the_dialog(qtbot, reporter: CrashReporter) -> None:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=_boom, name="hearth-test-boom")
    thread.start()
    thread.join()
    qtbot.waitUntil(lambda: reporter.dialog is not None and reporter.dialog.isVisible(), timeout=5_000)
    assert "frobnicator" in reporter.dialog.informativeText()  # type: ignore[union-attr]


def test_the_hooks_are_put_back(reporter: CrashReporter) -> None:
    import sys

    assert sys.excepthook == reporter.hook
    reporter.uninstall()
    assert sys.excepthook != reporter.hook and threading.excepthook != reporter._thread_hook  # noqa: SLF001
