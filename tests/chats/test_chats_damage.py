"""A damaged chat file never locks a person out: checked at open, moved aside, salvaged, told.

Each test builds a real history, damages the file the way disks and crashes do (zeroed pages,
random bytes over pages in use, truncation to 0 bytes) and opens it as the studio does.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from app.chats import (
    ChatStore,
    DatabaseDamaged,
    DatabaseUnreadable,
    MessageState,
    Role,
    SchemaTooNew,
    open_history,
    salvage,
    schema,
)
from app.chats.models import Message

PAGE = 4096
WHEN = datetime(2025, 3, 14, 9, 26, 53)


def build(path: Path, conversations: int = 30, turns: int = 12) -> dict[int, list[str]]:
    """A history of `conversations` chats with `turns` messages each (and a second version of
    each last reply), no free pages; returns `every_text` of it."""
    with ChatStore(path) as store:
        for c in range(conversations):
            conv = store.create_conversation(title=f"chat {c}", settings={"temperature": 0.5})
            for i in range(turns):
                role = Role.USER if i % 2 == 0 else Role.ASSISTANT
                store.add_message(conv.id, role, f"chat {c} turn {i} " + "words " * 60)
            # a second version of the last reply: versions are salvaged too
            last = store.messages(conv.id)[-1]
            store.add_version(last.id, content=f"chat {c} second version", state=MessageState.COMPLETE)
        texts = every_text(store)
    db = sqlite3.connect(path)
    db.execute("VACUUM")  # every page in use, so damage always lands on data
    db.close()
    return texts


def page_count(path: Path) -> int:
    return path.stat().st_size // PAGE


def zero_pages(path: Path, pages: list[int]) -> None:
    data = bytearray(path.read_bytes())
    for page in pages:
        data[page * PAGE:(page + 1) * PAGE] = bytes(PAGE)
    path.write_bytes(bytes(data))


def random_bytes_in_the_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = (page_count(path) // 2) * PAGE
    noise = random.Random(22).randbytes(2 * PAGE)
    data[start:start + len(noise)] = noise
    path.write_bytes(bytes(data))


def only_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """The salvage path that needs nothing but Python: no sqlite3 command-line tool."""
    monkeypatch.setattr(salvage.shutil, "which", lambda name: None)


def aside_files(folder: Path) -> list[Path]:
    """The damaged files moved aside (their -wal / -shm beside them not counted)."""
    return sorted(p for p in folder.iterdir()
                  if ".damaged-" in p.name and not p.name.endswith(("-wal", "-shm", "-journal")))


def every_text(store: ChatStore) -> dict[int, list[str]]:
    """Every version of every message, by conversation id."""
    return {c.id: sorted(m.content for m in store.snapshot(c.id).messages) for c in store.conversations()}


@pytest.mark.parametrize("damage", ["zeroed pages", "random bytes"])
def test_a_damaged_file_is_moved_aside_salvaged_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    only_python(monkeypatch)
    path = tmp_path / "chats.sqlite3"
    texts = build(path)
    pages = page_count(path)
    if damage == "zeroed pages":
        zero_pages(path, [pages // 3, pages // 2, 2 * pages // 3])
    else:
        random_bytes_in_the_middle(path)
    damaged = path.read_bytes()
    with pytest.raises(DatabaseDamaged):  # the store alone refuses it rather than writing into it
        ChatStore(path)
    assert path.read_bytes() == damaged

    store = open_history(path, now=lambda: WHEN)
    try:
        (aside,) = aside_files(tmp_path)
        assert aside.name == "chats.sqlite3.damaged-20250314-092653"
        assert aside.read_bytes() == damaged  # moved, never changed or deleted
        saved = every_text(store)
        total = sum(len(t) for t in texts.values())
        found = sum(len(t) for t in saved.values())
        assert 0.5 * total < found < total  # most of it came back; the damaged pages did not
        for cid, kept in saved.items():
            # every salvaged text is one that was written, in the conversation it belonged to
            assert set(kept) <= set(texts[cid])
            assert store.messages(cid) or not kept  # and each salvaged conversation shows
        assert store.notice is not None
        assert str(aside) in store.notice and "damaged" in store.notice
        assert f"{len(saved)} conversations" in store.notice and f"{found} messages" in store.notice
        # the new history is sound and takes new chats; search works on the salvaged text
        assert schema.quick_check(store._conn()) == []
        conv = store.create_conversation(title="after the rescue")
        store.add_message(conv.id, Role.USER, "still here")
        assert store.search("still")[0].conversation_id == conv.id
        assert store.search("words")
    finally:
        store.close()
    assert not list(tmp_path.glob(".salvage-*"))  # the scratch copy is gone


def test_a_salvaged_conversation_keeps_its_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only_python(monkeypatch)
    path = tmp_path / "chats.sqlite3"
    texts = build(path, conversations=3, turns=4)
    zero_pages(path, [page_count(path) - 1])  # the last page: the tail of the file
    with open_history(path, now=lambda: WHEN) as store:
        assert store.notice and "damaged" in store.notice
        whole = [c.id for c in store.conversations() if every_text(store)[c.id] == texts[c.id]]
        assert whole  # the conversations the damage missed came back with every version
        for cid in whole:
            last = store.messages(cid)[-1]
            assert last.content.endswith("second version") and last.version_count == 2


def test_a_file_truncated_to_nothing_is_damage_not_a_new_history(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    build(path, conversations=2)
    path.write_bytes(b"")
    with pytest.raises(DatabaseDamaged, match="empty"):
        ChatStore(path)
    with open_history(path, now=lambda: WHEN) as store:
        (aside,) = aside_files(tmp_path)
        assert aside.stat().st_size == 0  # kept, even empty
        assert store.conversations() == []
        assert store.notice is not None and "empty (0 bytes)" in store.notice and str(aside) in store.notice


def test_a_missing_file_is_a_new_history_without_a_notice(tmp_path: Path) -> None:
    path = tmp_path / "data" / "chats.sqlite3"
    with open_history(path) as store:
        assert store.notice is None and store.conversations() == []
    assert path.stat().st_size > 0  # created whole: an empty file can only be damage
    assert not aside_files(path.parent)


def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    path.write_bytes(b"this is not a database\n" * 200)
    with open_history(path, now=lambda: WHEN) as store:
        assert store.path == path and store.notice and "Nothing could be read" in store.notice
    assert aside_files(tmp_path)[0].read_bytes().startswith(b"this is not")


def test_the_wal_moves_with_the_damaged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits that live only in the -wal are part of the history: they move aside with the file
    (a -wal left behind would be replayed into the new file) and are salvaged."""
    only_python(monkeypatch)
    source = tmp_path / "live.sqlite3"
    build(source)
    with ChatStore(source) as writer:
        writer._conn().execute("PRAGMA wal_autocheckpoint = 0")
        late = writer.create_conversation(title="only in the wal")
        writer.add_message(late.id, Role.USER, "written after the last checkpoint")
        # the machine stops here: the files as they are on disk, the -wal not yet checkpointed
        path = tmp_path / "chats.sqlite3"
        shutil.copyfile(source, path)
        shutil.copyfile(source.with_name("live.sqlite3-wal"), path.with_name("chats.sqlite3-wal"))
    wal = path.with_name("chats.sqlite3-wal").read_bytes()
    pages = page_count(path)
    zero_pages(path, [pages // 3, pages // 2, 2 * pages // 3])
    with open_history(path, now=lambda: WHEN) as store:
        (aside,) = aside_files(tmp_path)
        assert aside.with_name(aside.name + "-wal").read_bytes() == wal  # moved with it, unchanged
        assert not path.with_name("chats.sqlite3-wal").exists() or path.with_name("chats.sqlite3-wal").read_bytes() != wal
        assert "only in the wal" in [c.title for c in store.conversations()]


def test_recover_raises_a_typed_error_not_a_raw_sqlite_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Damage the check does not see (it is a quick one) still gives a DatabaseDamaged."""
    path = tmp_path / "chats.sqlite3"
    build(path, conversations=4)
    with ChatStore(path) as store:  # a reply left streaming: recover() will write to it
        conv = store.conversations()[0]
        store.add_message(conv.id, Role.ASSISTANT, "cut off", state=MessageState.STREAMING)
    db = sqlite3.connect(path)
    db.execute("VACUUM")
    db.close()
    zero_pages(path, list(range(2, page_count(path))))
    monkeypatch.setattr(schema, "quick_check", lambda db: [])
    with pytest.raises(DatabaseDamaged, match="Restart Hearth") as raised:
        ChatStore(path)  # recover() finds the damage
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)


def test_a_newer_history_is_left_alone_and_the_session_writes_no_file(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    ChatStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    db.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    with open_history(path) as store:
        assert isinstance(store.path, Path) and str(store.path) == schema.MEMORY
        assert store.notice and "newer Hearth" in store.notice and "will not be kept" in store.notice
        conv = store.create_conversation()  # the session still chats
        store.add_message(conv.id, Role.USER, "hello")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no file anywhere for the session
    with pytest.raises(SchemaTooNew):
        ChatStore(path)  # untouched


def test_an_unreadable_folder_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with open_history(blocker / "chats.sqlite3") as store:  # its folder is a file
        assert store.notice and "will not be kept" in store.notice


def test_relink_hangs_orphans_on_the_nearest_kept_message() -> None:
    def msg(mid: int, parent: int | None, position: int, active: bool = True) -> Message:
        return Message(mid, 1, parent, position, Role.USER, str(mid), MessageState.COMPLETE, {}, 0.0, active)

    # 1 -> 2 -> 3(lost) -> 4 -> 5, and 6 is a second (inactive) version of 4
    linked = {m.id: m for m in salvage.relink([msg(1, None, 0), msg(2, 1, 1), msg(4, 3, 3), msg(6, 3, 3, False), msg(5, 4, 4)])}
    assert linked[4].parent_id == 2 and linked[6].parent_id == 2
    assert linked[4].active and not linked[6].active and linked[5].parent_id == 4
    # a parent that does not come before its child is not trusted either (no cycles)
    looped = {m.id: m for m in salvage.relink([msg(1, None, 0), msg(2, 3, 1), msg(3, 2, 2)])}
    assert looped[2].parent_id == 1 and looped[3].parent_id == 2


def _cli_recovers() -> bool:
    cli = shutil.which("sqlite3")
    if cli is None:
        return False
    out = subprocess.run([cli, ":memory:", ".recover"], capture_output=True, text=True, check=False)
    return "COMMIT" in out.stdout  # some builds lack sqlite_dbpage and stop after the pragmas


@pytest.mark.skipif(not _cli_recovers(), reason="no sqlite3 command-line tool with a working .recover")
def test_the_sqlite3_tool_recovers_when_it_can(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    build(path)
    zero_pages(path, [page_count(path) // 2])
    with open_history(path, now=lambda: WHEN) as store:
        assert store.conversations() and store.notice and "damaged" in store.notice


def test_unreadable_is_still_the_base_of_damage() -> None:
    assert issubclass(DatabaseDamaged, DatabaseUnreadable)
