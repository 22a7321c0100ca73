"""The terminal, as `hearth` uses it: which streams reach the person, and where logs go.

Only the CLI writes to the terminal. For the length of a command:

- stdout carries the answer (a reply, a table, JSON) and stderr the CLI's own words (progress, the
  one ``hearth: ...`` line of a failure); both replace what they cannot encode, and stdin decodes
  invalid UTF-8 with replacement characters instead of raising.
- Logs go to the log file (``cli.log`` in `app.paths` logs folder). Without ``-v`` nothing else
  reaches the terminal: ``sys.stderr`` points at the log file too, so that what libraries print
  there themselves (huggingface_hub's and transformers' own log handlers, Python warnings, a
  thread's traceback) lands in the log. With ``-v`` the logs are also shown on stderr.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LOG_FILE = "cli.log"
LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"
# The longest line of input a command reads (a chat turn): 4 Mi characters are about a million
# tokens, more than any model's context, so nothing a model could take is refused.
MAX_INPUT_CHARS = 4 * 2**20
ANSWER_CHARS = 1024  # the longest answer to a question (y/N)


@dataclass
class Console:
    """The person's streams, fixed when the command starts (before ``sys.stderr`` is pointed at the log)."""

    out: IO[str]
    err: IO[str]
    verbose: bool = False
    log_file: Path | None = None
    _restore: list[Any] = field(default_factory=list, repr=False)

    @property
    def err_is_tty(self) -> bool:
        return _isatty(self.err)

    @property
    def width(self) -> int:
        return max(shutil.get_terminal_size((100, 24)).columns, 40)

    def say(self, text: str = "") -> None:
        """One line of the CLI's own words on stderr."""
        self.err.write(text + "\n")
        self.err.flush()

    def fail(self, message: str) -> None:
        """The one line a failure gets."""
        self.say(f"hearth: {' '.join(message.split())}")

    def close(self) -> None:
        """Give back what `open_console` changed (a command run in-process, as the tests do)."""
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()


def open_console(*, verbose: bool) -> Console:
    """Set up the streams and logging for one command (see the module's docstring)."""
    for stream, errors in ((sys.stdin, "replace"), (sys.stdout, "replace"), (sys.stderr, "backslashreplace")):
        _reconfigure(stream, errors)
    console = Console(out=sys.stdout, err=sys.stderr, verbose=verbose)
    console.log_file = _log_file()
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    if console.log_file is not None:
        to_file = logging.handlers.RotatingFileHandler(console.log_file, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
        if not verbose:  # a library's own handler writes to sys.stderr, which is this file then
            to_file.addFilter(_NotShownByItsLibrary())
        handlers.append(to_file)
    if verbose:
        shown = logging.StreamHandler(console.err)
        shown.addFilter(_NotShownByItsLibrary())
        shown.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        handlers.append(shown)
    old_level = root.level
    for handler in handlers:
        if handler.formatter is None:
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)

    def undo_logging() -> None:
        logging.captureWarnings(False)
        root.setLevel(old_level)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()

    console._restore.append(undo_logging)
    if not verbose:
        quiet = _quiet_stream(console.log_file)
        previous = sys.stderr
        sys.stderr = quiet

        def undo_stderr() -> None:
            sys.stderr = previous

        console._restore.append(undo_stderr)
    return console


def read_line(stream: IO[str], *, limit: int = MAX_INPUT_CHARS) -> str:
    """One line of input (with its newline; "" at the end), never more than ``limit`` characters:
    a longer line (``hearth chat < /dev/zero``) is refused with the limit stated, after reading
    only ``limit`` + 1 characters of it."""
    line = stream.readline(limit + 1)
    if len(line) > limit and not line.endswith("\n"):
        from app.runtime.protocol import ErrorKind, RuntimeFailure

        why = " (more than any model's context holds)" if limit >= MAX_INPUT_CHARS else ""
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"a line of input is longer than {limit:,} characters{why}; nothing was sent")
    return line


def decode_argv(argv: list[str]) -> list[str]:
    """Arguments with invalid UTF-8 (which Python keeps as lone surrogates) decoded with
    replacement characters, so that they can be printed, logged and sent as JSON."""
    return [_replace_surrogates(arg) for arg in argv]


def _replace_surrogates(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _reconfigure(stream: Any, errors: str) -> None:
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is None:
        return
    try:
        reconfigure(errors=errors)
    except (ValueError, TypeError, OSError):  # a replaced stream (a test's capture) may refuse
        pass


def _log_file() -> Path | None:
    from app.paths import paths

    try:
        folder = paths().logs
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOG_FILE
        with path.open("a", encoding="utf-8"):
            pass
        return path
    except OSError:  # a read-only home: the command still runs, without a log
        return None


def _quiet_stream(log_file: Path | None) -> IO[str]:
    """Where ``sys.stderr`` points without ``-v``: the log file (appended), else nowhere."""
    target = log_file if log_file is not None else Path(os.devnull)
    return target.open("a", encoding="utf-8", errors="backslashreplace", buffering=1)


class _NotShownByItsLibrary(logging.Filter):
    """With ``-v``: skip a record that a library's own handler (huggingface_hub, transformers)
    prints already, so that no line appears twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        root = logging.getLogger()
        while logger is not None and logger is not root:
            if logger.handlers:
                return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True
