"""IdleUnloader: frees the model's memory when the chat has made no request for a while.

Off by default; the choice (5, 15 or 60 minutes) is app-wide and kept in the presets file
(`generation.idle_unload_minutes`). The page calls `touch()` on every request it makes and when a
reply ends, which restarts the countdown. When it runs out, the engine is asked how long its model
has been idle (`ask_engine`): API requests use the model without the chat page knowing, and a model
serving the API is not idle, so the countdown runs on for what is left; otherwise `sig_idle` asks the
page to unload.
"""

from __future__ import annotations

from collections.abc import Callable

EngineIdle = Callable[[Callable[[float | None], None]], None]  # asks; answers seconds idle (None: unknown)

from PySide6.QtCore import QObject, QTimer, Signal

MS_PER_MINUTE = 60_000


class IdleUnloader(QObject):
    sig_idle = Signal(int)  # the countdown ran out: unload now (the chosen minutes, for the message)

    def __init__(self, minutes: int = 0, parent: QObject | None = None, *, busy: Callable[[], bool] = lambda: False,
                 interval_ms: int | None = None, ask_engine: EngineIdle | None = None) -> None:
        """`interval_ms`, when given, replaces the minutes' length (tests use a fraction of a second)."""
        super().__init__(parent)
        self._busy = busy
        self._ask_engine = ask_engine
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
        self.timer.start(self._length_ms())

    def _length_ms(self) -> int:
        return self.interval_ms if self.interval_ms is not None else self.minutes * MS_PER_MINUTE

    def _on_timeout(self) -> None:
        if self._busy():  # a reply is still streaming: it is not idle
            self.touch()
            return
        if self._ask_engine is None:
            self.sig_idle.emit(self.minutes)
            return
        self._ask_engine(self._engine_answered)

    def _engine_answered(self, idle_s: float | None) -> None:
        if not self.minutes or self.timer.isActive():  # switched off, or touched, meanwhile
            return
        left_ms = self._length_ms() - int((idle_s or 0.0) * 1000)
        if idle_s is not None and left_ms > 0:
            self.timer.start(left_ms)  # used by someone else (an API request) since: wait out the rest
            return
        self.sig_idle.emit(self.minutes)
