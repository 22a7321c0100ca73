"""The real window, offscreen, with the real worker and model, on a fresh conversation store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.chats import ChatStore
from app.ui.bridge import RuntimeBridge
from app.ui.main_window import MainWindow


@pytest.fixture
def chats_db(tmp_path: Path) -> Path:
    return tmp_path / "chats.sqlite3"


@pytest.fixture
def window(qtbot, chats_db: Path) -> Iterator[MainWindow]:  # type: ignore[no-untyped-def]
    bridge = RuntimeBridge()
    win = MainWindow(bridge)
    win.chat_page.set_store(ChatStore(chats_db))
    qtbot.addWidget(win)
    win.show()
    with qtbot.waitSignal(bridge.sig_ready, timeout=60_000):
        bridge.start()
    yield win
    bridge.close()
    win.chat_page.store.close()

