"""The one way to start a Hearth process -- the worker or a child job -- from a venv or a frozen build.

A frozen (PyInstaller) build has no Python interpreter to run ``-m``: its executable is Hearth
itself, so the worker is the same executable with ``--worker`` and a child job is the same
executable with ``--child ROLE``. In a venv the interpreter runs the same entry point
(``app.__main__``) with the same flags, which routes them before importing anything heavy.

The other half is what such a process does first (`take_stdout`, `exit_when_stdin_closes`): keep
the real fd 1 for protocol lines and point fd 1 at stderr, so that a chatty native library
(llama.cpp prints to stdout) can never corrupt the stream; and leave as soon as the parent's end of
the stdin pipe closes, which is how the parent's death is seen on every OS. Not
``PR_SET_PDEATHSIG``: Linux sends it when the parent *thread* ends, and restarts happen on
threads that end right after. (On Windows a Job Object would also catch grandchildren; Hearth's
children start none.)

Only the standard library: the GUI imports this module.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

WORKER_FLAG = "--worker"
CHILD_FLAG = "--child"
EXIT_ORPHANED = 3  # a child whose parent went away


def _program() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "app"]


def worker_command() -> list[str]:
    return [*_program(), WORKER_FLAG]


def child_command(role: str) -> list[str]:
    """A child job's command line; its params come as one JSON line on stdin (`app.runtime.childjob`)."""
    return [*_program(), CHILD_FLAG, role]


def take_stdout() -> BinaryIO:
    """The real stdout, for protocol lines only; fd 1 and ``sys.stdout`` now go to stderr."""
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "wb", buffering=0)


def protocol_emitter(gone_exit_code: int) -> Callable[[Any], None]:
    """Take the real stdout (`take_stdout`) and return the one function that writes protocol
    events on it, whole lines from any thread; when nobody reads any more the process exits
    with ``gone_exit_code``."""
    out = take_stdout()
    lock = threading.Lock()

    def emit(event: Any) -> None:  # an app.runtime.protocol.Event
        data = event.encode().encode("utf-8")
        with lock:
            try:
                out.write(data)
                out.flush()
            except (BrokenPipeError, ValueError, OSError):
                os._exit(gone_exit_code)

    return emit


def exit_when_stdin_closes(code: int = EXIT_ORPHANED) -> None:
    """Exit (at once, whatever the process is doing) when stdin reaches its end: the parent closed
    its end of the pipe, or died. For processes that read nothing more from stdin."""

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(1):
                pass
        except (OSError, ValueError):
            pass
        os._exit(code)

    threading.Thread(target=watch, name="hearth-parent-watch", daemon=True).start()
