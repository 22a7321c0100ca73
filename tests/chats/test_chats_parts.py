"""Message parts (schema version 4): sources, tool calls and tool results stored with a message,
migrated into an existing file, and carried by delete/undo, branch, export and import."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from app.chats import (
    ChatImportError,
    ChatStore,
    InvalidOperation,
    MessageState,
    NotFound,
    PartKind,
    Role,
    schema,
)

SOURCE = {"n": 1, "collection": "notes", "file": "lyon.md", "page": None, "line": 12,
          "text": "Lyon sits where the Rhone meets the Saone.", "score": 3.5}
CALL = {"id": "call_1", "name": "weather", "arguments": json.dumps({"city": "Lyon"})}
RESULT = {"tool_call_id": "call_1", "name": "weather", "content": "sunny", "is_error": False}


def version_3_file(path: Path) -> None:
    """A file at schema version 3 (what the previous Hearth wrote), with a short chat in it."""
    db = sqlite3.connect(path, isolation_level=None)
    for step in schema.MIGRATIONS[:3]:
        step(db)
    db.execute("PRAGMA user_version = 3")
    db.execute("INSERT INTO conversations VALUES (1, 'Rivers', 10.0, 20.0, '', '{}', NULL)")
    db.execute("INSERT INTO messages VALUES (1, 1, NULL, 0, 1, 'user', 'Which rivers?',"
               " 'complete', '{}', 11.0)")
    db.execute("INSERT INTO messages VALUES (2, 1, 1, 1, 1, 'assistant', 'The Rhone [1].',"
               " 'complete', '{\"tokens\": 4}', 12.0)")
    db.close()


def test_a_version_3_file_gains_parts_with_its_data_intact(
    db_path: Path, open_store: Callable[[Path], ChatStore]
) -> None:
    version_3_file(db_path)
    store = open_store(db_path)
    db = store._conn()  # white-box: the file itself
    assert schema.schema_version(db) == schema.SCHEMA_VERSION == 4
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    columns = [r[1] for r in db.execute("PRAGMA table_info(message_parts)")]
    assert columns == ["message_id", "seq", "kind", "data"]
    assert [(m.id, m.content) for m in store.messages(1)] == [(1, "Which rivers?"),
                                                              (2, "The Rhone [1].")]
    assert store.parts(2) == []
    assert store.search("rhone")[0].message_id == 2  # the v3 search index still answers

    store.add_part(2, PartKind.SOURCE, SOURCE)
    store.close()
    with ChatStore(db_path) as again:  # reopening a v4 file changes nothing and keeps the part
        assert [(p.kind, p.data) for p in again.parts(2)] == [(PartKind.SOURCE, SOURCE)]


def test_parts_are_added_in_order_and_read_back_by_kind(store: ChatStore) -> None:
    conv = store.create_conversation()
    question = store.add_message(conv.id, Role.USER, "weather in Lyon?")
    reply = store.add_message(conv.id, Role.ASSISTANT, "", state=MessageState.STREAMING)
    added = store.add_parts(reply.id, [("tool_call", CALL), (PartKind.TOOL_RESULT, RESULT)])
    store.add_part(reply.id, "source", SOURCE)
    assert [(p.seq, p.kind) for p in added] == [(0, PartKind.TOOL_CALL), (1, PartKind.TOOL_RESULT)]
    parts = store.parts(reply.id)
    assert [(p.message_id, p.seq, p.kind, p.data) for p in parts] == [
        (reply.id, 0, PartKind.TOOL_CALL, CALL),
        (reply.id, 1, PartKind.TOOL_RESULT, RESULT),
        (reply.id, 2, PartKind.SOURCE, SOURCE),
    ]
    assert [p.data for p in store.parts(reply.id, PartKind.SOURCE)] == [SOURCE]
    assert store.parts(question.id) == []
    assert store.conversation_parts(conv.id) == {reply.id: parts}
    # a reply still streaming can take parts; finishing it keeps them
    store.finish_message(reply.id, tail="Sunny.")
    assert store.parts(reply.id) == parts


def test_bad_parts_change_nothing(store: ChatStore) -> None:
    conv = store.create_conversation()
    reply = store.add_message(conv.id, Role.ASSISTANT, "x")
    with pytest.raises(InvalidOperation, match="kind is one of source, tool_call, tool_result"):
        store.add_parts(reply.id, [("source", SOURCE), ("picture", {})])
    with pytest.raises(InvalidOperation, match="JSON"):
        store.add_part(reply.id, "source", {"score": float("nan")})
    with pytest.raises(NotFound):
        store.add_part(reply.id + 100, "source", SOURCE)
    assert store.parts(reply.id) == []  # the good first part of the failed batch is not there


def test_parts_go_with_delete_undo_and_branch(store: ChatStore) -> None:
    conv = store.create_conversation(title="Rivers")
    store.add_message(conv.id, Role.USER, "Which rivers?")
    reply = store.add_message(conv.id, Role.ASSISTANT, "The Rhone [1].")
    store.add_part(reply.id, "source", SOURCE)
    later = store.add_message(conv.id, Role.USER, "and?")
    store.add_part(later.id, "tool_call", CALL)

    copy = store.branch(reply.id)
    copied = store.conversation_parts(copy.id)
    assert [[p.data for p in parts] for parts in copied.values()] == [[SOURCE]]

    snapshot = store.delete_conversation(conv.id)
    db = store._conn()
    assert db.execute("SELECT count(*) FROM message_parts WHERE message_id IN (?, ?)",
                      (reply.id, later.id)).fetchone()[0] == 0  # removed with their messages
    store.restore(snapshot)
    assert [p.data for p in store.parts(reply.id)] == [SOURCE]
    assert [p.data for p in store.parts(later.id)] == [CALL]


def test_export_import_round_trip_carries_parts(store: ChatStore) -> None:
    conv = store.create_conversation(title="Rivers")
    store.add_message(conv.id, Role.USER, "Which rivers?")
    reply = store.add_message(conv.id, Role.ASSISTANT, "The Rhone [1] and the Saone [2].")
    second = {**SOURCE, "n": 2, "file": "atlas.pdf", "page": 3, "line": None}
    store.add_parts(reply.id, [("source", SOURCE), ("source", second),
                               ("tool_call", {**CALL, "api_key": "sk-secret"})])
    old = store.add_version(reply.id, content="Only the Rhone.", state=MessageState.COMPLETE)
    store.add_part(old.id, "tool_result", RESULT)

    text = store.export_json(conv.id)
    assert "sk-secret" not in text  # the export's secret filter covers parts too
    imported = store.import_json(text)
    assert store.export_json(imported.id) == text  # export -> import -> export is stable
    by_content = {m.content: m for m in store.snapshot(imported.id).messages}
    got = store.parts(by_content["The Rhone [1] and the Saone [2]."].id)
    assert [p.data for p in got] == [SOURCE, second, CALL]
    assert [p.data for p in store.parts(by_content["Only the Rhone."].id)] == [RESULT]

    store.switch_version(reply.id)
    markdown = store.export_markdown(conv.id)
    assert "Sources:\n\n1. lyon.md, line 12\n2. atlas.pdf, page 3" in markdown


def test_an_export_without_parts_is_unchanged_and_bad_parts_are_refused(store: ChatStore) -> None:
    conv = store.create_conversation()
    store.add_message(conv.id, Role.USER, "hello")
    assert '"parts"' not in store.export_json(conv.id)

    def file_with(parts: object) -> str:
        return json.dumps({"format": "hearth.conversation", "messages": [
            {"role": "assistant", "content": "hi", "parts": parts}]})

    before = len(store.conversations())
    for bad, message in [("x", r"messages\[0\].parts must be a list"),
                         ([1], r"messages\[0\].parts\[0\] must be an object"),
                         ([{"kind": "image"}], r"parts\[0\].kind must be one of"),
                         ([{"kind": "source", "data": []}], r"parts\[0\].data must be an object")]:
        with pytest.raises(ChatImportError, match=message):
            store.import_json(file_with(bad))
    assert len(store.conversations()) == before
    made = store.import_json(file_with([{"kind": "source", "data": SOURCE}]))
    (reply,) = store.messages(made.id)
    assert [p.data for p in store.parts(reply.id, "source")] == [SOURCE]
