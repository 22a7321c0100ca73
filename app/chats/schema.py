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

The schema version lives in `PRAGMA user_version`. `MIGRATIONS[n - 1]` turns version n - 1 into
version n; each step runs in its own write transaction together with the version bump, so a crash
mid-migration leaves the previous version intact and the next open runs the step again.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from app.chats.errors import DatabaseUnreadable, SchemaTooNew

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
_SQLITE_CORRUPT = 11  # primary result codes, named in sqlite3 only from Python 3.11
_SQLITE_NOTADB = 26


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


# Append only: a released step is never edited, or databases already past it would differ.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1_base, _v2_versions, _v3_search]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and configure the database, then migrate it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # isolation_level=None: the store issues BEGIN/COMMIT itself (BEGIN IMMEDIATE for writes).
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from exc
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # Some network file systems cannot share WAL memory. The rollback journal is slower
            # but just as safe, so chatting beats refusing to open.
            log.warning("chat file %s cannot use WAL; using journal mode %s", path, mode)
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        migrate(db, path)
    except sqlite3.Error as exc:
        db.close()
        raise _unreadable(path, exc) from exc
    except BaseException:
        db.close()
        raise
    return db


def _unreadable(path: Path, exc: sqlite3.Error) -> DatabaseUnreadable:
    code = getattr(exc, "sqlite_errorcode", None)  # an extended code; the low byte is primary
    if (code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)) or (
        "not a database" in str(exc) or "malformed" in str(exc)
    ):
        return DatabaseUnreadable(
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
