"""Routes requests to services; the heart of the worker, also used in-process by the CLI and tests.

Three ways a method runs (`Mode`):
- QUICK methods (ping, cancel, listings) answer on the caller's thread at once, so a cancel is
  never stuck behind the generation it wants to stop;
- ENGINE jobs (load, chat) run one at a time, in order, on one engine thread: a model has one
  context, and queueing is fairer than refusing;
- BACKGROUND jobs (Hub calls, downloads) get a thread each: they wait on the network, and a
  download must not stop the person from chatting.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app import __version__
from app.runtime.jobs import Emit, JobState, Mode
from app.runtime.protocol import (
    PROTOCOL_VERSION,
    ErrorKind,
    Event,
    EventKind,
    Method,
    ProtocolError,
    Request,
    RuntimeFailure,
    decode_request,
)
from app.runtime.services import Services

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], JobState], dict[str, Any]]


@dataclass(frozen=True)
class MethodSpec:
    handler: Handler
    mode: Mode


class Dispatcher:
    def __init__(self, emit: Emit, services: Services | None = None) -> None:
        self._output = emit
        # Requests submitted in this process with their own listener (the API server's jobs):
        # their events go to it, not to the output.
        self._listeners: dict[str, Emit] = {}
        self.services = services or Services()
        self._jobs: dict[str, JobState] = {}
        self._jobs_lock = threading.Lock()
        self._queue: queue.Queue[tuple[Request, JobState, MethodSpec] | None] = queue.Queue()
        self.shutting_down = False
        self._methods: dict[str, MethodSpec] = {
            Method.PING.value: MethodSpec(self._ping, Mode.QUICK),
            Method.CANCEL.value: MethodSpec(self._cancel, Mode.QUICK),
            Method.SHUTDOWN.value: MethodSpec(self._shutdown, Mode.QUICK),
            **{name: MethodSpec(handler, mode) for name, (handler, mode) in self.services.methods().items()},
        }
        self._thread = threading.Thread(target=self._run_jobs, name="hearth-jobs", daemon=True)
        self._thread.start()
        attach = getattr(self.services, "attach", None)  # lets the API server queue jobs here
        if attach is not None:
            attach(self.submit)

    @staticmethod
    def hello() -> Event:
        return Event(None, EventKind.HELLO, {"protocol": PROTOCOL_VERSION, "version": __version__})

    def submit_line(self, line: str | bytes) -> None:
        """Decode one protocol line and submit it; a bad line gets an error event, never an exception."""
        try:
            request = decode_request(line)
        except ProtocolError as exc:
            self._emit(Event.error(exc.request_id, exc.kind, str(exc)))
            return
        self.submit(request)

    def submit(self, request: Request, on_event: Emit | None = None) -> None:
        """Run a request; ``on_event`` (in-process callers such as the API server) takes its events
        instead of the dispatcher's output."""
        if on_event is not None:
            with self._jobs_lock:
                self._listeners[request.id] = on_event
        spec = self._methods.get(request.method)
        if spec is None:
            known = ", ".join(sorted(self._methods))
            self._emit(Event.error(request.id, ErrorKind.UNKNOWN_METHOD, f"Unknown method {request.method!r}. Known: {known}."))
            return
        state = JobState(request.id, self._emit)
        if spec.mode is Mode.QUICK:
            self._execute(request, state, spec)
            return
        with self._jobs_lock:
            if request.id in self._jobs:
                self._emit(Event.error(request.id, ErrorKind.BAD_MESSAGE, f"Request id {request.id!r} is already in use."))
                return
            self._jobs[request.id] = state
        if spec.mode is Mode.ENGINE:
            self._queue.put((request, state, spec))
        else:
            threading.Thread(target=self._run_one, args=(request, state, spec), name=f"hearth-{request.method}", daemon=True).start()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything, stop the job thread and release models."""
        with self._jobs_lock:
            for state in self._jobs.values():
                state.cancel()
        self._queue.put(None)
        self._thread.join(timeout)
        self.services.close()

    # ---- internals ----------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        listener = None
        if event.id is not None and self._listeners:
            with self._jobs_lock:
                listener = self._listeners.pop(event.id, None) if event.is_final else self._listeners.get(event.id)
        (listener or self._output)(event)

    def _run_jobs(self) -> None:
        while (item := self._queue.get()) is not None:
            self._run_one(*item)

    def _run_one(self, request: Request, state: JobState, spec: MethodSpec) -> None:
        try:
            if state.cancelled:
                self._emit(Event.error(request.id, ErrorKind.CANCELLED, "Cancelled before it started."))
            else:
                self._execute(request, state, spec)
        finally:
            with self._jobs_lock:
                self._jobs.pop(request.id, None)

    def _execute(self, request: Request, state: JobState, spec: MethodSpec) -> None:
        try:
            result = spec.handler(request.params, state)
        except RuntimeFailure as exc:
            log.info("%s %s failed: %s", request.method, request.id, exc.message)
            self._emit(Event.error(request.id, exc.kind, exc.message, exc.detail))
        except MemoryError:
            log.exception("%s %s ran out of memory", request.method, request.id)
            self._emit(Event.error(request.id, ErrorKind.OUT_OF_MEMORY, "The runtime ran out of memory. Try a smaller model or context."))
        except Exception as exc:  # the worker must answer every request, whatever broke
            log.exception("%s %s failed unexpectedly", request.method, request.id)
            self._emit(Event.error(request.id, ErrorKind.INTERNAL, f"Internal error: {exc}", traceback.format_exc()))
        else:
            self._emit(Event(request.id, EventKind.RESULT, result))

    def _ping(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        return {"pong": True, "protocol": PROTOCOL_VERSION}

    def _cancel(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        target = params.get("target")
        if not isinstance(target, str):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "cancel needs 'target', the id of the request to stop")
        with self._jobs_lock:
            job = self._jobs.get(target)
        if job is not None:
            job.cancel()
        return {"target": target, "found": job is not None}

    def _shutdown(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        self.shutting_down = True
        return {"shutting_down": True}
