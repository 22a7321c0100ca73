"""Admission for API requests: a fixed number of places, first come first served.

The order itself is the engine's: every admitted request becomes one job in the dispatcher's
FIFO engine queue, alongside the GUI's chats. This only bounds how many may wait or run at once;
past the limit a request is refused at once with 429 rather than piling up. A place is freed the
moment its request ends, fails, or its client goes away.
"""

from __future__ import annotations

import itertools
import threading


class Slots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def try_acquire(self) -> Slot | None:
        with self._lock:
            if self._used >= self.limit:
                return None
            self._used += 1
        return Slot(self)

    def _release(self) -> None:
        with self._lock:
            self._used -= 1


class Slot:
    """One admitted request's place; `release` is idempotent (a stream may end several ways at once)."""

    def __init__(self, slots: Slots) -> None:
        self._slots = slots
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._slots._release()


class RequestLog:
    """The last requests with their timing, for the Server page (polled with ``since``)."""

    def __init__(self, keep: int = 500) -> None:
        self._keep = keep
        self._entries: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._arrivals = itertools.count(1)
        self._starts = itertools.count(1)

    def next_arrival(self) -> int:
        return next(self._arrivals)

    def next_start(self) -> int:
        return next(self._starts)

    def since(self, seq: int) -> list[dict[str, object]]:
        """Entries logged after the one numbered ``seq`` (entries are numbered in the order they finish)."""
        with self._lock:
            return [dict(e) for e in self._entries if int(e["log_seq"]) > seq]  # type: ignore[call-overload]

    def add(self, entry: dict[str, object]) -> dict[str, object]:
        """Number the entry (``log_seq``, in the order requests finish) and keep it."""
        with self._lock:
            last = int(self._entries[-1]["log_seq"]) if self._entries else 0  # type: ignore[call-overload]
            entry["log_seq"] = last + 1
            self._entries.append(entry)
            del self._entries[: -self._keep]
        return entry
