"""Opening the file: schema versions, migrations from version 1, and files Hearth must not touch."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from app.chats import (
    SCHEMA_VERSION,
    ChatStore,
    DatabaseUnreadable,
    MessageState,
    Role,
    SchemaTooNew,
    schema,
)

# Version 1 exactly as Hearth first shipped it, written out here so that an edit to the
# migration step cannot silently change what "a version-1 file" means to this test.
V1_SCHEMA = """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',
    model_id TEXT
);
CREATE INDEX conversations_by_update ON conversations (updated_at, id);
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
);
INSERT INTO conversations VALUES (1, 'Old chat', 100.0, 200.0, 'Be kind.', '{"temperature": 0.2}',
                                  'smollm2');
INSERT INTO conversations VALUES (2, 'Second', 300.0, 400.0, '', '{}', NULL);
-- positions with a gap (a v1 build could delete a message): they become depths 0, 1, 2
INSERT INTO messages VALUES (10, 1, 0, 'user', 'Where is Lyon?', 'complete', '{}', 101.0);
INSERT INTO messages VALUES (11, 1, 1, 'assistant', 'Lyon is in France.', 'complete',
                             '{"tokens": 6, "tokens_per_s": 30.5}', 102.0);
INSERT INTO messages VALUES (14, 1, 5, 'user', 'And Turin?', 'complete', '{}', 103.0);
INSERT INTO messages VALUES (20, 2, 0, 'user', 'Tell me a story', 'complete', '{}', 301.0);
INSERT INTO messages VALUES (21, 2, 1, 'assistant', 'Once upon', 'streaming', '{}', 302.0);
PRAGMA user_version = 1;
"""


def test_a_new_file_is_created_at_the_current_version(db_path: Path, store: ChatStore) -> None:
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert SCHEMA_VERSION == len(schema.MIGRATIONS) >= 2


def test_version_1_file_migrates_with_data_intact(
    db_path: Path, open_store: Callable[[Path], ChatStore]
) -> None:
    with sqlite3.connect(db_path) as db:
        db.executescript(V1_SCHEMA)
    db.close()

    store = open_store(db_path)
    db = store._conn()  # white-box: check the file itself
    assert schema.schema_version(db) == SCHEMA_VERSION
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "messages_v1" not in tables and "messages_fts" in tables
    assert "messages_v1" not in "".join(r[0] for r in db.execute("SELECT sql FROM sqlite_master"
                                                                 " WHERE sql IS NOT NULL"))

    old = store.conversation(1)
    assert (old.title, old.created_at, old.updated_at) == ("Old chat", 100.0, 200.0)
    assert (old.system_prompt, old.settings, old.model_id) == ("Be kind.", {"temperature": 0.2},
                                                               "smollm2")
    shown = store.messages(1)
    assert [(m.id, m.position, m.parent_id, m.role, m.content) for m in shown] == [
        (10, 0, None, Role.USER, "Where is Lyon?"),
        (11, 1, 10, Role.ASSISTANT, "Lyon is in France."),
        (14, 2, 11, Role.USER, "And Turin?"),
    ]
    assert shown[1].meta == {"tokens": 6, "tokens_per_s": 30.5}
    assert shown[1].created_at == 102.0
    # the v1 reply left streaming is recovered on the same open
    (story,) = [m for m in store.messages(2) if m.role is Role.ASSISTANT]
    assert (story.content, story.state) == ("Once upon", MessageState.INTERRUPTED)

    # the new features work on the old data
    assert [hit.conversation_id for hit in store.search("lyon")] == [1]
    again = store.add_version(11, content="Lyon is in south-east France.",
                              state=MessageState.COMPLETE)
    assert again.id > 21 and (again.version, again.version_count) == (2, 2)
    store.delete_conversation(2)
    assert db.execute("SELECT count(*) FROM messages WHERE conversation_id = 2").fetchone()[0] == 0


def test_each_step_runs_in_order_and_a_failed_step_leaves_the_old_version(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("power cut")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS[:2], broken])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 3)
    with pytest.raises(RuntimeError, match="power cut"):
        ChatStore(db_path)
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        assert "half_done" not in names and "messages" in names
    db.close()

    monkeypatch.undo()  # the real step 3 now finishes the job
    with ChatStore(db_path) as store:
        conv = store.create_conversation()
        store.add_message(conv.id, Role.USER, "after the retry")
        assert store.search("retry")[0].conversation_id == conv.id


def test_a_file_from_a_newer_hearth_is_refused_and_untouched(db_path: Path) -> None:
    ChatStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match="newer Hearth"):
        ChatStore(db_path)
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()


def test_a_damaged_file_is_reported_and_left_as_it_is(db_path: Path) -> None:
    garbage = b"this is not a database\n" * 200
    db_path.write_bytes(garbage)
    with pytest.raises(DatabaseUnreadable, match="left it untouched"):
        ChatStore(db_path)
    assert db_path.read_bytes() == garbage
