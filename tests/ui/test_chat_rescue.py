"""The studio with a damaged chat history: it starts, says what was saved and where the original
is; and Settings restores a daily backup."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from app.chats import ChatStore, Role, open_history
from app.paths import paths
from app.ui.bridge import RuntimeBridge
from app.ui.main_window import MainWindow

PAGE = 4096


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path))
    paths().ensure()
    return tmp_path


@pytest.fixture
def open_window(qtbot) -> Iterator:  # type: ignore[no-untyped-def]
    """Builds the window as app.py does (the chat page opens the history itself); no worker."""
    made: list[MainWindow] = []

    def _open() -> MainWindow:
        win = MainWindow(RuntimeBridge())
        qtbot.addWidget(win)
        made.append(win)
        return win

    yield _open
    for win in made:
        win.bridge.close()
        win.chat_page.store.close()


def history(path: Path, conversations: int) -> None:
    with ChatStore(path) as store:
        for c in range(conversations):
            conv = store.create_conversation(title=f"chat {c}")
            for i in range(6):
                store.add_message(conv.id, Role.USER if i % 2 == 0 else Role.ASSISTANT, f"chat {c} turn {i} " + "words " * 80)


def test_a_damaged_history_is_salvaged_and_the_window_says_so(qtbot, home: Path, open_window) -> None:  # type: ignore[no-untyped-def]
    path = paths().chats_db
    history(path, 20)
    data = bytearray(path.read_bytes())
    middle = (len(data) // PAGE // 2) * PAGE
    data[middle:middle + 2 * PAGE] = bytes(2 * PAGE)  # two zeroed pages
    path.write_bytes(bytes(data))

    win = open_window()
    win.show()
    qtbot.waitUntil(lambda: win.notice_box is not None and win.notice_box.isVisible())
    text = win.notice_box.text()
    (aside,) = [p for p in path.parent.iterdir() if ".damaged-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert str(aside) in text and "conversations" in text and "messages were saved" in text
    assert win.chat_page.store.path == path and win.chat_page.store.conversations()  # chats work on
    box = win.notice_box
    box.accept()
    win.show_store_notice()
    assert win.notice_box is box  # told once


def test_settings_restores_a_daily_backup(qtbot, home: Path, open_window) -> None:  # type: ignore[no-untyped-def]
    path = paths().chats_db
    history(path, 2)
    yesterday = datetime.now() - timedelta(days=1)
    open_history(path, now=lambda: yesterday).close()  # yesterday's first open made a backup
    with ChatStore(path) as store:
        store.create_conversation(title="made today")

    win = open_window()
    assert "made today" in [c.title for c in win.chat_page.store.conversations()]
    page = win.settings_page
    dialog = page.choose_backup()
    assert dialog.list.count() == 2  # yesterday's and today's (made at this open)
    assert dialog.list.item(1).text() == f"{yesterday.date().isoformat()} · 2 conversations"
    dialog.list.setCurrentRow(1)
    with qtbot.waitSignal(page.sig_restore_backup):
        dialog.restore_button.click()
    titles = [c.title for c in win.chat_page.store.conversations()]
    assert "made today" not in titles and sorted(titles) == ["chat 0", "chat 1"]
    (moved,) = path.parent.glob("chats.sqlite3.before-restore-*[0-9]")
    assert str(moved) in page.status.text()
    with ChatStore(moved) as before:
        assert "made today" in [c.title for c in before.conversations()]
