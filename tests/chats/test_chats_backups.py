"""Rolling daily backups (SQLite backup API) and restoring one."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from app.chats import ChatStore, DatabaseDamaged, Role, backups, open_history

DAY = datetime(2025, 3, 1, 8, 0, 0)


def history(path: Path, titles: list[str]) -> None:
    with ChatStore(path) as store:
        for title in titles:
            conv = store.create_conversation(title=title)
            store.add_message(conv.id, Role.USER, f"hello from {title}")


def test_one_backup_a_day_at_the_first_open_and_the_last_seven_kept(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    history(path, ["first"])
    folder = tmp_path / "backups"
    for day in range(9):
        with open_history(path, now=lambda d=day: DAY + timedelta(days=d)) as store:
            store.create_conversation(title=f"day {day}")
        with open_history(path, now=lambda d=day: DAY + timedelta(days=d, hours=5)):
            pass  # a second open the same day makes no second backup
    found = backups.list_backups(folder)
    assert [b.day.day for b in found] == [9, 8, 7, 6, 5, 4, 3]  # newest first, seven kept
    assert len(list(folder.iterdir())) == 7
    # each backup is the history as it was at that day's first open
    assert found[0].conversations == 1 + 8 and found[-1].conversations == 1 + 2
    assert found[0].describe() == "2025-03-09 · 9 conversations"
    assert not list(folder.glob("*-wal"))  # single files, readable on their own


def test_an_empty_history_is_not_backed_up(tmp_path: Path) -> None:
    with open_history(tmp_path / "chats.sqlite3", now=lambda: DAY):
        pass
    assert backups.list_backups(tmp_path / "backups") == []


def test_restoring_moves_the_current_history_aside_first(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    history(path, ["kept in the backup"])
    with open_history(path, now=lambda: DAY) as store:
        store.create_conversation(title="made after the backup")
    (backup,) = backups.list_backups(tmp_path / "backups")
    moved = backups.restore(backup.path, path, now=DAY + timedelta(hours=1))
    assert moved.name == "chats.sqlite3.before-restore-20250301-090000"
    with ChatStore(moved) as before:
        assert {c.title for c in before.conversations()} == {"kept in the backup", "made after the backup"}
    with ChatStore(path) as store:
        assert [c.title for c in store.conversations()] == ["kept in the backup"]
    assert backup.path.exists()  # still there to restore again


def test_a_damaged_backup_is_refused_and_nothing_moves(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    history(path, ["current"])
    bad = tmp_path / "backups" / "chats-2025-03-01.sqlite3"
    bad.parent.mkdir()
    bad.write_bytes(b"garbage" * 1000)
    assert backups.list_backups(bad.parent)[0].describe() == "2025-03-01 · cannot be read"
    with pytest.raises(DatabaseDamaged):
        backups.restore(bad, path, now=DAY)
    with ChatStore(path) as store:
        assert [c.title for c in store.conversations()] == ["current"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "chats.sqlite3"]
