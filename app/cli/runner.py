"""The one way a `hearth` subcommand runs a request: `Session.run`.

It submits the request through the in-process runtime client (the same dispatcher, declared
methods and error mapping the studio's worker uses), draws the job's progress on stderr, hands
streamed tokens to the command, and turns the ending into one of three things:

- the result's data (``status: "done"``), returned;
- `Stopped` (``status: "cancelled"`` or ``"paused"``), with the job's message and how to resume;
- `app.runtime.protocol.RuntimeFailure` (an ``error`` event), raised for `app.cli.main` to say in
  one line.

Ctrl-C while a job runs: the first press pauses a job that can resume (the command says how it
resumes: ``models pull``, ``docs add``, ``finetune``) and cancels any other; the next press cancels
the paused one instead (when it has not stopped yet); one more leaves at once. A press never kills
the job mid-write: it becomes a ``pause`` or ``cancel`` request, and the job ends by the contract
(see `app.runtime.protocol`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from app.cli.console import Console
from app.cli.progress import ProgressBar
from app.runtime.client import failure_from_event
from app.runtime.protocol import EventKind, JobStatus, Method

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 130  # 128 + SIGINT: cancelled or paused (by Ctrl-C, or from elsewhere)

POLL_S = 0.1  # how often the wait for events looks at Ctrl-C presses
# Progress stages not drawn: a chat's live speculation numbers (for the studio's status bar) would
# flicker on the terminal line between tokens; `hearth chat --stats` prints the final ones.
UNDRAWN_STAGES = frozenset({"speculation"})

Resume = str | Callable[[dict[str, Any]], str]


class UsageError(Exception):
    """Arguments that parse but do not make sense together (exit code 2, with the usage line)."""


class Stopped(Exception):
    """A job that ended cancelled or paused; ``data`` is what its result kept."""

    def __init__(self, status: str, message: str, data: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.data = data


class Session:
    """What a subcommand gets: the console, and the in-process runtime on first use."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The `app.runtime.inprocess.InProcessClient` (made when the first request needs it)."""
        if self._client is None:
            from app.runtime.inprocess import InProcessClient

            self._client = InProcessClient()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def call(self, method: Method | str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A request whose progress is not worth showing (a listing, a search)."""
        return self.run(method, params, progress=False)

    def run(
        self,
        method: Method | str,
        params: dict[str, Any] | None = None,
        *,
        progress: bool = True,
        resume: Resume | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Run one request to its end (see the module's docstring).

        ``resume``: how the person resumes this job (a command line, or a function of the paused
        result's data); given, the first Ctrl-C pauses instead of cancelling.
        """
        events: queue.Queue[Any] = queue.Queue()
        bar = ProgressBar(self.console.err, tty=self.console.err_is_tty, width=self.console.width) if progress else None
        with _ctrl_c() as presses:
            request_id = self.client.submit(method, params or {}, events.put)
            stopping = _Stopping(self, request_id, pausable=resume is not None, bar=bar)
            finished = False
            try:
                while True:
                    stopping.follow(presses)
                    try:
                        event = events.get(timeout=POLL_S)
                    except queue.Empty:
                        continue
                    if event.event is EventKind.TOKEN:
                        if bar is not None:
                            bar.clear()
                        if on_token is not None:
                            on_token(str(event.data.get("text", "")))
                    elif event.event is EventKind.PROGRESS:
                        if bar is not None and event.data.get("stage") not in UNDRAWN_STAGES:
                            bar.update(event.data)
                    elif event.event is EventKind.LOG:
                        log.info("%s: %s", method, event.data.get("message"))
                    elif event.event is EventKind.RESULT:
                        finished = True
                        data = dict(event.data)
                        break
                    elif event.event is EventKind.ERROR:
                        finished = True
                        failure = failure_from_event(event)
                        if failure.detail:
                            log.error("%s failed: %s\n%s", method, failure.message, failure.detail)
                        raise failure
            finally:
                if bar is not None:
                    bar.close()
                if not finished:  # the command broke off (a closed pipe, a bug): the job must not go on
                    self.client.cancel(request_id)
                    _wait_for_the_end(events, stopping, presses)
        status = data.pop("status", JobStatus.DONE.value)
        if status == JobStatus.DONE.value:
            return data
        message = str(data.get("message") or status)
        if status == JobStatus.PAUSED.value and resume is not None:
            again = resume(data) if callable(resume) else resume
            message = f"{message.rstrip('.')}. Run `{again}` to resume."
        raise Stopped(status, message, data)


def _wait_for_the_end(events: queue.Queue[Any], stopping: _Stopping, presses: list[float]) -> None:
    """Wait until a cancelled job has stopped, so that closing the runtime never pulls a model
    from under a job still running on it (Ctrl-C leaves at once)."""
    stopping.cancelled(presses)
    while True:
        stopping.follow(presses)
        try:
            event = events.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if event.event in (EventKind.RESULT, EventKind.ERROR):
            return


class _Stopping:
    """The Ctrl-C ladder of one request: pause (when it can resume) or cancel, then cancel, then leave."""

    def __init__(self, session: Session, request_id: str, *, pausable: bool, bar: ProgressBar | None) -> None:
        self._session = session
        self._request_id = request_id
        self._steps = ["pause", "cancel", "leave"] if pausable else ["cancel", "leave"]
        self._seen = 0  # presses acted on
        self._bar = bar

    def cancelled(self, presses: list[float]) -> None:
        """A cancel was sent for another reason (the command broke off): the next press leaves."""
        self._steps, self._seen = ["leave"], len(presses)

    def follow(self, presses: list[float]) -> None:
        while self._seen < len(presses):
            step = self._steps.pop(0) if len(self._steps) > 1 else self._steps[0]
            self._seen += 1
            if self._bar is not None:
                self._bar.clear()
            console = self._session.console
            if step == "pause":
                console.say("hearth: pausing (what is done is kept) -- Ctrl-C again to cancel instead")
                self._session.client.pause(self._request_id)
            elif step == "cancel":
                console.say("hearth: cancelling -- Ctrl-C again to leave without waiting")
                self._session.client.cancel(self._request_id)
            else:
                with contextlib.suppress(OSError):
                    console.say("hearth: left without waiting for the job to stop")
                    console.out.flush()
                os._exit(EXIT_STOPPED)  # the runtime may be stuck: no clean-up that could hang (child jobs end with our pipe)


@contextlib.contextmanager
def _ctrl_c() -> Iterator[list[float]]:
    """Count Ctrl-C presses (their times) instead of raising KeyboardInterrupt, while a job runs.

    Only the main thread can own the handler; elsewhere the list stays empty."""
    presses: list[float] = []
    if threading.current_thread() is not threading.main_thread():
        yield presses
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: presses.append(time.monotonic()))
    try:
        yield presses
    finally:
        signal.signal(signal.SIGINT, previous)
