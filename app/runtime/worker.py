"""The worker process: protocol lines in on stdin, events out on the real stdout.

At start the launcher's `take_stdout` keeps the real fd 1 for the protocol and points fd 1 at
stderr, so a chatty native library (llama.cpp prints to stdout) can never corrupt the stream. The
worker exits by itself when its stdin closes -- which is also how it sees its parent die: the
parent's end of the pipe closes with it -- so no orphan keeps a model in memory; its child jobs
see the worker's end of their own stdin close and leave the same way (`app.runtime.childjob`).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading

from app.runtime.launcher import protocol_emitter

log = logging.getLogger("app.runtime.worker")


def main() -> int:
    emit = protocol_emitter(0)  # nobody listening any more: exit quietly
    _setup_logging()
    _limit_memory()

    from app.runtime.dispatcher import Dispatcher  # after the fd swap: imports may print

    dispatcher = Dispatcher(emit)
    emit(Dispatcher.hello())
    log.info("worker %s ready", os.getpid())
    for line in sys.stdin.buffer:
        if line.strip():
            dispatcher.submit_line(line)
        if dispatcher.shutting_down:
            break
    log.info("worker %s: stdin closed or shutdown requested; exiting", os.getpid())
    # Give the job thread a moment to stop cleanly, then leave even if native code is stuck.
    closer = threading.Thread(target=dispatcher.close, daemon=True)
    closer.start()
    closer.join(2.0)  # the protocol stream is unbuffered: every event is already written
    os._exit(0)


def _limit_memory() -> None:
    """HEARTH_MEMORY_LIMIT caps the address space, so that a load that does not fit fails where
    the planner's fallback can see it instead of the OOM killer ending the worker."""
    from app.runtime.planner.fallback import apply_memory_limit, memory_limit_from_env
    from app.runtime.protocol import RuntimeFailure

    try:
        limit = memory_limit_from_env()
        if limit is not None:
            apply_memory_limit(limit)
    except RuntimeFailure as exc:
        log.error("memory limit not applied: %s", exc.message)


def _setup_logging() -> None:
    from app.paths import paths

    level = os.environ.get("HEARTH_LOG_LEVEL", "INFO").upper()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        log_dir = paths().logs
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(log_dir / "worker.log", maxBytes=2_000_000, backupCount=3, encoding="utf-8"))
    except OSError as exc:  # a read-only home must not stop the runtime
        print(f"hearth worker: cannot write the log file: {exc}", file=sys.stderr)
    logging.basicConfig(level=level, format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s", handlers=handlers)

