"""RuntimeBridge: the UI's only door to the worker process.

Widgets call `request` / `cancel` and listen to typed signals; they never see processes, threads
or pipes. Events arrive on the client's reader thread; emitting a signal from there queues the
slot call onto the GUI thread, because the receivers live there.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.runtime.process_client import ProcessClient
from app.runtime.protocol import ErrorKind, Event, EventKind, Method, RuntimeFailure

log = logging.getLogger(__name__)


class RuntimeBridge(QObject):
    sig_ready = Signal(dict)  # the worker said hello: {"protocol", "version", "pid"}
    sig_start_failed = Signal(str)  # the worker could not start: why, in words
    sig_token = Signal(str, str)  # request id, text
    sig_progress = Signal(str, dict)  # request id, {"stage", "fraction", "message", ...}
    sig_finished = Signal(str, dict)  # request id, result
    sig_failed = Signal(str, str, str)  # request id, ErrorKind value, message
    sig_worker_died = Signal(str)  # why, in words; a restart follows unless it keeps dying
    sig_worker_restarted = Signal()

    def __init__(self, client: ProcessClient | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._client = client or ProcessClient(on_died=self.sig_worker_died.emit, on_restarted=self.sig_worker_restarted.emit)
        self._starting: threading.Thread | None = None
        self._unsent = itertools.count(1)

    @property
    def client(self) -> ProcessClient:
        return self._client

    def start(self) -> None:
        """Start the worker off the GUI thread; `sig_ready` or `sig_start_failed` follows."""

        def run() -> None:
            try:
                self._client.start()
            except RuntimeFailure as exc:
                log.error("worker did not start: %s", exc.message)
                self.sig_start_failed.emit(exc.message)
                return
            self.sig_ready.emit(dict(self._client.worker_info))

        self._starting = threading.Thread(target=run, name="hearth-worker-start", daemon=True)
        self._starting.start()

    def request(self, method: Method | str, params: dict[str, Any] | None = None) -> str:
        """Send a request; its events come back as signals carrying the returned id."""
        try:
            return self._client.submit(method, params, self._on_event)
        except RuntimeFailure as exc:
            # Not running (yet, or any more): answer through the same signal, after the caller
            # has stored the id, as a real answer would come.
            # (Python unbinds `exc` when this block ends, so the lambda takes copies.)
            request_id, kind, message = f"unsent-{next(self._unsent)}", exc.kind.value, exc.message
            QTimer.singleShot(0, lambda: self.sig_failed.emit(request_id, kind, message))
            return request_id

    def cancel(self, request_id: str) -> None:
        if self._client.alive:
            self._client.cancel(request_id)

    def close(self) -> None:
        if self._starting is not None:
            self._starting.join(timeout=30)
        self._client.close()

    def _on_event(self, event: Event) -> None:
        request_id = event.id or ""
        if event.event is EventKind.TOKEN:
            self.sig_token.emit(request_id, str(event.data.get("text", "")))
        elif event.event is EventKind.PROGRESS:
            self.sig_progress.emit(request_id, event.data)
        elif event.event is EventKind.RESULT:
            self.sig_finished.emit(request_id, event.data)
        elif event.event is EventKind.ERROR:
            kind = str(event.data.get("kind", ErrorKind.INTERNAL.value))
            self.sig_failed.emit(request_id, kind, str(event.data.get("message", "")))
