"""What the studio does with an exception nobody caught: log it, then say so in a dialog.

Without this, an exception in a slot prints to a console nobody sees (or to nothing, in a frozen
windowed build) and the person is left with a window that silently stopped doing something. The
dialog names the log file, so a bug report can carry the traceback. The studio keeps running:
most slot exceptions leave the rest of the window usable.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

from PySide6.QtCore import QObject, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

log = logging.getLogger(__name__)

LOG_FILE_NAME = "studio.log"
_HANDLER_MARK = "_hearth_studio_log"


def setup_logging(folder: Path) -> Path | None:
    """Log to stderr and to ``folder/studio.log`` (rotated); returns the log file, or None when
    it cannot be written (the studio still opens; stderr still gets everything). Idempotent."""
    root = logging.getLogger()
    root.setLevel(os.environ.get("HEARTH_LOG_LEVEL", "INFO").upper())
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s")
    for handler in root.handlers:
        if getattr(handler, _HANDLER_MARK, False):
            return Path(handler.baseFilename) if isinstance(handler, logging.FileHandler) else None
    if sys.stderr is not None:  # a windowed frozen build on Windows has no stderr
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        setattr(console, _HANDLER_MARK, True)
        root.addHandler(console)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(folder / LOG_FILE_NAME, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    except OSError as exc:
        log.error("cannot write the log file in %s: %s", folder, exc)
        return None
    file_handler.setFormatter(fmt)
    setattr(file_handler, _HANDLER_MARK, True)
    root.addHandler(file_handler)
    return folder / LOG_FILE_NAME


class CrashReporter(QObject):
    """Installs itself as sys.excepthook and threading.excepthook; shows one dialog at a time."""

    sig_crashed = Signal(str, str)  # summary, traceback; emitted from any thread, shown on the GUI thread

    def __init__(self, log_file: Path | None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.log_file = log_file
        self.dialog: QMessageBox | None = None
        self.count = 0
        self._previous: Any = None
        self._previous_thread: Any = None
        self.sig_crashed.connect(self._show, Qt.ConnectionType.QueuedConnection)

    def install(self) -> None:
        self._previous, sys.excepthook = sys.excepthook, self.hook
        self._previous_thread, threading.excepthook = threading.excepthook, self._thread_hook

    def uninstall(self) -> None:
        if self._previous is not None:
            sys.excepthook, self._previous = self._previous, None
        if self._previous_thread is not None:
            threading.excepthook, self._previous_thread = self._previous_thread, None

    def hook(self, kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):  # Ctrl-C in the terminal that started the studio
            app = QApplication.instance()
            if app is not None:
                app.quit()
            return
        log.critical("unhandled exception in the studio", exc_info=(kind, exc, tb))
        self.sig_crashed.emit(f"{kind.__name__}: {exc}", "".join(traceback.format_exception(kind, exc, tb)))

    def _thread_hook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None:
            return
        self.hook(args.exc_type, args.exc_value, args.exc_traceback)

    def message(self) -> str:
        where = str(self.log_file) if self.log_file else "nowhere: the log folder could not be written"
        return (
            "Something inside Hearth failed and the last action may not have finished. "
            "Your conversations are saved; you can keep working, or restart Hearth if something looks wrong.\n\n"
            f"The details were written to the log file:\n{where}"
        )

    def _show(self, summary: str, details: str) -> None:
        self.count += 1
        if self.dialog is not None and self.dialog.isVisible():
            self.dialog.setInformativeText(f"{self.count} errors so far; the latest: {summary}")
            self.dialog.setDetailedText(details)
            return
        parent = QApplication.activeWindow()
        dialog = QMessageBox(parent if isinstance(parent, QWidget) else None)
        dialog.setObjectName("crashDialog")
        dialog.setIcon(QMessageBox.Icon.Critical)
        dialog.setWindowTitle("Hearth hit an unexpected error")
        dialog.setText(self.message())
        dialog.setInformativeText(summary)
        dialog.setDetailedText(details)
        dialog.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        if self.log_file is not None:
            folder = self.log_file.parent
            open_button = dialog.addButton("Open log folder", QMessageBox.ButtonRole.ActionRole)
            open_button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))))
        dialog.addButton(QMessageBox.StandardButton.Close)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        self.dialog = dialog
        dialog.show()  # not exec(): a nested event loop inside an exception hook invites re-entry
