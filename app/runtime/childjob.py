"""One way to run a job in a child process: dry runs, conversion, quantization, fine-tuning, and
whatever needs the whole machine or may crash in native code next.

Parent side, `run_child`: the child is started through the launcher (``--child ROLE``, venv and
frozen build alike), gets its params as one JSON line on stdin and keeps that pipe open; its real
fd 1 carries protocol events (``progress``, ``log``, then one ``result`` or ``error``), which are
relayed to the job's `JobContext`; its stderr is kept (a tail for the error a person sees, all of
it in a log file when one is named) and each line may be watched (llama.cpp's per-tensor log).
A cancel or pause kills the child; the ``partial`` paths, which nothing can resume from, are
removed whenever the child does not succeed; then the job ends as `JobStopped`.

Child side, `serve`: what ``hearth --child ROLE`` runs (routed in `app.__main__`): it takes the
real stdout for events, reads its params, exits by itself when stdin closes (the parent died), and
turns the entry function's return or exception into the one final event. It ignores SIGINT: a
Ctrl-C in a terminal reaches the whole process group, and it is the parent that decides (a CLI
turns it into a cancel, which kills the child).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from app.runtime import launcher
from app.runtime.jobs import JobContext, JobStopped
from app.runtime.protocol import ErrorKind, Event, EventKind, ProtocolError, RuntimeFailure, decode_event

log = logging.getLogger(__name__)

FAILED = 2  # the child's exit status after a final error event
TAIL_LINES = 60
KILL_POLL_SECONDS = 0.1


class ChildFailed(RuntimeFailure):
    """A child that ended without its final word: it crashed, was killed from outside, or ran past
    its timeout. ``exit_code`` is its exit status (negative: the signal); callers that know what
    the child was doing reword it (the dry run: "llama.cpp crashed while checking ...")."""

    def __init__(self, message: str, *, exit_code: int, timed_out: bool = False, detail: str = "") -> None:
        super().__init__(ErrorKind.INTERNAL, message, detail=detail)
        self.exit_code = exit_code
        self.timed_out = timed_out


def run_child(
    role: str,
    params: Mapping[str, Any],
    ctx: JobContext | None,
    *,
    what: str,
    partial: Iterable[Path] = (),
    on_stderr: Callable[[str], None] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    stderr_log: Path | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    classify: Callable[[str, int], RuntimeFailure | None] | None = None,
) -> dict[str, Any]:
    """Run ``role`` in a child process to its end and return its result's data.

    ``what`` names the work in messages ("the quantization to Q4_K_M"). ``on_progress`` sees each
    progress record first (default: relayed to ``ctx``). ``classify(stderr_tail, exit_code)`` may
    turn a failure into a better-worded one (a full disk). Raises `JobStopped` after a cancel or
    pause, `RuntimeFailure` on any failure, with the tail of the child's stderr as its detail:
    the child's own error with its kind, or `ChildFailed` when it crashed or timed out.
    """
    partial = list(partial)
    command = launcher.child_command(role)
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    log_file = stderr_log.open("ab") if stderr_log is not None else None  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env)
    except OSError as exc:
        if log_file is not None:
            log_file.close()
        raise RuntimeFailure(ErrorKind.INTERNAL, f"Could not start {what}: {exc}") from exc
    log.info("%s: child %s started (%s)", what, proc.pid, role)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_read_stderr, args=(proc, tail, on_stderr, log_file), name=f"hearth-{role}-stderr", daemon=True)
    reader.start()
    stopped = threading.Event()
    timed_out = threading.Event()
    watcher = threading.Thread(target=_watch, args=(proc, ctx, stopped, timed_out, timeout), name=f"hearth-{role}-watch", daemon=True)
    watcher.start()
    final: Event | None = None
    try:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(dict(params), default=str) + "\n").encode("utf-8"))
            proc.stdin.flush()
        except OSError:
            pass  # it died at once; its exit status and stderr say why
        for raw in proc.stdout:
            try:
                event = decode_event(raw)
            except ProtocolError:
                log.warning("%s: a line that is not an event: %r", what, raw[:200])
                continue
            if event.is_final:
                final = event
            elif event.event is EventKind.PROGRESS:
                if on_progress is not None:
                    on_progress(dict(event.data))
                elif ctx is not None:
                    ctx.progress(**event.data)
            elif event.event is EventKind.LOG and ctx is not None:
                ctx.log(str(event.data.get("message", "")), str(event.data.get("level", "info")))
        code = proc.wait()
    except BaseException:
        _kill(proc)
        _remove(partial)
        raise
    finally:
        stopped.set()
        watcher.join()
        reader.join(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if log_file is not None:
            log_file.close()
    said = "\n".join(tail)
    if ctx is not None and ctx.stop_requested is not None and not (final and final.event is EventKind.RESULT and code == 0):
        _remove(partial)
        raise JobStopped(ctx.stop_requested, f"{what[:1].upper()}{what[1:]} was stopped.")
    if final is not None and final.event is EventKind.RESULT and code == 0:
        return dict(final.data)
    _remove(partial)
    if timed_out.is_set():
        raise ChildFailed(f"{what[:1].upper()}{what[1:]} did not finish within {timeout:g} s and was stopped.", exit_code=code, timed_out=True, detail=said[-4000:])
    better = classify(said, code) if classify is not None else None
    if better is not None:
        raise better
    if final is not None and final.event is EventKind.ERROR:
        data = final.data
        try:
            kind = ErrorKind(data.get("kind"))
        except ValueError:
            kind = ErrorKind.INTERNAL
        raise RuntimeFailure(kind, str(data.get("message", "")), detail=str(data.get("detail") or said[-4000:]))
    raise ChildFailed(f"{what[:1].upper()}{what[1:]} stopped unexpectedly ({exit_words(code)}): {last_error(tail)}", exit_code=code, detail=said[-4000:])


def exit_words(code: int) -> str:
    """A child's exit status in words: a signal by name, else the number."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def last_error(tail: Iterable[str]) -> str:
    """The line of a stderr tail that most likely says what went wrong."""
    lines = list(tail)
    errors = [line for line in lines if re.search(r"error|exception|failed|Traceback|refus|abort", line, re.IGNORECASE)]
    return errors[-1] if errors else (lines[-1] if lines else "it said nothing")


def _read_stderr(proc: subprocess.Popen[bytes], tail: collections.deque[str], on_line: Callable[[str], None] | None, log_file: Any) -> None:
    """Split the child's stderr into lines (``\\r`` too: progress bars), keep the tail, pass each on."""
    assert proc.stderr is not None
    buffer = b""
    while True:
        chunk = proc.stderr.read1(65536)  # type: ignore[attr-defined]
        if not chunk:
            break
        if log_file is not None:
            log_file.write(chunk)
            log_file.flush()
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            tail.append(line)
            if on_line is not None:
                try:
                    on_line(line)
                except Exception:  # a progress listener must not stop the reading
                    log.exception("stderr listener failed on %r", line)
    if buffer.strip():
        tail.append(buffer.decode("utf-8", "replace").rstrip())


def _watch(proc: subprocess.Popen[bytes], ctx: JobContext | None, stopped: threading.Event, timed_out: threading.Event, timeout: float | None) -> None:
    """Kill the child when the job is cancelled or paused, or when it runs past ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not stopped.wait(KILL_POLL_SECONDS):
        if ctx is not None and ctx.stop_requested is not None:
            _kill(proc)
            return
        if deadline is not None and time.monotonic() > deadline:
            timed_out.set()
            _kill(proc)
            return


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _remove(paths: Iterable[Path]) -> None:
    import shutil

    for path in paths:
        try:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError:
            log.exception("could not remove %s", path)


# ---- the child's side -------------------------------------------------------------------------


Entry = Callable[[dict[str, Any], JobContext], Mapping[str, Any]]


def serve(entry: Entry, role: str) -> int:
    """Run one child job: params from stdin, events on the real stdout, one final event, exit."""
    emit = launcher.protocol_emitter(launcher.EXIT_ORPHANED)
    logging.basicConfig(level=os.environ.get("HEARTH_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    line = sys.stdin.buffer.readline()
    launcher.exit_when_stdin_closes()
    ctx = JobContext(role, emit)
    try:
        params = json.loads(line or b"null")
        if not isinstance(params, dict):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"the {role} child expects a JSON object on its first line of stdin")
        result = dict(entry(params, ctx))
    except RuntimeFailure as exc:
        logging.getLogger(__name__).info("%s failed: %s", role, exc.message)
        emit(Event.error(role, exc.kind, exc.message, exc.detail))
        return FAILED
    except MemoryError:
        logging.getLogger(__name__).exception("%s ran out of memory", role)
        emit(Event.error(role, ErrorKind.OUT_OF_MEMORY, f"The {role} process ran out of memory."))
        return FAILED
    except Exception as exc:  # the parent must hear one final word, whatever broke
        logging.getLogger(__name__).exception("%s failed", role)
        oom = "out of memory" in str(exc).lower()
        emit(Event.error(role, ErrorKind.OUT_OF_MEMORY if oom else ErrorKind.INTERNAL, f"{exc}", traceback.format_exc()))
        return FAILED
    emit(Event(role, EventKind.RESULT, result))
    return 0


def selftest_entry(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """A child that does what its params say, for the tests of this helper (and the frozen
    build's self-test): report progress, print to stdout and stderr, write a file, sleep, fail,
    exit without a word, or crash. Its first progress record ("start") carries its pid."""
    ctx.progress("start", message="selftest child running", pid=os.getpid())
    for i in range(int(params.get("steps", 0))):
        ctx.progress("step", done=i + 1, total=int(params["steps"]), unit="steps", message=f"step {i + 1}")
    if params.get("print"):
        print(params["print"])  # fd 1 is stderr here: this must never reach the event stream
        os.write(1, b"native write to fd 1\n")
    if params.get("write"):
        Path(params["write"]).write_text("partial", encoding="utf-8")
    if params.get("sleep"):
        time.sleep(float(params["sleep"]))
    if params.get("fail"):
        raise RuntimeFailure(ErrorKind(params.get("fail_kind", "internal")), str(params["fail"]))
    if params.get("exit") is not None:
        os._exit(int(params["exit"]))  # no final word, as a process that dies in native code
    if params.get("crash"):
        sys.stderr.write("about to abort: simulated native crash\n")
        sys.stderr.flush()
        os.abort()
    return {"echo": params.get("echo"), "pid": os.getpid()}
