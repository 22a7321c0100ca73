"""The runtime in this process: the same dispatcher, the same events, no pipe (CLI, tests, benches).

It lives apart from `app.runtime.client` because it builds a dispatcher, and the dispatcher's
services hold clients of their own (the API server's `LocalClient`): keeping the client base free
of the dispatcher is what keeps that from being an import cycle.
"""

from __future__ import annotations

from typing import Any

from app.runtime.client import RuntimeClient
from app.runtime.protocol import ErrorKind, Request
from app.runtime.services import Services


class InProcessClient(RuntimeClient):
    def __init__(self, services: Services | None = None) -> None:
        super().__init__()
        from app.runtime.dispatcher import Dispatcher

        self._dispatcher = Dispatcher(self._route, services)

    def _send(self, request_id: str, method: str, params: dict[str, Any]) -> None:
        self._dispatcher.submit(Request(request_id, method, params))

    def close(self) -> None:
        self._dispatcher.close()
        self._fail_all_pending(ErrorKind.CANCELLED, "The runtime was closed.")
