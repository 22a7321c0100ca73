"""Rolling daily backups of the chat history, and restoring one.

One backup a day, made at the first open of the day with SQLite's online backup API (a
consistent copy even while the file is in use), kept in the `backups` folder beside the history;
the newest `KEEP` are kept. A backup is a plain single-file database (rollback journal), so it can
be opened, counted and copied without its `-wal`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from app.chats.aside import move_aside
from app.chats.errors import DatabaseDamaged, DatabaseUnreadable
from app.chats.schema import quick_check

if TYPE_CHECKING:
    from app.chats.store import ChatStore

log = logging.getLogger(__name__)

KEEP = 7
FOLDER = "backups"
_PREFIX, _SUFFIX = "chats-", ".sqlite3"


@dataclass(frozen=True)
class Backup:
    path: Path
    day: date
    conversations: int | None  # None: the backup cannot be read

    def describe(self) -> str:
        """"2025-01-31 · 12 conversations", as the Settings page lists it."""
        if self.conversations is None:
            return f"{self.day.isoformat()} · cannot be read"
        plural = "" if self.conversations == 1 else "s"
        return f"{self.day.isoformat()} · {self.conversations} conversation{plural}"


def folder_for(db_path: Path) -> Path:
    return db_path.parent / FOLDER


def backup_if_due(store: ChatStore, *, now: datetime, keep: int = KEEP) -> Path | None:
    """Make today's backup unless there is one; drop all but the newest `keep`.

    An empty history is not backed up: a run of empty days must not push out the last backups
    that hold conversations. Returns the new backup, or None when none was due.
    """
    if not store.conversations(limit=1):
        return None
    folder = folder_for(store.path)
    target = folder / f"{_PREFIX}{now.date().isoformat()}{_SUFFIX}"
    if target.exists():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    store.backup_to(partial)
    os.replace(partial, target)
    for old in sorted(_files(folder), reverse=True)[keep:]:
        old.unlink(missing_ok=True)
    log.info("chat history backed up to %s", target)
    return target


def list_backups(folder: Path) -> list[Backup]:
    """The backups in `folder`, newest first, each with its number of conversations."""
    found = []
    for path in sorted(_files(folder), reverse=True):
        try:
            day = date.fromisoformat(path.name[len(_PREFIX):-len(_SUFFIX)])
        except ValueError:
            continue
        found.append(Backup(path, day, _count(path)))
    return found


def restore(backup: Path, db_path: Path, *, now: datetime) -> Path:
    """Make `backup` the chat history; returns where the current history was moved.

    Every connection to `db_path` must be closed first (the chat page closes its store). The
    backup is checked before anything moves, and copied, so it stays available.
    """
    if _count(backup) is None:
        raise DatabaseDamaged(f"The backup {backup} cannot be read; your history was not changed.")
    incoming = db_path.with_name(db_path.name + ".restoring")
    shutil.copyfile(backup, incoming)
    try:
        moved = move_aside(db_path, "before-restore", now=now) if db_path.exists() else db_path
    except OSError as exc:
        incoming.unlink(missing_ok=True)
        raise DatabaseUnreadable(f"The current history could not be moved aside ({exc}); nothing was changed.") from exc
    os.replace(incoming, db_path)
    log.info("chat history restored from %s; the previous one is %s", backup, moved)
    return moved


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.name.startswith(_PREFIX) and p.name.endswith(_SUFFIX)]


def _count(path: Path) -> int | None:
    """Conversations in a backup, reading it without changing it; None if it is not sound."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            if quick_check(db):
                return None
            return int(db.execute("SELECT count(*) FROM conversations").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return None
