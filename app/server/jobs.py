"""One API request as a runtime job, seen from the server's event loop.

Runtime events arrive on the runtime's thread; they are handed to the loop with
`call_soon_threadsafe`. A job whose client goes away is cancelled at once: a queued job is then
skipped when the engine reaches it, a running one stops before its next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from app.runtime.client import RuntimeClient
from app.runtime.protocol import Event, EventKind, Method

log = logging.getLogger(__name__)


class _Unfinished:
    """How many API jobs of this process the engine has not finished: queued or running, with or
    without their client (a job whose client left still runs until it reaches a cancel check).
    `/health` shows it, so an abandoned request is never invisible."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    def add(self, n: int) -> None:
        with self._lock:
            self._count += n


UNFINISHED = _Unfinished()


class Job:
    def __init__(self, client: RuntimeClient, params: dict[str, Any], *, on_start: Callable[[], None], on_end: Callable[[Event], None]) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._on_start = on_start
        self._on_end = on_end  # also after the client left: the request log gets how it ended
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.started_at: float | None = None
        self.finished = False
        self._ended = False  # the engine's final event came (counted once in UNFINISHED)
        UNFINISHED.add(1)
        try:
            self.id = client.submit(Method.SERVER_GENERATE, params, self._on_event)
        except BaseException:
            self._end()
            raise

    def _on_event(self, event: Event) -> None:  # the runtime's thread
        if event.event is EventKind.PROGRESS and event.data.get("stage") == "started" and self.started_at is None:
            self.started_at = time.monotonic()
            self._on_start()  # here, not on the loop: the engine's order is the order events leave it
        if event.is_final:
            self._end()
            self._on_end(event)
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop closed: the server stopped while this job ran
            log.debug("event for %s after the server stopped", self.id)

    async def next(self, disconnected: asyncio.Future[None] | None = None) -> Event | None:
        """The next event, or None if the client went away first (the job is then cancelled)."""
        if disconnected is None:
            event = await self.events.get()
        else:
            getter = asyncio.ensure_future(self.events.get())
            done, _ = await asyncio.wait({getter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                self.cancel()
                return None
            event = getter.result()
        if event.is_final:
            self.finished = True
        return event

    async def first_wait(self, disconnected: asyncio.Future[None], entry: dict[str, Any], arrived: float) -> Event | None:
        """`next` while the request waits for its first event, noting in the request log how long
        it queued, or that its client left (None: the route answers 499)."""
        event = await self.next(disconnected)
        if event is None:
            entry.update(error="the client went away while waiting")
        elif self.started_at is not None:
            entry["queued_ms"] = round((self.started_at - arrived) * 1000, 1)
        return event

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            UNFINISHED.add(-1)

    def cancel(self) -> None:
        if not self.finished:
            self.finished = True
            self._client.cancel(self.id)


async def wait_disconnect(request: Request) -> None:
    """Returns when the client closes its connection (after the body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
