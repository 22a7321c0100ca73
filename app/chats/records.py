"""Record-level helpers of the store: converting rows to dataclasses and inserting trees.

Separate from `store` to keep both short. Every function takes the open connection; the ones that
write expect to run inside the caller's transaction and never commit.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any

from app.chats import tree
from app.chats.errors import InvalidOperation, NotFound
from app.chats.models import (
    Conversation,
    ConversationSnapshot,
    Message,
    MessagePart,
    MessageState,
    PartKind,
    Role,
)

MESSAGE_COLUMNS = (
    "id, conversation_id, parent_id, position, active, role, content, state, meta, created_at"
)
CONVERSATION_COLUMNS = "id, title, created_at, updated_at, system_prompt, settings, model_id"


def dumps(value: dict[str, Any], what: str) -> str:
    if not isinstance(value, dict):
        raise InvalidOperation(f"{what} must be a dict, not {type(value).__name__}.")
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidOperation(f"{what} must hold only JSON values: {exc}.") from exc


def to_conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(row["id"], row["title"], row["created_at"], row["updated_at"],
                        row["system_prompt"], json.loads(row["settings"]), row["model_id"])


def to_message(row: sqlite3.Row) -> Message:
    return Message(row["id"], row["conversation_id"], row["parent_id"], row["position"],
                   Role(row["role"]), row["content"], MessageState(row["state"]),
                   json.loads(row["meta"]), row["created_at"], bool(row["active"]))


def to_part(row: sqlite3.Row) -> MessagePart:
    return MessagePart(row["message_id"], row["seq"], PartKind(row["kind"]), json.loads(row["data"]))


def part_kind(kind: PartKind | str) -> PartKind:
    try:
        return PartKind(kind)
    except ValueError:
        allowed = ", ".join(k.value for k in PartKind)
        raise InvalidOperation(f"A message part's kind is one of {allowed}, not {kind!r}.") from None


def get_conversation(db: sqlite3.Connection, conversation_id: int) -> Conversation:
    found = fetch_one(
        db, f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?", conversation_id)
    if found is None:
        raise NotFound(f"Conversation {conversation_id} does not exist (was it deleted?).")
    return to_conversation(found)


def get_message_row(db: sqlite3.Connection, message_id: int) -> sqlite3.Row:
    found = fetch_one(db, f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", message_id)
    if found is None:
        raise NotFound(f"Message {message_id} does not exist (was its conversation deleted?).")
    return found


def get_message(db: sqlite3.Connection, message_id: int) -> Message:
    """The message with its version number among its siblings."""
    return with_version(db, to_message(get_message_row(db, message_id)))


def fetch_one(db: sqlite3.Connection, sql: str, key: int) -> sqlite3.Row | None:
    found: sqlite3.Row | None = db.execute(sql, (key,)).fetchone()
    return found


def with_version(db: sqlite3.Connection, message: Message) -> Message:
    count, before = db.execute(
        "SELECT count(*), sum(id < ?) FROM messages WHERE conversation_id = ? AND parent_id IS ?",
        (message.id, message.conversation_id, message.parent_id)).fetchone()
    return dataclasses.replace(message, version=before + 1, version_count=count)


def load_snapshot(db: sqlite3.Connection, conversation_id: int) -> ConversationSnapshot:
    conversation = get_conversation(db, conversation_id)
    found = db.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?"
        " ORDER BY position, id", (conversation_id,))
    messages = tuple(tree.number_versions(to_message(r) for r in found))
    return ConversationSnapshot(conversation, messages, tuple(load_parts(db, conversation_id)))


def load_parts(
    db: sqlite3.Connection, conversation_id: int, *, message_id: int | None = None
) -> list[MessagePart]:
    """The parts of one conversation's messages (or of one message), by message id then seq."""
    found = db.execute(
        "SELECT p.message_id, p.seq, p.kind, p.data FROM message_parts p"
        " JOIN messages m ON m.id = p.message_id WHERE m.conversation_id = ?"
        " AND (? IS NULL OR p.message_id = ?) ORDER BY p.message_id, p.seq",
        (conversation_id, message_id, message_id))
    return [to_part(row) for row in found]


def insert_part(db: sqlite3.Connection, message_id: int, kind: PartKind | str,
                data: dict[str, Any], *, seq: int | None = None) -> MessagePart:
    """Add a part after the message's last one (or at `seq`, when copying a snapshot)."""
    kind = part_kind(kind)
    if seq is None:
        seq = db.execute("SELECT coalesce(max(seq) + 1, 0) FROM message_parts"
                         " WHERE message_id = ?", (message_id,)).fetchone()[0]
    db.execute("INSERT INTO message_parts (message_id, seq, kind, data) VALUES (?, ?, ?, ?)",
               (message_id, seq, kind.value, dumps(data, "A message part's data")))
    return MessagePart(message_id, int(seq), kind, dict(data))


def deactivate_siblings(db: sqlite3.Connection, row: sqlite3.Row) -> None:
    db.execute("UPDATE messages SET active = 0 WHERE conversation_id = ? AND parent_id IS ?"
               " AND active = 1", (row["conversation_id"], row["parent_id"]))


def insert_conversation(
    db: sqlite3.Connection, c: Conversation, *, keep_id: bool = False
) -> int:
    cursor = db.execute(
        "INSERT INTO conversations (id, title, created_at, updated_at, system_prompt, settings,"
        " model_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (c.id if keep_id else None, c.title, c.created_at, c.updated_at, c.system_prompt,
         dumps(c.settings, "settings"), c.model_id))
    return int(cursor.lastrowid or 0)


def insert_message(db: sqlite3.Connection, m: Message, *, keep_id: bool = False) -> int:
    cursor = db.execute(
        f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (m.id if keep_id else None, m.conversation_id, m.parent_id, m.position, int(m.active),
         m.role.value, m.content, m.state.value, dumps(m.meta, "meta"), m.created_at))
    return int(cursor.lastrowid or 0)


def insert_snapshot(
    db: sqlite3.Connection, snapshot: ConversationSnapshot, *, keep_ids: bool
) -> int:
    """Insert a whole conversation; positions are recomputed from the parents, not trusted."""
    cid = insert_conversation(db, snapshot.conversation, keep_id=keep_ids)
    new_ids: dict[int, tuple[int, int]] = {}  # snapshot id -> (stored id, position)
    for m in tree.parents_first(snapshot.messages):
        parent = None if m.parent_id is None else new_ids[m.parent_id]
        position = 0 if parent is None else parent[1] + 1
        stored = dataclasses.replace(m, conversation_id=cid, position=position,
                                     parent_id=None if parent is None else parent[0])
        new_ids[m.id] = (insert_message(db, stored, keep_id=keep_ids), position)
    for part in snapshot.parts:
        if part.message_id in new_ids:  # a branch copies one path: the parts of the rest stay
            insert_part(db, new_ids[part.message_id][0], part.kind, part.data, seq=part.seq)
    return cid
