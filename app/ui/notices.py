"""The studio's one notification sink: failures nobody handled, in words a person can act on.

A request whose caller set no failure handler ends here (`app.ui.request`), and so can any widget
with something to tell that has no label of its own. The main window shows each notice in its
status bar; everything posted is logged, so a notice that scrolled away is still in the log file.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal

from app.runtime.protocol import RuntimeFailure
from app.ui.errors import worded

log = logging.getLogger(__name__)


class Notices(QObject):
    sig_notice = Signal(str)  # a sentence or two for the person; emitted on the GUI thread

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.last = ""  # the latest notice (what the status bar shows; tests read it)

    def post(self, text: str) -> None:
        log.warning("notice: %s", text)
        self.last = text
        self.sig_notice.emit(text)

    def failure(self, failure: RuntimeFailure) -> None:
        """The default failure handler: the failure worded (app.ui.errors), posted."""
        self.post(worded(failure))
