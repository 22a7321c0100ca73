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
from dataclasses import dataclass
from typing import Any

from app import __version__
from app.runtime.jobs import Emit, JobContext, JobStopped, MethodSpec, Mode
from app.runtime.protocol import (
    PROTOCOL_VERSION,
    ErrorKind,
    Event,
    EventKind,
    JobStatus,
    Method,
    NoParams,
    ProtocolError,
    Request,
    RuntimeFailure,
    decode_params,
    decode_request,
    encode_result,
)
from app.runtime.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetParams:
    """cancel and pause: the id of the request to stop."""

    target: str


@dataclass(frozen=True)
class TargetResult:
    target: str
    found: bool


@dataclass(frozen=True)
class PingResult:
    pong: bool
    protocol: int


@dataclass(frozen=True)
class ShutdownResult:
    shutting_down: bool


class Dispatcher:
    def __init__(self, emit: Emit, services: Services | None = None) -> None:
        self._output = emit
        # Requests submitted in this process with their own listener (the API server's jobs):
        # their events go to it, not to the output.
        self._listeners: dict[str, Emit] = {}
        self.services = services or Services()
        self._jobs: dict[str, JobContext] = {}
        self._jobs_lock = threading.Lock()
        self._queue: queue.Queue[tuple[Request, JobContext, MethodSpec[Any, Any]] | None] = queue.Queue()
        self.shutting_down = False
        own: list[MethodSpec[Any, Any]] = [
            MethodSpec(Method.PING.value, NoParams, PingResult, Mode.QUICK, self._ping),
            MethodSpec(Method.CANCEL.value, TargetParams, TargetResult, Mode.QUICK, self._cancel),
            MethodSpec(Method.PAUSE.value, TargetParams, TargetResult, Mode.QUICK, self._pause),
            MethodSpec(Method.SHUTDOWN.value, NoParams, ShutdownResult, Mode.QUICK, self._shutdown),
        ]
        self._methods: dict[str, MethodSpec[Any, Any]] = {}
        for spec in [*own, *self.services.methods()]:
            if spec.name in self._methods:
                raise ValueError(f"method {spec.name} is declared twice")
            self._methods[spec.name] = spec
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
        state = JobContext(request.id, self._emit, pausable=spec.pausable)
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
        if self._thread.is_alive():
            # A job still inside native code (a decode step) would crash if its model were freed
            # under it; the process is on its way out, which frees everything anyway.
            log.warning("a job did not stop within %.0f s; leaving its model to the process exit", timeout)
            return
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

    @property
    def methods(self) -> dict[str, MethodSpec[Any, Any]]:
        """Every declared method by name."""
        return dict(self._methods)

    def _run_one(self, request: Request, state: JobContext, spec: MethodSpec[Any, Any]) -> None:
        try:
            if state.cancelled:
                self._emit(Event.error(request.id, ErrorKind.CANCELLED, "Cancelled before it started."))
            else:
                self._execute(request, state, spec)
        finally:
            with self._jobs_lock:
                self._jobs.pop(request.id, None)

    def _execute(self, request: Request, state: JobContext, spec: MethodSpec[Any, Any]) -> None:
        try:
            params = decode_params(spec.params, request.params)
            result = encode_result(spec.handler(params, state))
            result.setdefault("status", JobStatus.DONE.value if state.stop_requested is None else state.stop_requested.value)
        except JobStopped as stopped:
            log.info("%s %s ended: %s", request.method, request.id, stopped.status.value)
            self._emit(Event(request.id, EventKind.RESULT, {"status": stopped.status.value, "message": stopped.message, **encode_result(stopped.kept)}))
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

    def _ping(self, params: NoParams, state: JobContext) -> PingResult:
        return PingResult(True, PROTOCOL_VERSION)

    def _cancel(self, params: TargetParams, state: JobContext) -> TargetResult:
        with self._jobs_lock:
            job = self._jobs.get(params.target)
        if job is not None:
            job.cancel()
        return TargetResult(params.target, job is not None)

    def _pause(self, params: TargetParams, state: JobContext) -> TargetResult:
        with self._jobs_lock:
            job = self._jobs.get(params.target)
        if job is not None:
            job.pause()
        return TargetResult(params.target, job is not None)

    def _shutdown(self, params: NoParams, state: JobContext) -> ShutdownResult:
        self.shutting_down = True
        return ShutdownResult(True)
