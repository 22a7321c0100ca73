"""The real window, offscreen, with the real worker and model: chat, stop, and a worker killed mid-reply.

The `window` fixture (tests/ui/conftest.py) opens it on a fresh conversation store."""

from __future__ import annotations

import os
import signal

from PySide6.QtCore import Qt

from app.ui.chat.transcript import Roles
from app.ui.main_window import MainWindow

LONG = "Write a long story about a lighthouse keeper and a storm."


def _type_and_send(qtbot, win: MainWindow, text: str) -> None:  # type: ignore[no-untyped-def]
    page = win.chat_page
    qtbot.keyClicks(page.input, text)
    qtbot.mouseClick(page.send_button, Qt.MouseButton.LeftButton)


def _reply(win: MainWindow) -> tuple[str, str]:
    model = win.chat_page.transcript
    index = model.index(model.rowCount() - 1)
    return index.data(Roles.TEXT), index.data(Roles.STATE)


def test_a_reply_streams_into_the_transcript(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    page = window.chat_page
    page.sampling = page.sampling.__class__(temperature=0.0, max_tokens=48)
    updates: list[int] = []
    page.transcript.dataChanged.connect(lambda first, last, roles: updates.append(last.row() - first.row() + 1))
    _type_and_send(qtbot, window, "Name three colors.")
    assert page.transcript.rowCount() == 2 and page.send_button.text() == "Stop"
    qtbot.waitUntil(lambda: _reply(window)[1] == "complete", timeout=120_000)
    text, _ = _reply(window)
    assert text.strip()
    assert len(updates) >= 3 and set(updates) == {1}  # token by token, one row at a time
    assert page.send_button.text() == "Send" and page.input.toPlainText() == ""
    qtbot.waitUntil(lambda: "llama.cpp" in window.model_label.text(), timeout=10_000)  # after "Loading SmolLM2…"
    assert "SmolLM2" in window.model_label.text()
    assert "Q4_1" in window.plan_label.text() and "ctx" in window.plan_label.text()  # the plan, in one line
    assert "Context length" in window.plan_label.details()  # and why, on click
    assert "tok/s" in window.speed_label.text()


def test_stop_ends_the_reply(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    page = window.chat_page
    page.sampling = page.sampling.__class__(max_tokens=2000)
    _type_and_send(qtbot, window, LONG)
    qtbot.waitUntil(lambda: len(_reply(window)[0]) > 20, timeout=120_000)
    qtbot.mouseClick(page.send_button, Qt.MouseButton.LeftButton)  # the button now says Stop
    qtbot.waitUntil(lambda: not page.busy, timeout=5_000)
    text, state = _reply(window)
    assert state == "interrupted" and text


def test_the_window_survives_a_worker_kill(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    page, bridge = window.chat_page, window._bridge
    page.sampling = page.sampling.__class__(max_tokens=2000)
    _type_and_send(qtbot, window, LONG)
    qtbot.waitUntil(lambda: len(_reply(window)[0]) > 10, timeout=120_000)
    partial_rows = page.transcript.rowCount()
    with qtbot.waitSignal(bridge.sig_worker_restarted, timeout=60_000):
        os.kill(bridge.client.pid, signal.SIGKILL)
    texts = [page.transcript.index(r).data(Roles.TEXT) for r in range(page.transcript.rowCount())]
    states = [page.transcript.index(r).data(Roles.STATE) for r in range(page.transcript.rowCount())]
    assert texts[0] == LONG and texts[1] and states[1] == "interrupted"  # the conversation is kept
    assert page.transcript.rowCount() == partial_rows + 1 and "SIGKILL" in texts[-1]  # and the UI says what happened
    assert not page.busy and page.send_button.text() == "Send"
    page.sampling = page.sampling.__class__(max_tokens=8)
    _type_and_send(qtbot, window, "Say hello.")
    qtbot.waitUntil(lambda: _reply(window)[1] == "complete", timeout=120_000)
    assert _reply(window)[0]
