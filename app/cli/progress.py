"""The progress bar on stderr, drawn from the job's one progress record.

Every job reports the same record (``stage``, ``done``/``total`` with a ``unit``, ``fraction``,
``eta_s``, ``message``; see `app.runtime.jobs.Progress`), so one renderer serves them all:

- on a terminal, one line redrawn in place (at most ten times a second); when the stage changes,
  the finished stage's last line stays on screen and the new one starts below it;
- into a pipe or a file, one line per stage and per milestone message, and a measured stage's line
  at most every ``PIPE_INTERVAL`` seconds, so that a log of a long download stays short.

Two extras are understood when a job sends them: ``step``/``steps`` (a pipeline's step, shown as
``[2/5]``) and ``speed`` (bytes per second).
"""

from __future__ import annotations

import time
from typing import IO, Any

BAR_WIDTH = 20
TTY_INTERVAL = 0.1
PIPE_INTERVAL = 10.0


def describe(record: dict[str, Any], *, bar: bool = True) -> str:
    """The record as one line: ``[step] message  [#####-----]  42%  done/total unit  speed  ETA``."""
    parts: list[str] = []
    step, steps = record.get("step"), record.get("steps")
    lead = f"[{step}/{steps}] " if step and steps else ""
    message = " ".join(str(record.get("message") or "").split()) or str(record.get("stage") or "")
    parts.append(lead + message)
    fraction = record.get("fraction")
    if isinstance(fraction, (int, float)):
        fraction = min(max(float(fraction), 0.0), 1.0)
        filled = round(fraction * BAR_WIDTH)
        parts.append((f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] " if bar else "") + f"{fraction * 100:3.0f}%")
    amount = _amount(record)
    if amount and amount not in message:
        parts.append(amount)
    speed = record.get("speed")
    if isinstance(speed, (int, float)) and speed > 0 and record.get("unit") == "bytes":
        parts.append(f"{fmt_bytes(speed)}/s")
    eta = record.get("eta_s")
    if isinstance(eta, (int, float)) and eta >= 0 and (fraction is None or fraction < 1.0):
        parts.append(f"ETA {duration(eta)}")
    return "  ".join(p for p in parts if p)


def duration(seconds: float) -> str:
    """``42 s``, ``3:07``, ``1:02:03``."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _amount(record: dict[str, Any]) -> str:
    done, total, unit = record.get("done"), record.get("total"), record.get("unit") or ""
    if not isinstance(done, (int, float)):
        return ""
    if unit == "bytes":
        return f"{fmt_bytes(done)} of {fmt_bytes(total)}" if isinstance(total, (int, float)) and total else fmt_bytes(done)
    count = f"{done:g}/{total:g}" if isinstance(total, (int, float)) and total else f"{done:g}"
    return f"{count} {unit}".strip()


def fmt_bytes(n: float) -> str:
    """Bytes for a person, worded as the runtime words them."""
    from app.runtime.planner import memory

    return memory.fmt_bytes(n)


class ProgressBar:
    """One job's progress on ``stream`` (see the module's docstring)."""

    def __init__(self, stream: IO[str], *, tty: bool, width: int = 100, clock: Any = time.monotonic) -> None:
        self._stream = stream
        self._tty = tty
        self._width = width
        self._clock = clock
        self._stage: str | None = None
        self._shown = ""  # the text of the live line on a terminal ("" when none is drawn)
        self._last_message = ""
        self._last_time = float("-inf")
        self._pending: dict[str, Any] | None = None  # a terminal's newest record not drawn yet

    def update(self, record: dict[str, Any]) -> None:
        stage = str(record.get("stage") or "")
        new_stage = stage != self._stage
        self._stage = stage
        now = self._clock()
        if self._tty:
            if new_stage and self._shown:
                self._end_line()
            if new_stage or now - self._last_time >= TTY_INTERVAL:
                self._draw(record, now)
            else:
                self._pending = record
            return
        message = str(record.get("message") or "")
        measured = record.get("fraction") is not None or record.get("done") is not None
        if new_stage or (not measured and message != self._last_message) or (measured and now - self._last_time >= PIPE_INTERVAL):
            self._write(describe(record, bar=False) + "\n")
            self._last_message, self._last_time = message, now

    def clear(self) -> None:
        """Take the live line off the screen (before other output such as a reply's tokens)."""
        self._pending = None
        if self._tty and self._shown:
            self._write("\r\x1b[K")
            self._shown = ""

    def close(self) -> None:
        """The job ended: leave its last line on the screen."""
        if self._pending is not None:
            self._draw(self._pending, self._clock())
        if self._shown:
            self._end_line()

    def _draw(self, record: dict[str, Any], now: float) -> None:
        text = describe(record)[: self._width - 1]
        self._write("\r" + text + ("\x1b[K" if len(text) < len(self._shown) else ""))
        self._shown, self._last_time, self._pending = text, now, None

    def _end_line(self) -> None:
        if self._pending is not None:
            record, self._pending = self._pending, None
            self._draw(record, self._clock())
        self._write("\n")
        self._shown = ""

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()
