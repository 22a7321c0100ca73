"""Start the studio: check for a display, build the window, then start the worker behind it.

The window is shown before the worker starts: the worker imports llama.cpp and reads models,
which must never delay the first frame.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time

log = logging.getLogger(__name__)

HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc", "eglfs", "linuxfb")


def display_problem() -> str | None:
    """Why a window cannot open here, in one line, or None when it can."""
    if not sys.platform.startswith("linux"):
        return None
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0]
    if platform in HEADLESS_PLATFORMS:
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return (
        "hearth: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set), so the studio window cannot open. "
        'Chat in this terminal with `hearth chat` (or `hearth chat "your question"`), or start Hearth from a desktop session.'
    )


def main(args: list[str] | None = None) -> int:
    problem = display_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    _setup_logging()
    # An exception in a slot must reach the log with its traceback, not only a console nobody sees.
    sys.excepthook = lambda kind, exc, tb: log.critical("unhandled exception in the studio", exc_info=(kind, exc, tb))
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app import APP_NAME
    from app.ui.bridge import RuntimeBridge
    from app.ui.main_window import MainWindow

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName(APP_NAME)
    bridge = RuntimeBridge()
    window = MainWindow(bridge)
    if os.environ.get("HEARTH_STARTUP_PROBE"):
        # Start-up timing for `hearth bench`: report the first shown window, then quit.
        def report() -> None:
            print(json.dumps({"event": "window_shown", "t": time.time()}), flush=True)
            QTimer.singleShot(0, app.quit)

        window.sig_shown.connect(report)
    else:
        QTimer.singleShot(0, bridge.start)
    window.show()
    code = app.exec()
    bridge.close()
    return int(code)


def _setup_logging() -> None:
    from app.paths import paths

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        folder = paths().logs
        folder.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(folder / "studio.log", maxBytes=2_000_000, backupCount=3, encoding="utf-8"))
    except OSError as exc:
        print(f"hearth: cannot write the log file: {exc}", file=sys.stderr)
    logging.basicConfig(level=os.environ.get("HEARTH_LOG_LEVEL", "INFO").upper(), format="%(asctime)s %(name)s %(levelname)s: %(message)s", handlers=handlers)
