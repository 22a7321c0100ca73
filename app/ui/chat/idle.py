"""IdleUnloader: frees the model's memory when the chat has made no request for a while.

Off by default; the choice (5, 15 or 60 minutes) is app-wide and kept in the presets file
(`generation.idle_unload_minutes`). The page calls `touch()` on every request it makes and when a
reply ends, which restarts the countdown; when it runs out, `sig_idle` asks the page to unload.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer, Signal

MS_PER_MINUTE = 60_000


class IdleUnloader(QObject):
    sig_idle = Signal(int)  # the countdown ran out: unload now (the chosen minutes, for the message)

    def __init__(self, minutes: int = 0, parent: QObject | None = None, *, busy: Callable[[], bool] = lambda: False,
                 interval_ms: int | None = None) -> None:
        """`interval_ms`, when given, replaces the minutes' length (tests use a fraction of a second)."""
        super().__init__(parent)
        self._busy = busy
        self.interval_ms = interval_ms
        self.minutes = 0
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self._on_timeout)
        self.set_minutes(minutes)

    def set_minutes(self, minutes: int) -> None:
        """0 stops it; otherwise the countdown starts over with the new length."""
        self.minutes = max(0, int(minutes))
        self.touch()

    def touch(self) -> None:
        """A request was made: start the countdown over (or keep it stopped when off)."""
        if not self.minutes:
            self.timer.stop()
            return
        self.timer.start(self.interval_ms if self.interval_ms is not None else self.minutes * MS_PER_MINUTE)

    def _on_timeout(self) -> None:
        if self._busy():  # a reply is still streaming: it is not idle
            self.touch()
            return
        self.sig_idle.emit(self.minutes)
