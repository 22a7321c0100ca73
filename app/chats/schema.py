"""Opening the chat database and bringing its schema up to date.

Connection settings, and why:

- WAL journal: readers never block the writer, and a killed process leaves committed
  transactions in the `-wal` file, replayed on the next open. (Where a file system cannot do WAL
  the rollback journal is used, with a warning: slower, equally safe.)
- `synchronous=FULL` by default: each commit is fsynced, so a finished reply, a sent message or an
  edit survives a power cut, not only a killed app. Streamed appends (every ~0.5 s) switch to
  NORMAL for their one statement: in WAL mode NORMAL is still safe against any application crash
  and never corrupts the file; it only lets a power cut take the streamed text since the last
  durable commit (the next FULL commit fsyncs those frames too). That keeps an fsync off the GUI
  thread twice a second.
- foreign keys on (deleting a conversation removes its messages), and a busy timeout so that a
  second process (the CLI) waits for a lock instead of failing at once.

Every open runs `PRAGMA quick_check` before anything is read or written: a damaged file is
refused with `DatabaseDamaged` (and `open_history` then moves it aside and salvages it), rather
than opened and written into. A new file is built under a temporary name and linked into place,
so a chat file of 0 bytes is always damage (a truncated file), never "a new history".

The schema version lives in `PRAGMA user_version`. `MIGRATIONS[n - 1]` turns version n - 1 into
version n; each step runs in its own write transaction together with the version bump, so a crash
mid-migration leaves the previous version intact and the next open runs the step again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from app.chats.errors import DatabaseDamaged, DatabaseUnreadable, SchemaTooNew

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
_SQLITE_CORRUPT = 11  # primary result codes, named in sqlite3 only from Python 3.11
_SQLITE_NOTADB = 26
QUICK_CHECK_ROWS = 8  # problems named in the error; one is enough to refuse the file
MEMORY = ":memory:"


def _v1_base(db: sqlite3.Connection) -> None:
    """Version 1: conversations and a flat, ordered list of messages."""
    db.execute(
        """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            system_prompt TEXT NOT NULL DEFAULT '',
            settings TEXT NOT NULL DEFAULT '{}',
            model_id TEXT
        )"""
    )
    db.execute("CREATE INDEX conversations_by_update ON conversations (updated_at, id)")
    db.execute(
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL DEFAULT 'complete'
                CHECK (state IN ('complete', 'streaming', 'interrupted')),
            meta TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            UNIQUE (conversation_id, position)
        )"""
    )


def _v2_versions(db: sqlite3.Connection) -> None:
    """Version 2: messages form a tree so that a turn can have several versions.

    SQLite cannot drop a UNIQUE constraint in place, so the table is rebuilt: the old one is
    renamed aside, the new one created under the real name (its self-reference then names
    `messages` literally), rows copied with ids kept, each message's parent being the one before
    it, and the old table dropped.
    """
    db.execute("ALTER TABLE messages RENAME TO messages_v1")
    db.execute(
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            parent_id INTEGER REFERENCES messages (id) ON DELETE CASCADE,
            position INTEGER NOT NULL CHECK (position >= 0),
            active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL DEFAULT 'complete'
                CHECK (state IN ('complete', 'streaming', 'interrupted')),
            meta TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL
        )"""
    )
    db.execute(
        """
        INSERT INTO messages
            (id, conversation_id, parent_id, position, active, role, content, state, meta,
             created_at)
        SELECT m.id, m.conversation_id,
               (SELECT p.id FROM messages_v1 p
                 WHERE p.conversation_id = m.conversation_id AND p.position < m.position
                 ORDER BY p.position DESC LIMIT 1),
               (SELECT count(*) FROM messages_v1 p
                 WHERE p.conversation_id = m.conversation_id AND p.position < m.position),
               1, m.role, m.content, m.state, m.meta, m.created_at
          FROM messages_v1 m
         ORDER BY m.conversation_id, m.position"""
    )
    db.execute("DROP TABLE messages_v1")
    db.execute("CREATE INDEX messages_by_conversation ON messages (conversation_id, position)")
    db.execute("CREATE INDEX messages_by_parent ON messages (parent_id)")
    # At most one active version per turn; the root turn has parent NULL, hence the coalesce.
    db.execute(
        "CREATE UNIQUE INDEX messages_one_active"
        " ON messages (conversation_id, coalesce(parent_id, 0)) WHERE active = 1"
    )
    # `recover()` runs on every open: keep it from scanning every message ever written.
    db.execute("CREATE INDEX messages_streaming ON messages (state) WHERE state = 'streaming'")


def _v3_search(db: sqlite3.Connection) -> None:
    """Version 3: full-text search over message text, kept in sync by triggers.

    External-content FTS5 (the text is stored once, in `messages`); the triggers are the ones the
    FTS5 manual gives for that layout. Streaming messages are indexed too, so there is no state in
    which the index and the table disagree.
    """
    db.execute(
        "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages',"
        " content_rowid='id', tokenize='unicode61 remove_diacritics 2')"
    )
    db.execute(
        """
        CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
        END"""
    )
    db.execute(
        """
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
        END"""
    )
    db.execute(
        """
        CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
            INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
        END"""
    )
    db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")


def _v4_parts(db: sqlite3.Connection) -> None:
    """Version 4: parts of a message beside its text (document sources, tool calls and results).

    One row per part, ordered by `seq` within its message, its payload a JSON object. The kind
    is checked in Python (`models.PartKind`), not by a CHECK constraint: SQLite cannot alter a
    CHECK in place, so a new kind would otherwise cost a table rebuild. Parts go with their
    message (ON DELETE CASCADE), so deleting a conversation removes them too.
    """
    db.execute(
        """
        CREATE TABLE message_parts (
            message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL CHECK (seq >= 0),
            kind TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (message_id, seq)
        )"""
    )


# Append only: a released step is never edited, or databases already past it would differ.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_base, _v2_versions, _v3_search, _v4_parts]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed), check and configure the database, then migrate it.

    Raises DatabaseDamaged for a file that fails the check, DatabaseUnreadable for one that
    cannot be opened at all, SchemaTooNew for a newer Hearth's file; none of them is changed.
    """
    if str(path) != MEMORY:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                _create(path)
            empty = path.is_file() and path.stat().st_size == 0
        except OSError as exc:
            raise DatabaseUnreadable(
                f"Hearth cannot create or read the chat file {path} ({exc}). Check that the folder"
                " exists and is writable."
            ) from exc
        if empty:
            raise DatabaseDamaged(
                f"The chat file {path} is empty (0 bytes): it was truncated, so the history it"
                " held is gone from it. Hearth has left it untouched."
            )
    checked = str(path) != MEMORY and _check_read_only(path)
    db = _open(path)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not checked:
            _refuse_if_damaged(path, quick_check(db))
        _configure(db, path)
        migrate(db, path)
    except sqlite3.Error as exc:
        db.close()
        raise _unreadable(path, exc) from exc
    except BaseException:
        db.close()
        raise
    return db


def quick_check(db: sqlite3.Connection) -> list[str]:
    """What `PRAGMA quick_check` finds wrong ([] = the file is sound).

    quick_check reads every page and checks the b-trees and records, but not that indexes match
    their tables (integrity_check does, at several times the cost): enough to catch zeroed pages
    and overwritten bytes on every open while a large history still opens in well under a second.
    """
    rows = [str(row[0]) for row in db.execute(f"PRAGMA quick_check({QUICK_CHECK_ROWS})")]
    return [] if rows == ["ok"] else rows


def _check_read_only(path: Path) -> bool:
    """Run the check on a read-only connection; True when it ran (and passed).

    Read-only, because closing the last read-write connection to a WAL file checkpoints the -wal
    into it: a damaged file must reach `open_history` exactly as it was found, -wal included.
    False when a read-only connection cannot be had (a folder where the -shm cannot be made);
    the caller then checks on its own connection.
    """
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                             timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error:
        return False
    try:
        problems = quick_check(db)
    except sqlite3.Error as exc:
        if is_damage(exc):
            raise _unreadable(path, exc) from exc
        return False
    finally:
        db.close()
    _refuse_if_damaged(path, problems)
    return True


def _refuse_if_damaged(path: Path, problems: list[str]) -> None:
    if problems:
        raise DatabaseDamaged(
            f"The chat file {path} is damaged ({'; '.join(problems[:3])})."
            " Hearth has left it untouched."
        )


def _open(path: Path) -> sqlite3.Connection:
    try:
        # isolation_level=None: the store issues BEGIN/COMMIT itself (BEGIN IMMEDIATE for writes).
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from exc


def _configure(db: sqlite3.Connection, path: Path) -> None:
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal" and str(path) != MEMORY:
        # Some network file systems cannot share WAL memory. The rollback journal is slower
        # but just as safe, so chatting beats refusing to open.
        log.warning("chat file %s cannot use WAL; using journal mode %s", path, mode)
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")


def _create(path: Path) -> None:
    """Build an empty database beside `path` and link it into place (`migrate` then runs on it).

    sqlite3 creates a 0-byte file the moment it opens a new name; building under another name
    means a crash during the first start never leaves an empty `path`, which is what lets an
    empty file count as damage. The link never replaces a file another process made meanwhile.
    """
    tmp = path.with_name(f"{path.name}.new-{os.getpid()}")
    for leftover in (tmp, *sidecars(tmp)):
        leftover.unlink(missing_ok=True)
    db = _open(tmp)
    try:
        _configure(db, tmp)  # switching to WAL writes the header page: the file is never empty
    except sqlite3.Error as exc:
        raise _unreadable(tmp, exc) from exc
    finally:
        db.close()  # the last connection out checkpoints and removes the -wal and -shm files
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process created it first: use theirs
    except OSError:
        if not path.exists():
            os.replace(tmp, path)  # a file system without hard links
    finally:
        for leftover in (tmp, *sidecars(tmp)):
            leftover.unlink(missing_ok=True)


def sidecars(path: Path) -> tuple[Path, ...]:
    """The files SQLite keeps beside a database; they belong to it and move with it."""
    return tuple(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether a sqlite3 error says the file is damaged or not a database at all."""
    code = getattr(exc, "sqlite_errorcode", None)  # an extended code; the low byte is primary
    return (code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)) or (
        "not a database" in str(exc) or "malformed" in str(exc)
    )


def _unreadable(path: Path, exc: sqlite3.Error) -> DatabaseUnreadable:
    if is_damage(exc):
        return DatabaseDamaged(
            f"The chat file {path} is damaged or is not a Hearth chat database ({exc})."
            " Hearth has left it untouched; move it aside to start with an empty history."
        )
    return DatabaseUnreadable(
        f"Hearth cannot open the chat file {path} ({exc}). It has not been changed; check that"
        " the folder is writable and that no other program holds the file."
    )


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, path: Path | None = None) -> int:
    """Run the missing steps, one transaction each; returns the version reached."""
    if schema_version(db) == SCHEMA_VERSION:
        return SCHEMA_VERSION  # the usual open: no write lock needed
    while True:
        db.execute("BEGIN IMMEDIATE")  # read the version under the write lock: one migrator wins
        try:
            version = schema_version(db)
            if version > SCHEMA_VERSION:
                where = f" {path}" if path else ""
                raise SchemaTooNew(
                    f"The chat file{where} was written by a newer Hearth (chat schema"
                    f" {version}; this Hearth knows up to {SCHEMA_VERSION}). Update Hearth to"
                    " open it; it has not been changed."
                )
            if version == SCHEMA_VERSION:
                db.execute("COMMIT")
                return version
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
