"""`open_history`: the person's chat history, whatever state its file is in.

`ChatStore` refuses a file it cannot trust and leaves it untouched; this is the policy on top of
it that the studio uses, so that damage never locks a person out:

- a damaged file (fails `quick_check`, is empty, or is not a database) is moved aside beside the
  original, never deleted; everything that can be read from a copy of it is salvaged into a new
  history (`salvage`), and `store.notice` says what was saved and where the original is;
- a file that cannot be opened for another reason (a newer Hearth's, an unreadable folder) is
  left alone and the session runs on an in-memory history, which leaves nothing behind, with a
  notice that this session's chats will not be kept;
- a sound history gets its daily backup (`backups`).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from app.chats import backups, salvage
from app.chats.aside import move_aside
from app.chats.errors import ChatStoreError, DatabaseDamaged
from app.chats.schema import MEMORY, sidecars
from app.chats.store import ChatStore

log = logging.getLogger(__name__)


def open_history(
    path: Path,
    *,
    clock: Callable[[], float] = time.time,
    now: Callable[[], datetime] = datetime.now,
    keep: int = backups.KEEP,
) -> ChatStore:
    """Open `path` as described above; raises only for what no fallback can fix (none known)."""
    try:
        store = ChatStore(path, clock=clock)
    except DatabaseDamaged as exc:
        log.error("chat history %s is damaged: %s", path, exc)
        store = _rescue(path, exc, clock=clock, now=now())
    except ChatStoreError as exc:
        log.error("chat history %s cannot be opened: %s", path, exc)
        return _in_memory(str(exc), clock)
    try:
        backups.backup_if_due(store, now=now(), keep=keep)
    except (OSError, sqlite3.Error, ChatStoreError):
        log.exception("the daily backup of the chat history failed; chatting goes on without it")
    return store


def _rescue(path: Path, damage: DatabaseDamaged, *, clock: Callable[[], float], now: datetime) -> ChatStore:
    try:
        aside = move_aside(path, "damaged", now=now)
    except OSError as exc:
        log.exception("the damaged chat file %s could not be moved aside", path)
        return _in_memory(f"{damage} It could not be moved aside either ({exc}).", clock)
    scratch = path.with_name(f".salvage-{now:%Y%m%d-%H%M%S}")  # in the data folder, removed below
    fresh = path.with_name(path.name + ".salvaged")
    report = salvage.SalvageReport()
    try:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        source = scratch / "source.sqlite3"
        # Salvage reads a copy: opening a file replays its -wal into it, and the original stays
        # byte for byte as it was found.
        for original, copy in zip((aside, *sidecars(aside)), (source, *sidecars(source)), strict=True):
            if original.exists():
                shutil.copyfile(original, copy)
        for leftover in (fresh, *sidecars(fresh)):
            leftover.unlink(missing_ok=True)
        report = salvage.salvage(source, fresh, scratch=scratch)
        fresh.replace(path)
        store = ChatStore(path, clock=clock)
    except (OSError, sqlite3.Error, ChatStoreError) as exc:
        log.exception("salvaging %s failed; starting a new history", aside)
        report = salvage.SalvageReport(unreadable=True, problems=[str(exc)])
        try:
            store = ChatStore(path, clock=clock)
        except ChatStoreError as again:
            return _in_memory(f"{damage} A new history could not be started either ({again}).", clock)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.warning("salvaged %d conversation(s), %d message(s) from %s (%s)", report.conversations,
                report.messages, aside, report.method)
    store.notice = rescue_notice(aside, report, has_backups=bool(backups.list_backups(backups.folder_for(path))))
    return store


def rescue_notice(aside: Path, report: salvage.SalvageReport, *, has_backups: bool) -> str:
    """What the person is told: what happened, what was saved, where the original is."""
    what = "was empty (0 bytes)" if aside.stat().st_size == 0 else "was damaged"
    if report.conversations or report.messages:
        saved = (f"{_plural(report.conversations, 'conversation')} and {_plural(report.messages, 'message')}"
                 " were saved into a new history.")
        if report.unreadable or report.skipped_rows:
            saved += " Some parts of the file could not be read; they were left in the original."
    else:
        saved = "Nothing could be read from it; a new, empty history was started."
    where = f"The original file is kept, unchanged, at {aside}."
    restore = " You can also go back to a daily backup: Settings, Your data, Restore a backup…" if has_backups else ""
    return f"Your chat history file {what}. {saved} {where}{restore}"


def _in_memory(why: str, clock: Callable[[], float]) -> ChatStore:
    """A history that lives only in this session: it writes nothing anywhere."""
    store = ChatStore(Path(MEMORY), clock=clock)
    store.notice = f"Hearth could not open your chat history. {why} Chats in this session will not be kept."
    return store


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
