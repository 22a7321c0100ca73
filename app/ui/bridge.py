"""RuntimeBridge: the UI's only door to the worker process.

Widgets run a request as ``bridge.run(method, params).on_progress(...).on_success(...)`` (see
`app.ui.request.Request`: each request delivers only its own events, on the GUI thread) and listen
to the worker's life-cycle signals below; they never see processes, threads or pipes. A failure
nobody handles goes to `notices`, the studio's one notification sink.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.runtime.process_client import ProcessClient
from app.runtime.protocol import Event, Method, RuntimeFailure
from app.ui.notices import Notices
from app.ui.request import Request

log = logging.getLogger(__name__)


class RuntimeBridge(QObject):
    sig_ready = Signal(dict)  # the worker said hello: {"protocol", "version", "pid"}
    sig_start_failed = Signal(str)  # the worker could not start: why, in words
    sig_worker_died = Signal(str)  # why, in words; a restart follows unless it keeps dying
    sig_worker_restarted = Signal()

    def __init__(self, client: ProcessClient | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._client = client or ProcessClient(on_died=self.sig_worker_died.emit, on_restarted=self.sig_worker_restarted.emit)
        self._starting: threading.Thread | None = None
        self._unsent = itertools.count(1)
        self._live: set[Request] = set()  # requests in flight: held here until their last event
        self.notices = Notices(self)

    @property
    def client(self) -> ProcessClient:
        return self._client

    @property
    def in_flight(self) -> int:
        """How many requests have not ended yet (each is released when it ends)."""
        return len(self._live)

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

    def run(self, method: Method | str, params: dict[str, Any] | None = None, *, owner: QObject | None = None,
            replaces: Request | None = None) -> Request:
        """Send a request; attach its callbacks to the returned `Request` (call on the GUI thread).

        ``owner``: a QObject whose deletion silences the callbacks (a dialog's closures).
        ``replaces``: an older request whose answer no longer matters (the newest search, listing
        or status is the one shown); it is forgotten, not cancelled."""
        if replaces is not None:
            replaces.forget()
        name = method.value if isinstance(method, Method) else method
        request = Request(self, name, owner=owner)
        self._live.add(request)
        try:
            request.id = self._client.submit(method, params, request.post)
        except RuntimeFailure as exc:
            # Not running (yet, or any more): it fails as a real answer would, after the caller
            # has attached its callbacks (delivery is queued).
            request.id = f"unsent-{next(self._unsent)}"
            request.post(Event.error(request.id, exc.kind, exc.message))
        return request

    def stop(self, request_id: str, *, pause: bool = False) -> None:
        """`Request.cancel` / `Request.pause`: ``pause`` keeps what resumes the job (a download's
        partial file) and it ends with ``status: "paused"``; else ``"cancelled"``."""
        if not self._client.alive or request_id.startswith("unsent-"):
            return
        if pause:
            self._client.pause(request_id)
        else:
            self._client.cancel(request_id)

    def release(self, request: Request) -> None:
        """A request ended: let go of it (its callbacks are already dropped)."""
        self._live.discard(request)

    def close(self) -> None:
        """Stop the worker. Requests still in flight end silently: the window is going away, and
        nothing of it should hear "the runtime was closed"."""
        if self._starting is not None:
            self._starting.join(timeout=30)
        for request in list(self._live):
            request.forget()
        self._client.close()
