"""The job contract: how every protocol method is declared, and what a running job gets.

A method is declared once, as a `MethodSpec`: its name, a params dataclass, a result dataclass,
the `Mode` it runs in and a handler ``(params, JobContext) -> result``. The dispatcher checks the
params against the declaration, runs the handler in its mode and encodes the result; nothing else
knows how a method runs.

A handler reports through its `JobContext` (the Spyder/Orange habit: a plain function with a state
object): ``ctx.progress(...)`` with one record (stage, done/total with a unit, fraction, time
left, message), ``ctx.token`` for streamed text, ``ctx.log``, and ``ctx.stop_requested`` /
``ctx.check()`` for cancel and pause. A handler that stops early raises `JobStopped` (``check()``
does it), or returns a result whose ``status`` says so; either way the request ends as a
``result`` with ``status: "cancelled"`` or ``"paused"`` (see `app.runtime.protocol`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from app.runtime.protocol import Event, EventKind, JobStatus

Emit = Callable[[Event], None]
P = TypeVar("P")
R = TypeVar("R")


class Mode(Enum):
    """Where a method runs (see app.runtime.dispatcher)."""

    QUICK = "quick"  # on the caller's thread, at once
    ENGINE = "engine"  # on the one engine thread, in order
    BACKGROUND = "background"  # on a thread of its own (network waits, downloads, child processes)


@dataclass(frozen=True)
class MethodSpec(Generic[P, R]):
    """One protocol method, declared once."""

    name: str
    params: type[P]
    result: type[R]
    mode: Mode
    handler: Callable[[P, JobContext], R]
    pausable: bool = False  # a pause keeps what a later request resumes from (else it is a cancel)
    doc: str = ""


class JobStopped(Exception):
    """Raised inside a job that stops because it was cancelled or paused.

    ``kept`` is what the result says was kept (a run folder, a checkpoint, a partial download's
    size); the dispatcher turns it into a ``result`` with ``status`` cancelled or paused.
    """

    def __init__(self, status: JobStatus, message: str = "", **kept: Any) -> None:
        super().__init__(message or f"{status.value}")
        self.status = status
        self.message = message
        self.kept = kept


@dataclass(frozen=True)
class Progress:
    """One progress record, the same for every job (what a ``progress`` event carries)."""

    stage: str
    done: float | None = None
    total: float | None = None
    unit: str = ""
    fraction: float | None = None
    eta_s: float | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "done": self.done, "total": self.total, "unit": self.unit,
                "fraction": self.fraction, "eta_s": self.eta_s, "message": self.message}


class _Rate:
    """Time left for one stage from its rate so far (needs some history to say anything)."""

    MIN_SECONDS = 0.5
    MIN_FRACTION = 0.02

    def __init__(self) -> None:
        self.started = time.monotonic()

    def eta(self, fraction: float) -> float | None:
        spent = time.monotonic() - self.started
        if fraction <= self.MIN_FRACTION or spent < self.MIN_SECONDS:
            return None
        return max(spent * (1 - fraction) / fraction, 0.0)


class JobContext:
    """What a running job receives: its progress, token and log emitters and its stop flags."""

    def __init__(self, request_id: str, emit: Emit, *, pausable: bool = False) -> None:
        self.request_id = request_id
        self._emit = emit
        self.pausable = pausable
        self._stop = threading.Event()
        self._status = JobStatus.CANCELLED
        self._rates: dict[str, _Rate] = {}

    @classmethod
    def detached(cls, name: str = "local") -> JobContext:
        """A context whose events go nowhere: for a service called from inside the runtime."""
        return cls(name, lambda event: None)

    # ---- stop ---------------------------------------------------------------------------------

    @property
    def stop_requested(self) -> JobStatus | None:
        """None while the job should go on; else CANCELLED or PAUSED."""
        return self._status if self._stop.is_set() else None

    @property
    def cancelled(self) -> bool:
        """True once the job was asked to stop, by a cancel or a pause."""
        return self._stop.is_set()

    def cancel(self) -> None:
        self._status = JobStatus.CANCELLED
        self._stop.set()

    def pause(self) -> None:
        """Stop and keep what resumes; a job that cannot resume is cancelled."""
        if not self._stop.is_set():
            self._status = JobStatus.PAUSED if self.pausable else JobStatus.CANCELLED
        self._stop.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when a stop was asked meanwhile."""
        return self._stop.wait(seconds)

    def check(self, message: str = "", **kept: Any) -> None:
        """Raise `JobStopped` when the job was asked to stop (call it between units of work)."""
        status = self.stop_requested
        if status is not None:
            raise JobStopped(status, message, **kept)

    # ---- report -------------------------------------------------------------------------------

    def token(self, text: str, **extra: Any) -> None:
        self._emit(Event(self.request_id, EventKind.TOKEN, {"text": text, **extra}))

    def progress(
        self,
        stage: str,
        *,
        done: float | None = None,
        total: float | None = None,
        unit: str = "",
        fraction: float | None = None,
        eta_s: float | None = None,
        message: str = "",
        **extra: Any,
    ) -> Progress:
        """Report one progress record. ``fraction`` comes from done/total when not given; ``eta_s``
        from this stage's rate so far when not given (None until there is enough to say)."""
        if fraction is None and done is not None and total:
            fraction = min(max(done / total, 0.0), 1.0)
        rate = self._rates.setdefault(stage, _Rate())
        if eta_s is None and fraction is not None:
            eta_s = rate.eta(fraction)
        record = Progress(stage, done, total, unit, fraction, None if eta_s is None else round(eta_s, 1), message)
        self._emit(Event(self.request_id, EventKind.PROGRESS, {**extra, **record.to_dict()}))
        return record

    def log(self, message: str, level: str = "info") -> None:
        self._emit(Event(self.request_id, EventKind.LOG, {"level": level, "message": message}))
