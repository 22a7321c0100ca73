"""Take the README's first-run screenshot: the studio on a fresh HEARTH_HOME, once the welcome
page has the hardware and the plan from the worker.

    HEARTH_HOME=$(mktemp -d) xvfb-run -s "-screen 0 1280x860x24" .venv/bin/python installers/screenshot.py docs/screenshots/first-run.png

Works offscreen too (QT_QPA_PLATFORM=offscreen), but Xvfb renders fonts as a desktop would.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from app import settings
from app.ui import resources, theme
from app.ui.bridge import RuntimeBridge
from app.ui.main_window import MainWindow

POLL_MS = 250


def main(out: Path, theme_name: str = "light") -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setWindowIcon(resources.app_icon())
    theme.apply(app, theme_name)
    bridge = RuntimeBridge()
    window = MainWindow(bridge, first_run=not settings.load().first_run_done)
    window.resize(1180, 800)
    window.show()
    bridge.start()
    welcome = window.welcome_page

    def poll() -> None:
        if welcome.hardware is None or welcome.plan is None:
            QTimer.singleShot(POLL_MS, poll)
            return
        QTimer.singleShot(500, grab)  # let the status bar and layout settle

    def grab() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not window.grab().save(str(out)):
            print(f"could not write {out}", file=sys.stderr)
            app.exit(1)
            return
        print(f"wrote {out}")
        app.exit(0)

    QTimer.singleShot(POLL_MS, poll)
    QTimer.singleShot(180_000, lambda: app.exit(2))
    code = app.exec()
    bridge.close()
    return code


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("first-run.png"), *(sys.argv[2:3])))
