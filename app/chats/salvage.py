"""Saving what can still be read from a damaged chat file into a fresh one.

Two ways to read the damaged file, best first:

- the sqlite3 command-line tool's `.recover`, when it is installed: it walks every page of the
  file, so it also finds rows that the damaged b-tree no longer leads to;
- Python alone (always available): the `conversations` and `messages` tables are read table by
  table and range by range in id order; a range that cannot be read is narrowed down until only
  the rows that cannot be read are left out.

Either way the rows are then checked one by one (a role, a state, JSON that parses) and put back
into a tree the store accepts: a message whose parent was lost hangs from the nearest earlier
message that was kept, and each turn keeps exactly one shown version. The damaged file itself is
only ever read, and only as a copy (see `open_history`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sqlite3
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.chats import records, schema, tree
from app.chats.models import Conversation, ConversationSnapshot, Message, MessageState, Role

log = logging.getLogger(__name__)

CHUNK = 256  # rows per read while the file reads cleanly
MAX_FAILED_READS = 20_000  # per table: past it the rest of the table is given up as unreadable
MAX_ID = 2**62
RECOVER_TIMEOUT_S = 600
RECOVERED_TITLE = "Recovered chat"


@dataclass
class SalvageReport:
    """What was saved, for the notice shown to the person."""

    conversations: int = 0
    messages: int = 0
    skipped_rows: int = 0  # rows that were read but made no sense (a role that is no role ...)
    unreadable: bool = False  # some part of the file could not be read at all
    method: str = "row by row"
    problems: list[str] = field(default_factory=list)


@dataclass
class _Budget:
    failed_reads: int = 0

    def fail(self) -> bool:
        """Count one failed read; False once the table is not worth more attempts."""
        self.failed_reads += 1
        return self.failed_reads <= MAX_FAILED_READS


def salvage(source: Path, dest: Path, *, scratch: Path) -> SalvageReport:
    """Copy what can be read from the database `source` into a new chat database at `dest`.

    `source` is a copy the caller can spare (SQLite may replay its WAL into it); `scratch` is an
    empty folder for the `.recover` output. Never raises for damage: what cannot be read is left
    out and reported.
    """
    report = SalvageReport()
    candidates: list[tuple[str, Path]] = []
    recovered = scratch / "recovered.sqlite3"
    if _recover_with_cli(source, recovered):
        candidates.append(("sqlite3 .recover", recovered))
    candidates.append(("row by row", source))
    conversations: dict[int, Conversation] = {}
    messages: dict[int, Message] = {}
    sequences: dict[str, int] = {}
    for method, path in candidates:
        found = _read_database(path, report)
        if found is None:
            continue
        conversations, messages, sequences = found
        report.method = method
        break
    db = schema.connect(dest)
    try:
        _write(db, conversations, messages, sequences, report)
    finally:
        db.close()
    return report


# -- reading ------------------------------------------------------------------------------------


def _recover_with_cli(source: Path, out: Path) -> bool:
    """Run `sqlite3 SOURCE .recover | sqlite3 OUT`; True when OUT holds a readable messages table."""
    cli = shutil.which("sqlite3")
    if cli is None:
        return False
    try:
        dump = subprocess.Popen([cli, str(source), ".recover"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert dump.stdout is not None
        load = subprocess.Popen([cli, str(out)], stdin=dump.stdout, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        dump.stdout.close()  # the loader owns the pipe now; the dumper sees EPIPE if it dies
        try:
            load.wait(timeout=RECOVER_TIMEOUT_S)
            dump.wait(timeout=10)
        except subprocess.TimeoutExpired:
            for proc in (dump, load):
                proc.kill()
                proc.wait()
            log.warning("sqlite3 .recover of %s took too long; reading it row by row", source)
            return False
    except OSError as exc:
        log.warning("sqlite3 .recover could not run (%s); reading row by row", exc)
        return False
    try:
        db = sqlite3.connect(out)
        try:
            db.execute("SELECT count(*) FROM messages").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        log.warning("sqlite3 .recover found no messages table in %s (%s)", source, exc)
        return False
    return True


def _read_database(
    path: Path, report: SalvageReport
) -> tuple[dict[int, Conversation], dict[int, Message], dict[str, int]] | None:
    """Every conversation and message that reads and makes sense; None if nothing opens."""
    try:
        db = sqlite3.connect(path, isolation_level=None)
        db.text_factory = lambda raw: raw.decode("utf-8", "replace")  # damaged text still reads
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        report.problems.append(f"{path.name}: {exc}")
        return None
    try:
        conv_columns = _columns(db, "conversations", records.CONVERSATION_COLUMNS)
        msg_columns = _columns(db, "messages", records.MESSAGE_COLUMNS)
        conversations: dict[int, Conversation] = {}
        for row in _scan(db, "conversations", conv_columns, report):
            conversation = _to_conversation(dict(zip(conv_columns, row, strict=True)))
            if conversation is None:
                report.skipped_rows += 1
            else:
                conversations[conversation.id] = conversation
        messages: dict[int, Message] = {}
        for row in _scan(db, "messages", msg_columns, report):
            message = _to_message(dict(zip(msg_columns, row, strict=True)))
            if message is None:
                report.skipped_rows += 1
            else:
                messages[message.id] = message
        if "parent_id" not in msg_columns:  # a version-1 file: turns were a flat list
            messages = _chain_flat(messages)
        return conversations, messages, _sequences(db)
    finally:
        db.close()


def _columns(db: sqlite3.Connection, table: str, wanted: str) -> list[str]:
    """The wanted columns the table has; all of them when its definition cannot be read."""
    names = [name.strip() for name in wanted.split(",")]
    try:
        present = {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}
    except sqlite3.Error:
        return names
    return [name for name in names if name in present] if present else names


def _scan(
    db: sqlite3.Connection, table: str, columns: list[str], report: SalvageReport
) -> Iterator[tuple[Any, ...]]:
    """Rows in id order, stepping over what cannot be read.

    Reads CHUNK rows past the last id read; a read that fails is retried with fewer rows down to
    one, and when even the next single row cannot be read the scan gallops ahead (1, 2, 4 ... ids)
    to the next place that reads, then reads the skipped span id range by id range (`_bisect`).
    """
    select = f"SELECT {', '.join(columns)} FROM {table}"
    try:
        known = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    except sqlite3.Error:
        known = (1,)  # the schema itself is damaged: try the table anyway
    if "id" not in columns or not known:
        report.unreadable = True
        return
    budget = _Budget()
    cursor, limit = -MAX_ID, CHUNK
    while True:
        try:
            rows = db.execute(f"{select} WHERE id > ? ORDER BY id LIMIT ?", (cursor, limit)).fetchall()
        except (sqlite3.Error, ValueError, OverflowError):
            if limit > 1:
                limit //= 2
                continue
            report.unreadable = True
            step = 1
            while True:
                if not budget.fail() or cursor + step > MAX_ID:
                    log.warning("salvage: gave up on the rest of %s after id %d", table, cursor)
                    return
                try:
                    db.execute(f"SELECT id FROM {table} WHERE id > ? ORDER BY id LIMIT 1",
                               (cursor + step,)).fetchall()
                    break
                except (sqlite3.Error, ValueError, OverflowError):
                    step *= 2
            yield from _bisect(db, select, cursor + 1, cursor + step, budget)
            cursor, limit = cursor + step, CHUNK
            continue
        if not rows:
            return
        yield from rows
        cursor = int(rows[-1][columns.index("id")])
        limit = min(CHUNK, limit * 2)


def _bisect(
    db: sqlite3.Connection, select: str, low: int, high: int, budget: _Budget
) -> Iterator[tuple[Any, ...]]:
    """The rows with low <= id <= high that can be read: halve every range that fails."""
    ranges = [(low, high)]
    while ranges:
        a, b = ranges.pop()
        try:
            rows = db.execute(f"{select} WHERE id BETWEEN ? AND ? ORDER BY id", (a, b)).fetchall()
        except (sqlite3.Error, ValueError, OverflowError):
            if a == b or not budget.fail():
                continue
            middle = (a + b) // 2
            ranges += [(middle + 1, b), (a, middle)]  # the lower half is read first
            continue
        yield from rows


def _sequences(db: sqlite3.Connection) -> dict[str, int]:
    """The highest ids ever handed out, so that the new file never reuses one."""
    try:
        return {str(name): int(seq) for name, seq in db.execute("SELECT name, seq FROM sqlite_sequence")
                if isinstance(seq, int)}
    except sqlite3.Error:
        return {}


# -- making sense of rows -----------------------------------------------------------------------


def _to_conversation(row: dict[str, Any]) -> Conversation | None:
    cid = row.get("id")
    if not _is_int(cid):
        return None
    created = _time(row.get("created_at"))
    return Conversation(
        id=cid,
        title=_text(row.get("title")) or RECOVERED_TITLE,
        created_at=created,
        updated_at=_time(row.get("updated_at"), created),
        system_prompt=_text(row.get("system_prompt")),
        settings=_json_object(row.get("settings")),
        model_id=row["model_id"] if isinstance(row.get("model_id"), str) else None,
    )


def _to_message(row: dict[str, Any]) -> Message | None:
    mid, cid, parent = row.get("id"), row.get("conversation_id"), row.get("parent_id")
    if not (_is_int(mid) and _is_int(cid)) or (parent is not None and not _is_int(parent)):
        return None
    try:
        role = Role(row.get("role"))
        state = MessageState(row.get("state", MessageState.COMPLETE.value))
    except ValueError:
        return None
    position = row.get("position")
    return Message(
        id=mid,
        conversation_id=cid,
        parent_id=parent,
        position=position if _is_int(position) and position >= 0 else 0,
        role=role,
        content=_text(row.get("content")),
        # nothing streams into a salvaged reply any more
        state=MessageState.INTERRUPTED if state is MessageState.STREAMING else state,
        meta=_json_object(row.get("meta")),
        created_at=_time(row.get("created_at")),
        active=row.get("active", 1) == 1,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return ""


def _time(value: Any, default: float = 0.0) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def _json_object(value: Any) -> dict[str, Any]:
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
        json.dumps(parsed, allow_nan=False)  # the store refuses NaN; so does the copy
    except (ValueError, TypeError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _chain_flat(messages: dict[int, Message]) -> dict[int, Message]:
    """Version-1 rows have no parent: each follows the one before it in its conversation."""
    chained: dict[int, Message] = {}
    last: dict[int, int] = {}
    for m in sorted(messages.values(), key=lambda m: (m.conversation_id, m.position, m.id)):
        chained[m.id] = replace(m, parent_id=last.get(m.conversation_id), active=True)
        last[m.conversation_id] = m.id
    return chained


# -- writing ------------------------------------------------------------------------------------


def relink(messages: list[Message]) -> list[Message]:
    """One conversation's surviving messages as a tree the store accepts.

    A parent that was lost (or that does not come before its child) is replaced by the nearest
    earlier kept message, preferring shown versions; each group of versions then shows exactly
    one (the one shown before if it survived, else the newest). Depths follow the parents.
    """
    ordered = sorted(messages, key=lambda m: (m.position, m.id))
    kept = {m.id: m for m in ordered}
    linked: list[Message] = []
    for m in ordered:
        parent = kept.get(m.parent_id) if m.parent_id is not None else None
        if m.parent_id is not None and (parent is None or parent.position >= m.position):
            earlier = [p for p in linked if p.position < m.position]
            shown = [p for p in earlier if p.active] or earlier
            m = replace(m, parent_id=max(shown, key=lambda p: (p.position, p.id)).id if shown else None)
        linked.append(m)
    fixed: list[Message] = []
    for group in tree.children(linked).values():
        chosen = next((m for m in reversed(group) if m.active), group[-1])
        fixed += [replace(m, active=m.id == chosen.id) for m in group]
    return fixed


def _write(
    db: sqlite3.Connection,
    conversations: dict[int, Conversation],
    messages: dict[int, Message],
    sequences: dict[str, int],
    report: SalvageReport,
) -> None:
    by_conversation: dict[int, list[Message]] = defaultdict(list)
    for m in messages.values():
        by_conversation[m.conversation_id].append(m)
    db.execute("BEGIN IMMEDIATE")  # one commit for the whole copy; each conversation a savepoint
    for cid in sorted(set(conversations) | set(by_conversation)):
        found = by_conversation.get(cid, [])
        conversation = conversations.get(cid) or _stand_in(cid, found)
        snapshot = ConversationSnapshot(conversation, tuple(relink(found)))
        db.execute("SAVEPOINT one_conversation")
        try:
            records.insert_snapshot(db, snapshot, keep_ids=True)
        except (sqlite3.Error, ValueError) as exc:
            db.execute("ROLLBACK TO one_conversation")
            report.skipped_rows += 1 + len(found)
            log.warning("salvage: conversation %d could not be written back (%s)", cid, exc)
        else:
            report.conversations += 1
            report.messages += len(found)
        db.execute("RELEASE one_conversation")
    for table in ("conversations", "messages"):
        if table in sequences:
            db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?",
                       (sequences[table], table))
            db.execute("INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? WHERE NOT EXISTS"
                       " (SELECT 1 FROM sqlite_sequence WHERE name = ?)",
                       (table, sequences[table], table))
    db.execute("COMMIT")


def _stand_in(cid: int, found: list[Message]) -> Conversation:
    """A conversation row for messages whose own conversation row was lost."""
    times = [m.created_at for m in found] or [0.0]
    return Conversation(cid, RECOVERED_TITLE, min(times), max(times))
