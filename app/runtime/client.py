"""RuntimeClient: one interface, two implementations.

- `app.runtime.inprocess.InProcessClient` runs the dispatcher in this process (CLI, tests, benches).
- `ProcessClient` runs it in a worker process and speaks the protocol over its stdin/stdout (GUI).

Both deliver events to a per-request callback on a background thread; `call` and `stream` are
blocking conveniences built on `submit` for code that has no event loop (the CLI).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from app.runtime.protocol import ErrorKind, Event, EventKind, Method, RuntimeFailure

log = logging.getLogger(__name__)

EventCallback = Callable[[Event], None]


class RuntimeClient(ABC):
    def __init__(self) -> None:
        self._pending: dict[str, EventCallback] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)

    @abstractmethod
    def _send(self, request_id: str, method: str, params: dict[str, Any]) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def submit(self, method: str | Method, params: dict[str, Any] | None = None, on_event: EventCallback | None = None) -> str:
        """Send a request; events for it go to ``on_event`` (on a background thread). Returns its id."""
        request_id = f"r{next(self._ids)}"
        with self._pending_lock:
            self._pending[request_id] = on_event or (lambda event: None)
        try:
            self._send(request_id, Method(method).value if isinstance(method, Method) else method, params or {})
        except BaseException:
            with self._pending_lock:
                self._pending.pop(request_id, None)
            raise
        return request_id

    def cancel(self, request_id: str) -> None:
        self.submit(Method.CANCEL, {"target": request_id})

    def pause(self, request_id: str) -> None:
        """Stop a job keeping what resumes it (a job that cannot resume is cancelled)."""
        self.submit(Method.PAUSE, {"target": request_id})

    def call(self, method: str | Method, params: dict[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Send a request and wait for its result; an error event is raised as RuntimeFailure."""
        for event in self.stream(method, params, timeout=timeout):
            if event.event is EventKind.RESULT:
                return event.data
        raise AssertionError("stream() ends with a result or raises")  # pragma: no cover

    def stream(self, method: str | Method, params: dict[str, Any] | None = None, timeout: float | None = None) -> Iterator[Event]:
        """Yield a request's events in order; the last one is its result. Errors are raised.

        Closing the iterator early (break) cancels the request.
        """
        events: queue.Queue[Event] = queue.Queue()
        request_id = self.submit(method, params, events.put)
        finished = False
        try:
            while True:
                try:
                    event = events.get(timeout=timeout)
                except queue.Empty:
                    raise RuntimeFailure(ErrorKind.INTERNAL, f"No answer from the runtime within {timeout} s.") from None
                if event.event is EventKind.ERROR:
                    finished = True
                    raise failure_from_event(event)
                yield event
                if event.is_final:
                    finished = True
                    return
        finally:
            if not finished:
                self.cancel(request_id)

    def _route(self, event: Event) -> None:
        """Deliver an event to its request's callback; the final event retires the request."""
        if event.id is None:
            if event.event is EventKind.LOG:
                log.info("worker: %s", event.data.get("message"))
            return
        with self._pending_lock:
            callback = self._pending.pop(event.id, None) if event.is_final else self._pending.get(event.id)
        if callback is None:
            log.debug("event for an unknown request: %s", event)
            return
        try:
            callback(event)
        except Exception:  # a broken listener must not kill the reader thread
            log.exception("event callback failed for %s", event.id)

    def _fail_all_pending(self, kind: ErrorKind, message: str) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for request_id, callback in pending.items():
            try:
                callback(Event.error(request_id, kind, message))
            except Exception:
                log.exception("event callback failed for %s", request_id)


def failure_from_event(event: Event) -> RuntimeFailure:
    """The one place an error event becomes an exception."""
    data = event.data
    try:
        kind = ErrorKind(data.get("kind"))
    except ValueError:
        kind = ErrorKind.INTERNAL
    return RuntimeFailure(kind, str(data.get("message", "unknown error")), detail=str(data.get("detail", "")))
