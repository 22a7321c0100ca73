"""The dispatcher's three ways to run a method: at once, on the engine thread, on a thread of its own."""

from __future__ import annotations

import queue
import threading
from typing import Any

from app.runtime.dispatcher import Dispatcher
from app.runtime.jobs import JobState, Mode
from app.runtime.protocol import Event, EventKind, Request


class _Services:
    """Three handlers: a slow background one (a download), an engine one, and a quick one."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def methods(self) -> dict[str, tuple[Any, Mode]]:
        def slow(params: dict[str, Any], state: JobState) -> dict[str, Any]:
            while not self.release.wait(0.01):
                if state.cancelled:
                    return {"paused": True}
            return {"done": True}

        return {
            "download": (slow, Mode.BACKGROUND),
            "engine_slow": (slow, Mode.ENGINE),
            "chat": (lambda params, state: {"answer": 42}, Mode.ENGINE),
        }

    def close(self) -> None:
        self.release.set()


def _final(events: queue.Queue[Event], request_id: str) -> Event:
    while True:
        event = events.get(timeout=10)
        if event.id == request_id and event.is_final:
            return event


def test_a_background_job_does_not_hold_up_the_engine() -> None:
    events: queue.Queue[Event] = queue.Queue()
    services = _Services()
    dispatcher = Dispatcher(events.put, services=services)  # type: ignore[arg-type]
    try:
        dispatcher.submit(Request("d1", "download"))
        dispatcher.submit(Request("c1", "chat"))
        assert _final(events, "c1").data == {"answer": 42}  # answered while the download still runs
        dispatcher.submit(Request("x", "cancel", {"target": "d1"}))
        assert _final(events, "d1").data == {"paused": True}
    finally:
        dispatcher.close()


def test_engine_jobs_run_in_order_and_a_queued_one_can_be_cancelled() -> None:
    events: queue.Queue[Event] = queue.Queue()
    services = _Services()
    dispatcher = Dispatcher(events.put, services=services)  # type: ignore[arg-type]
    try:
        dispatcher.submit(Request("e1", "engine_slow"))
        dispatcher.submit(Request("c1", "chat"))
        dispatcher.submit(Request("x", "cancel", {"target": "c1"}))
        services.release.set()
        assert _final(events, "e1").data == {"done": True}
        cancelled = _final(events, "c1")
        assert cancelled.event is EventKind.ERROR and cancelled.data["kind"] == "cancelled"
    finally:
        dispatcher.close()
