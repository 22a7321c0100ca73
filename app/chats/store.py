"""`ChatStore`: the one object through which Hearth reads and writes conversations.

It lives in the GUI process (a worker crash never touches it) and belongs to the thread that
opened it. Every write is one SQLite transaction, so a crash at any instant leaves either the
state before the call or the state after it. Streamed text is appended in place every ~0.5 s, so
a killed app loses at most the text of the last half second, and the next open marks the reply
interrupted with its partial text kept (`recover`).

Message versions follow the tree described in `models`: regenerating a reply or editing a
message adds a sibling and makes it active; nothing said before is ever overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.chats import records, schema, transfer, tree
from app.chats import search as fts
from app.chats.errors import DatabaseDamaged, InvalidOperation
from app.chats.models import (
    Conversation,
    ConversationSnapshot,
    Message,
    MessagePart,
    MessageState,
    PartKind,
    Role,
    SearchHit,
)

log = logging.getLogger(__name__)


class _Unset:
    """Marks an `update_conversation` argument that was not given (None is a real model_id)."""


UNSET: Any = _Unset()


class ChatStore:
    """The conversation database at `path`; call `close()` (or use `with`) when done."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        recover: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open, migrate and (unless `recover=False`) recover the store.

        Recovery assumes no other process is streaming into this file right now, which holds for
        the GUI, the one owner of the chat history.
        """
        self.path = Path(path)
        self._clock = clock
        # What opening this history had to do that the person must hear about (a damaged file
        # moved aside and salvaged, a history that could not be opened); set by `open_history`.
        self.notice: str | None = None
        self._db: sqlite3.Connection | None = schema.connect(self.path)
        self._db.row_factory = sqlite3.Row
        if recover:
            try:
                self.recover()
            except BaseException:
                self.close()
                raise

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; the last connection out checkpoints the WAL into the file."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> ChatStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def backup_to(self, target: str | os.PathLike[str]) -> None:
        """A consistent copy of the whole history at `target`, through SQLite's backup API
        (safe while this connection is in use), as a single file with no `-wal` beside it."""
        dest = sqlite3.connect(target)
        try:
            self._conn().backup(dest)
            dest.execute("PRAGMA journal_mode = DELETE")
        finally:
            dest.close()

    def recover(self) -> list[int]:
        """Mark replies left `streaming` by a killed app as `interrupted`, keeping their text."""
        with self._write() as db:
            ids = [row[0] for row in db.execute(
                "SELECT id FROM messages WHERE state = 'streaming' ORDER BY id")]
            db.execute("UPDATE messages SET state = 'interrupted' WHERE state = 'streaming'")
        if ids:
            log.warning("recovered %d reply(ies) cut off by an unclean exit: %s", len(ids), ids)
        return ids

    # -- conversations --------------------------------------------------------------------------

    def create_conversation(
        self,
        *,
        title: str = "New chat",
        system_prompt: str = "",
        settings: dict[str, Any] | None = None,
        model_id: str | None = None,
    ) -> Conversation:
        now = self._clock()
        with self._write() as db:
            cid = records.insert_conversation(db, Conversation(
                0, title, now, now, system_prompt, dict(settings or {}), model_id))
            return records.get_conversation(db, cid)

    def conversation(self, conversation_id: int) -> Conversation:
        return records.get_conversation(self._conn(), conversation_id)

    def conversations(self, *, limit: int | None = None) -> list[Conversation]:
        """Newest activity first."""
        found = self._conn().execute(
            f"SELECT {records.CONVERSATION_COLUMNS} FROM conversations"
            " ORDER BY updated_at DESC, id DESC LIMIT ?", (-1 if limit is None else limit,))
        return [records.to_conversation(row) for row in found]

    def rename_conversation(self, conversation_id: int, title: str) -> Conversation:
        return self.update_conversation(conversation_id, title=title)

    def update_conversation(
        self,
        conversation_id: int,
        *,
        title: str = UNSET,
        system_prompt: str = UNSET,
        settings: dict[str, Any] = UNSET,
        model_id: str | None = UNSET,
    ) -> Conversation:
        """Change the given fields only; `model_id=None` clears the model."""
        changes: dict[str, Any] = {
            "title": title, "system_prompt": system_prompt, "model_id": model_id,
            "settings": UNSET if settings is UNSET else records.dumps(settings, "settings"),
        }
        changes = {k: v for k, v in changes.items() if v is not UNSET}
        with self._write() as db:
            records.get_conversation(db, conversation_id)
            if changes:
                assignments = ", ".join(f"{column} = ?" for column in changes)
                db.execute(
                    f"UPDATE conversations SET {assignments}, updated_at = ? WHERE id = ?",
                    (*changes.values(), self._clock(), conversation_id))
            return records.get_conversation(db, conversation_id)

    def delete_conversation(self, conversation_id: int) -> ConversationSnapshot:
        """Delete it with every message; the returned snapshot is what `restore` needs to undo."""
        with self._write() as db:
            snapshot = records.load_snapshot(db, conversation_id)
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        return snapshot

    def restore(self, snapshot: ConversationSnapshot) -> Conversation:
        """Undo a delete: put the conversation back with the same ids (they are never reused)."""
        try:
            with self._write() as db:
                cid = records.insert_snapshot(db, snapshot, keep_ids=True)
                return records.get_conversation(db, cid)
        except sqlite3.IntegrityError as exc:
            raise InvalidOperation(
                f"Conversation {snapshot.conversation.id} cannot be restored: its ids are in use"
                f" (was it restored already?). Nothing was changed. ({exc})") from exc

    def branch(self, message_id: int, *, title: str | None = None) -> Conversation:
        """A new conversation holding the path up to and including `message_id`.

        Only that path is copied (one version per turn); a reply still streaming is copied as
        interrupted, since nothing will stream into the copy.
        """
        now = self._clock()
        with self._write() as db:
            source_id = records.get_message_row(db, message_id)["conversation_id"]
            source = records.load_snapshot(db, source_id)
            chain = [
                dataclasses.replace(m, active=True, state=_settled(m.state))
                for m in tree.ancestry(source.messages, message_id)
            ]
            old = source.conversation
            copy = Conversation(0, title or f"{old.title} (branch)", now, now,
                                old.system_prompt, old.settings, old.model_id)
            branch = ConversationSnapshot(copy, tuple(chain), source.parts)
            cid = records.insert_snapshot(db, branch, keep_ids=False)
            return records.get_conversation(db, cid)

    # -- messages -------------------------------------------------------------------------------

    def messages(self, conversation_id: int) -> list[Message]:
        """The transcript as shown: the active version of each turn, in order."""
        return tree.active_path(records.load_snapshot(self._conn(), conversation_id).messages)

    def message(self, message_id: int) -> Message:
        return records.get_message(self._conn(), message_id)

    def versions(self, message_id: int) -> list[Message]:
        """Every version of the turn `message_id` belongs to, oldest first."""
        db = self._conn()
        row = records.get_message_row(db, message_id)
        found = db.execute(
            f"SELECT {records.MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?"
            " AND parent_id IS ? ORDER BY id", (row["conversation_id"], row["parent_id"]))
        return tree.number_versions(records.to_message(r) for r in found)

    def add_message(
        self,
        conversation_id: int,
        role: Role,
        content: str = "",
        *,
        state: MessageState = MessageState.COMPLETE,
        meta: dict[str, Any] | None = None,
    ) -> Message:
        """Append after the last shown message; use `state=STREAMING` for a reply being written."""
        with self._write() as db:
            records.get_conversation(db, conversation_id)
            tail = db.execute(
                """
                WITH RECURSIVE path (id, position) AS (
                    SELECT id, position FROM messages
                     WHERE conversation_id = ? AND parent_id IS NULL AND active = 1
                    UNION ALL
                    SELECT m.id, m.position FROM messages m JOIN path ON m.parent_id = path.id
                     WHERE m.active = 1
                )
                SELECT id, position FROM path ORDER BY position DESC LIMIT 1""",
                (conversation_id,)).fetchone()
            mid = records.insert_message(db, Message(
                0, conversation_id, tail[0] if tail else None, tail[1] + 1 if tail else 0,
                Role(role), content, MessageState(state), dict(meta or {}), self._clock()))
            self._touch(db, conversation_id)
            return records.get_message(db, mid)

    def append_text(self, message_id: int, text: str) -> None:
        """Add streamed text to a `streaming` message: one small commit, no fsync (see `schema`)."""
        if not text:
            return
        db = self._conn()
        db.execute("PRAGMA synchronous = NORMAL")
        try:
            cursor = db.execute(
                "UPDATE messages SET content = content || ? WHERE id = ? AND state = 'streaming'",
                (text, message_id))
        finally:
            db.execute("PRAGMA synchronous = FULL")
        if cursor.rowcount != 1:
            state = records.get_message_row(db, message_id)["state"]  # NotFound if it is gone
            raise InvalidOperation(
                f"Message {message_id} is {state}, not streaming; its text was not changed.")

    def finish_message(
        self,
        message_id: int,
        state: MessageState = MessageState.COMPLETE,
        *,
        tail: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Message:
        """End a stream as complete or interrupted, with its last text and figures, atomically.

        `meta` is merged into the message's meta (tokens, tokens/s, ttft ...).
        """
        state = MessageState(state)
        if state is MessageState.STREAMING:
            raise InvalidOperation("A message is finished as complete or interrupted.")
        with self._write() as db:
            row = records.get_message_row(db, message_id)
            if row["state"] != MessageState.STREAMING.value:
                raise InvalidOperation(
                    f"Message {message_id} is already {row['state']}; it was not changed.")
            merged = {**json.loads(row["meta"]), **(meta or {})}
            db.execute(
                "UPDATE messages SET content = content || ?, state = ?, meta = ? WHERE id = ?",
                (tail, state.value, records.dumps(merged, "meta"), message_id))
            self._touch(db, row["conversation_id"])
            return records.get_message(db, message_id)

    def add_version(
        self,
        message_id: int,
        *,
        content: str = "",
        state: MessageState = MessageState.STREAMING,
        meta: dict[str, Any] | None = None,
    ) -> Message:
        """A new, active version of the turn `message_id` belongs to (regenerate a reply).

        The turns after the old version stay attached to it and come back with `switch_version`.
        """
        with self._write() as db:
            row = records.get_message_row(db, message_id)
            records.deactivate_siblings(db, row)
            mid = records.insert_message(db, Message(
                0, row["conversation_id"], row["parent_id"], row["position"], Role(row["role"]),
                content, MessageState(state), dict(meta or {}), self._clock()))
            self._touch(db, row["conversation_id"])
            return records.get_message(db, mid)

    def edit_message(self, message_id: int, content: str) -> Message:
        """Edit and re-run: the edited text becomes a new version and the transcript ends there.

        Nothing is deleted: the original message and every turn after it remain as the
        previous version (`versions`, `switch_version`).
        """
        return self.add_version(message_id, content=content, state=MessageState.COMPLETE)

    def switch_version(self, message_id: int) -> list[Message]:
        """Show `message_id` (and the turns below it); returns the new transcript.

        Its ancestors are made active too, so this also reveals a search hit in an old version.
        """
        with self._write() as db:
            row = records.get_message_row(db, message_id)
            current: sqlite3.Row | None = row
            while current is not None:
                records.deactivate_siblings(db, current)
                db.execute("UPDATE messages SET active = 1 WHERE id = ?", (current["id"],))
                parent = current["parent_id"]
                current = None if parent is None else records.get_message_row(db, parent)
            self._touch(db, row["conversation_id"])
            return tree.active_path(records.load_snapshot(db, row["conversation_id"]).messages)

    # -- message parts --------------------------------------------------------------------------

    def add_parts(
        self, message_id: int, parts: Iterable[tuple[PartKind | str, dict[str, Any]]]
    ) -> list[MessagePart]:
        """Append `(kind, data)` parts to a message, in order, in one transaction.

        Sources given to the model, tool calls it made and their results (`PartKind`); `data` is
        a JSON object. Raises NotFound for a missing message, InvalidOperation for an unknown kind
        or data that is not JSON; then nothing is added.
        """
        with self._write() as db:
            records.get_message_row(db, message_id)
            return [records.insert_part(db, message_id, kind, data) for kind, data in parts]

    def add_part(self, message_id: int, kind: PartKind | str, data: dict[str, Any]) -> MessagePart:
        """Append one part (see `add_parts`)."""
        return self.add_parts(message_id, [(kind, data)])[0]

    def parts(self, message_id: int, kind: PartKind | str | None = None) -> list[MessagePart]:
        """A message's parts in the order they were added, optionally of one kind only."""
        db = self._conn()
        row = records.get_message_row(db, message_id)
        found = records.load_parts(db, row["conversation_id"], message_id=message_id)
        wanted = None if kind is None else records.part_kind(kind)
        return [p for p in found if wanted is None or p.kind is wanted]

    def conversation_parts(self, conversation_id: int) -> dict[int, list[MessagePart]]:
        """Every part of a conversation's messages (all versions), by message id: one query for
        a whole transcript."""
        records.get_conversation(self._conn(), conversation_id)
        grouped: dict[int, list[MessagePart]] = {}
        for part in records.load_parts(self._conn(), conversation_id):
            grouped.setdefault(part.message_id, []).append(part)
        return grouped

    # -- search and transfer --------------------------------------------------------------------

    def search(
        self, query: str, *, limit: int = 50, marks: tuple[str, str] = ("[", "]")
    ) -> list[SearchHit]:
        """Conversations whose messages match every word of `query`, best first, with a snippet
        whose matches are wrapped in `marks`."""
        return fts.search(self._conn(), query, limit=limit, marks=marks)

    def snapshot(self, conversation_id: int) -> ConversationSnapshot:
        return records.load_snapshot(self._conn(), conversation_id)

    def export_markdown(self, conversation_id: int) -> str:
        return transfer.to_markdown(self.snapshot(conversation_id))

    def export_json(self, conversation_id: int) -> str:
        """Every version of every message; `import_json` of it gives an equal conversation."""
        return transfer.to_json(self.snapshot(conversation_id))

    def import_json(self, text: str | bytes) -> Conversation:
        """Add the exported conversation as a new one; raises ChatImportError, changing nothing,
        on a file that is not one."""
        snapshot = transfer.from_json(text, now=self._clock())
        with self._write() as db:
            cid = records.insert_snapshot(db, snapshot, keep_ids=False)
            return records.get_conversation(db, cid)

    # -- internals ------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise InvalidOperation(f"The chat store {self.path} is closed.")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front so a second
        process waits (busy timeout) instead of failing half-way."""
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            if schema.is_damage(exc):  # a typed error the caller can act on, never a raw one
                raise DatabaseDamaged(
                    f"The chat file {self.path} is damaged ({exc}); nothing was changed."
                    " Restart Hearth to move it aside and save what can be read.") from exc
            raise

    def _touch(self, db: sqlite3.Connection, conversation_id: int) -> None:
        db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?",
                   (self._clock(), conversation_id))


def _settled(state: MessageState) -> MessageState:
    """A copy is never streamed into, so a streaming original is copied as interrupted."""
    return MessageState.INTERRUPTED if state is MessageState.STREAMING else state
