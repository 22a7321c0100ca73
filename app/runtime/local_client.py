"""A RuntimeClient over a dispatcher in this process: how the API server queues its jobs.

The server runs in the process that owns the engine (the worker for the GUI, the CLI's process
for `hearth serve`), so its requests go through the same dispatcher as the GUI's chats and wait
in the same FIFO engine queue: one model, one context, no second copy. Ids are prefixed so that
they never collide with the ids the GUI's client picks for its own requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.runtime.client import RuntimeClient
from app.runtime.protocol import ErrorKind, Event, Method, Request

Submit = Callable[[Request, Callable[[Event], None]], None]
PREFIX = "api-"


class LocalClient(RuntimeClient):
    def __init__(self, submit: Submit) -> None:
        super().__init__()
        self._submit_request = submit

    def _send(self, request_id: str, method: str, params: dict[str, Any]) -> None:
        self._submit_request(Request(PREFIX + request_id, method, params), self._unprefix)

    def cancel(self, request_id: str) -> None:
        self.submit(Method.CANCEL, {"target": PREFIX + request_id})

    def _unprefix(self, event: Event) -> None:
        self._route(Event(event.id[len(PREFIX) :] if event.id else event.id, event.event, event.data))

    def close(self) -> None:
        self._fail_all_pending(ErrorKind.CANCELLED, "The server stopped.")
