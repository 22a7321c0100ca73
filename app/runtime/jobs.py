"""The state object a long-running service function receives: cancel flag and event emitters.

Service functions are plain functions ``f(params, state) -> result`` (the Spyder/Orange habit):
they check ``state.cancelled`` and report through ``state.token`` / ``state.progress``; they never
know whether they run in the worker process or in-process.
"""

from __future__ import annotations

import threading
from enum import Enum
from collections.abc import Callable
from typing import Any

from app.runtime.protocol import Event, EventKind

Emit = Callable[[Event], None]


class Mode(Enum):
    """Where a service method runs (see app.runtime.dispatcher)."""

    QUICK = "quick"  # on the caller's thread, at once
    ENGINE = "engine"  # on the one engine thread, in order
    BACKGROUND = "background"  # on a thread of its own (network waits, downloads)


class JobState:
    def __init__(self, request_id: str, emit: Emit) -> None:
        self.request_id = request_id
        self._emit = emit
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def token(self, text: str, **extra: Any) -> None:
        self._emit(Event(self.request_id, EventKind.TOKEN, {"text": text, **extra}))

    def progress(self, stage: str, *, fraction: float | None = None, message: str = "", **extra: Any) -> None:
        data = {"stage": stage, "fraction": fraction, "message": message, **extra}
        self._emit(Event(self.request_id, EventKind.PROGRESS, data))

    def log(self, message: str, level: str = "info") -> None:
        self._emit(Event(self.request_id, EventKind.LOG, {"level": level, "message": message}))
