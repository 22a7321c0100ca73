"""Start the studio: check for a display, build the window, then start the worker behind it.

The window is shown before the worker starts: the worker imports llama.cpp and reads models,
which must never delay the first frame. Logging and the crash dialog are set up first, so that
nothing after them can fail silently.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time

log = logging.getLogger(__name__)

HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc", "eglfs", "linuxfb")
SELF_TEST_FLAG = "--self-test"


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
    args = args or []
    self_test = SELF_TEST_FLAG in args
    if self_test and display_problem():
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a check of the install works over SSH too
    problem = display_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    scratch = None
    if self_test and not os.environ.get("HEARTH_HOME"):
        # A check of the install must not leave a conversation in the person's history.
        scratch = tempfile.mkdtemp(prefix="hearth-self-test-")
        os.environ["HEARTH_HOME"] = scratch  # before anything reads a path; the worker inherits it
    try:
        return _run(self_test)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(self_test: bool) -> int:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app import APP_NAME, settings
    from app.paths import paths
    from app.ui import resources, theme
    from app.ui.bridge import RuntimeBridge
    from app.ui.crash import CrashReporter, setup_logging
    from app.ui.main_window import MainWindow

    log_file = setup_logging(paths().logs)
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName(APP_NAME)
    app.setDesktopFileName("hearth")  # matches hearth.desktop: Wayland and docks group the window under it
    reporter = CrashReporter(log_file, app)
    reporter.install()
    saved = settings.load()
    app.setWindowIcon(resources.app_icon())
    theme.apply(app, saved.theme)
    bridge = RuntimeBridge()
    window = MainWindow(bridge, first_run=not saved.first_run_done and not self_test)
    window.settings_page.sig_theme_changed.connect(lambda name: theme.apply(app, name))
    log.info("Hearth starting; log file %s, data in %s", log_file, paths().data)
    if self_test:
        from app.ui.selftest import SelfTest

        SelfTest(app, window)
    if os.environ.get("HEARTH_STARTUP_PROBE"):
        # Start-up timing for `hearth bench`: report the first shown window, then quit.
        def report() -> None:
            print(json.dumps({"event": "window_shown", "t": time.time()}), flush=True)
            QTimer.singleShot(0, app.quit)

        window.sig_shown.connect(report)
    else:
        QTimer.singleShot(0, bridge.start)
    window.show()
    try:
        code = app.exec()
    finally:
        bridge.close()
        reporter.uninstall()
    return int(code)
