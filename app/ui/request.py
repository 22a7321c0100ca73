"""Request: one runtime request in the studio, with its own callbacks (Anki's CollectionOp shape).

    bridge.run(Method.QUANTIZE_RUN, params).on_progress(show).on_success(done).on_stopped(stopped)

Why one object per request: a page gets exactly its own request's events, so no page filters the
bridge's traffic by request id, and a new feature is a method and its callbacks, not a mechanism.

- Events arrive on the client's reader thread; the request lives on the GUI thread and every event
  is *queued* onto it, so callbacks may touch widgets, and callbacks attached right after
  `RuntimeBridge.run` returns see every event (an unsent request fails the same way, later).
- How it ends, exactly one of (see app/runtime/protocol.py for the job contract):
  ``on_success(result)`` for a result with ``status: "done"``; ``on_stopped(result)`` for a result
  with ``status: "cancelled"`` or ``"paused"`` (it carries what the job kept: a chat's partial
  reply, where a download stopped); ``on_failure(RuntimeFailure)`` for an error event (an error of
  kind ``cancelled`` means "cancelled before it started" and is a failure). Without
  ``on_stopped`` a stop is only logged: the person asked for it. Without ``on_failure`` the
  failure is worded (app.ui.errors) and posted to the studio's one notification sink.
- A callback that raises is logged with its traceback and a notice is posted; the request still
  ends and is released, and the window goes on.
- Released when it ends: its callbacks are dropped and the bridge lets go of it. A callback bound
  to a QObject that has been deleted (or any callback, once ``owner`` is deleted) is not called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import shiboken6
from PySide6.QtCore import QObject, Qt, Signal

from app.runtime.client import failure_from_event
from app.runtime.protocol import Event, EventKind, JobStatus, RuntimeFailure
from app.ui.errors import LOG_HINT

if TYPE_CHECKING:
    from app.ui.bridge import RuntimeBridge

log = logging.getLogger(__name__)

ResultCallback = Callable[[dict[str, Any]], None]
FailureCallback = Callable[[RuntimeFailure], None]


class Request(QObject):
    _sig_event = Signal(object)  # an Event, emitted on the client's thread, delivered on the GUI thread

    def __init__(self, bridge: RuntimeBridge, method: str, *, owner: QObject | None = None) -> None:
        super().__init__()
        self.method = method
        self.id = ""  # the client's request id ("unsent-N" when it could not be sent)
        self.status: str | None = None  # once ended: "done", "cancelled", "paused" or "failed"
        self._bridge: RuntimeBridge | None = bridge
        self._owner = owner
        self._callbacks: dict[str, Callable[..., None]] = {}
        self._forgotten = False  # forget(): nothing is told about this request any more, not even a failure
        self._sig_event.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    # ---- what the caller sets (each returns the request, to chain) -----------------------------

    def on_token(self, fn: Callable[[str], None]) -> Request:
        """A streamed piece of text (chat)."""
        return self._set("token", fn)

    def on_progress(self, fn: ResultCallback) -> Request:
        """One progress record: stage, done/total/unit, fraction, eta_s, message, plus extras."""
        return self._set("progress", fn)

    def on_success(self, fn: ResultCallback) -> Request:
        return self._set("success", fn)

    def on_stopped(self, fn: ResultCallback) -> Request:
        """A result with ``status`` "cancelled" or "paused" (read ``result["status"]``)."""
        return self._set("stopped", fn)

    def on_failure(self, fn: FailureCallback) -> Request:
        """Replaces the default handler (the worded failure posted to the notification sink)."""
        return self._set("failure", fn)

    # ---- what the caller may do while it runs --------------------------------------------------

    @property
    def running(self) -> bool:
        return self.status is None

    def cancel(self) -> None:
        """Ask the job to stop; it ends through ``on_stopped`` (or ``on_failure``, kind cancelled,
        when it had not started)."""
        if self.running and self._bridge is not None:
            self._bridge.stop(self.id)

    def pause(self) -> None:
        """Ask the job to stop keeping what resumes it; a job that cannot resume is cancelled."""
        if self.running and self._bridge is not None:
            self._bridge.stop(self.id, pause=True)

    def forget(self) -> None:
        """Drop the callbacks: the answer no longer matters (a newer request replaced this one,
        the bridge closed). The job runs on; the bridge lets go of the request when it ends."""
        self._forgotten = True
        self._callbacks.clear()
        self._owner = None

    # ---- delivery ------------------------------------------------------------------------------

    def post(self, event: Event) -> None:
        """Called by the client (any thread): queue the event onto the request's thread."""
        self._sig_event.emit(event)

    def _set(self, name: str, fn: Callable[..., None]) -> Request:
        if self.running:
            self._callbacks[name] = fn
        return self

    def _deliver(self, event: Event) -> None:
        if not self.running:
            return
        if event.event is EventKind.TOKEN:
            self._call("token", str(event.data.get("text", "")))
        elif event.event is EventKind.PROGRESS:
            self._call("progress", event.data)
        elif event.event is EventKind.RESULT:
            self.status = str(event.data.get("status", JobStatus.DONE.value))
            self._end("success" if self.status == JobStatus.DONE.value else "stopped", event.data)
        elif event.event is EventKind.ERROR:
            self.status = "failed"
            self._end("failure", failure_from_event(event))

    def _end(self, name: str, payload: Any) -> None:
        try:
            if name in self._callbacks:
                self._call(name, payload)
            elif name == "failure" and self._bridge is not None and not self._forgotten and not self._owner_gone():
                self._bridge.notices.failure(payload)
            elif name == "stopped":
                log.info("%s (%s) ended %s", self.method, self.id, self.status)
        finally:
            self._callbacks.clear()
            self._owner = None
            bridge, self._bridge = self._bridge, None
            if bridge is not None:
                bridge.release(self)

    def _call(self, name: str, *args: Any) -> None:
        fn = self._callbacks.get(name)
        if fn is None or self._owner_gone() or _deleted(getattr(fn, "__self__", None)):
            return
        try:
            fn(*args)
        except Exception:  # a broken callback must not take the window down, nor keep the request
            log.exception("the %s callback of %s (%s) failed", name, self.method, self.id)
            if self._bridge is not None:
                self._bridge.notices.post(f"Hearth hit a bug while showing the answer to a {self.method} request; {LOG_HINT}.")

    def _owner_gone(self) -> bool:
        return self._owner is not None and _deleted(self._owner)


def _deleted(obj: object) -> bool:
    """A QObject whose C++ side is gone (a closed dialog's page); anything else is alive."""
    return isinstance(obj, QObject) and not shiboken6.isValid(obj)
