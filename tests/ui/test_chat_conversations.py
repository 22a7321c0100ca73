"""Conversations in the store through the real window, worker and model: saving, search, versions,
presets, crashes of the worker and of the GUI itself, export and import."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from app.chats import ChatStore, MessageState, Role
from app.runtime.protocol import Method, Sampling
from app.ui.bridge import RuntimeBridge
from app.ui.chat import generation
from app.ui.chat.transcript import Roles
from app.ui.main_window import MainWindow
from app.ui.request import Request

LONG = "Write a long story about a lighthouse keeper and a storm."
ROOT = Path(__file__).resolve().parents[2]


def _done(page: Any) -> bool:
    return not page.busy


def _send(qtbot, page: Any, text: str) -> None:  # type: ignore[no-untyped-def]
    page.send(text)
    qtbot.waitUntil(lambda: _done(page), timeout=120_000)


def test_a_sent_message_is_saved_listed_and_found(qtbot, window: MainWindow, chats_db: Path) -> None:  # type: ignore[no-untyped-def]
    page = window.chat_page
    page.sampling = Sampling(temperature=0.0, max_tokens=16)
    _send(qtbot, page, "Name three colors of the zebra.")
    with ChatStore(chats_db, recover=False) as store:  # a second connection, as another process would
        [conv] = store.conversations()
        user, reply = store.messages(conv.id)
        assert user.content == "Name three colors of the zebra." and reply.role is Role.ASSISTANT
        assert reply.state is MessageState.COMPLETE and reply.content == page.transcript.message(1).text != ""
        assert reply.meta["tokens"] > 0
    assert conv.title.startswith("Name three colors")
    rows = page.panel.list_model.rows()
    assert [r.conversation_id for r in rows] == [conv.id] and page.panel.selected_id() == conv.id

    page.new_chat()
    assert page.transcript.rowCount() == 0 and page.panel.list_model.rowCount() == 2
    page.panel.search_box.setText("zebra")  # the list filters after a short pause
    qtbot.waitUntil(lambda: page.panel.list_model.rowCount() == 1, timeout=5_000)
    hit = page.panel.list_model.row_at(0)
    assert hit.conversation_id == conv.id and "zebra" in hit.snippet
    page.open_conversation(hit.conversation_id, hit.message_id)
    assert page.transcript.message(0).text == user.content

    page.rename_conversation(conv.id, "Zebras")
    assert page.store.conversation(conv.id).title == "Zebras"
    branch = page.branch_at(0)
    assert branch is not None and [m.content for m in page.store.messages(branch.id)] == [user.content]
    page.delete_conversation(conv.id)
    assert page.panel.undo_button.isVisibleTo(page) and all(c.id != conv.id for c in page.store.conversations())
    page.undo_delete()
    assert page.conversation.id == conv.id and page.transcript.rowCount() == 2


def test_edit_regenerate_and_switch_versions(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    page = window.chat_page
    page.apply_settings(settings=generation.settings_blob(Sampling(temperature=1.0, max_tokens=12)))
    _send(qtbot, page, "Say hi.")
    first = page.transcript.message(1).text
    page.regenerate()
    assert page.busy and page.transcript.index(1).data(Roles.VERSION) == (2, 2)
    qtbot.waitUntil(lambda: _done(page), timeout=120_000)
    second = page.transcript.message(1)
    assert second.state == "complete" and second.text
    page.switch_version(1, -1)
    assert page.transcript.message(1).text == first and page.transcript.index(1).data(Roles.VERSION) == (1, 2)
    page.switch_version(1, +1)
    assert page.transcript.message(1).text == second.text

    page.edit_message(0, "Say bye.")
    assert page.transcript.message(0).text == "Say bye." and page.transcript.index(0).data(Roles.VERSION) == (2, 2)
    qtbot.waitUntil(lambda: _done(page), timeout=120_000)
    assert page.transcript.rowCount() == 2 and page.transcript.message(1).state == "complete"
    assert page.transcript.index(1).data(Roles.VERSION) == (1, 1)  # a fresh reply to the edited text
    page.switch_version(0, -1)  # the old branch, with both of its replies, is still there
    assert page.transcript.message(0).text == "Say hi." and page.transcript.message(1).text == second.text
    assert page.transcript.index(1).data(Roles.VERSION) == (2, 2)


def test_a_preset_and_settings_reach_the_worker(qtbot, window: MainWindow, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page, bridge = window.chat_page, window._bridge
    sent: list[tuple[str, dict[str, Any]]] = []
    real_run = bridge.run

    def recording(method: Any, params: dict[str, Any] | None = None, **options: Any) -> Request:
        sent.append((str(getattr(method, "value", method)), params or {}))
        return real_run(method, params, **options)  # the real request still goes out

    bridge.run = recording  # type: ignore[method-assign]
    page.apply_preset("Pirate")
    blob = generation.settings_blob(Sampling(temperature=0.0, max_tokens=8, top_k=20, seed=7, stop=("###",)), 2048)
    page.apply_settings(settings=blob)
    assert page.store.conversation(page.conversation.id).settings == blob  # saved with the conversation
    _send(qtbot, page, "Hello!")
    [params] = [p for m, p in sent if m == Method.CHAT.value]
    assert params["messages"][0] == {"role": "system", "content": generation.BUILTIN_PRESETS["Pirate"]}
    assert params["messages"][1] == {"role": "user", "content": "Hello!"}
    sampling = params["sampling"]
    assert (sampling["temperature"], sampling["max_tokens"], sampling["top_k"], sampling["seed"], sampling["stop"]) == (0.0, 8, 20, 7, ["###"])
    assert params["prefs"] == {"context_length": 2048}
    assert page.transcript.message(1).state == "complete"

    # the model picker is filled from the library, and Unload frees the model
    qtbot.waitUntil(lambda: page.toolbar.models.count() > 1, timeout=30_000)
    assert "SmolLM2" in page.toolbar.models.itemText(1)
    page.toolbar.models.setCurrentIndex(1)
    page.toolbar.models.activated.emit(1)
    assert page.model == page.toolbar.models.itemData(1) == page.store.conversation(page.conversation.id).model_id
    with qtbot.waitSignal(page.sig_status_changed, timeout=30_000):
        page.unload_model()
    assert [m for m, _ in sent].count(Method.ENGINE_UNLOAD.value) == 1
    qtbot.waitUntil(lambda: "No model loaded" in window.model_label.text(), timeout=30_000)

    presets = tmp_path / "presets.json"
    generation.save_preset("Terse", "Answer in five words.", presets)
    assert generation.load_presets(presets)["Terse"] == "Answer in five words." and "Pirate" in generation.load_presets(presets)


def test_a_worker_killed_mid_reply_leaves_it_saved_and_interrupted(qtbot, window: MainWindow, chats_db: Path) -> None:  # type: ignore[no-untyped-def]
    page, bridge = window.chat_page, window._bridge
    page.sampling = Sampling(max_tokens=2000)
    page.send(LONG)
    qtbot.waitUntil(lambda: page.replies.recorder.flushed_chars > 10, timeout=120_000)
    with qtbot.waitSignal(bridge.sig_worker_restarted, timeout=60_000):
        os.kill(bridge.client.pid, signal.SIGKILL)
    assert not page.busy
    shown = page.transcript.message(1)
    with ChatStore(chats_db, recover=False) as store:
        reply = store.messages(page.conversation.id)[1]
        assert reply.state is MessageState.INTERRUPTED and reply.content == shown.text != ""
    page.sampling = Sampling(max_tokens=8)
    _send(qtbot, page, "Say hello.")
    assert page.transcript.message(page.transcript.rowCount() - 1).state == "complete"
    assert [m.role for m in page.store.messages(page.conversation.id)] == [Role.USER, Role.ASSISTANT] * 2


GUI_SCRIPT = textwrap.dedent("""
    import sys
    from PySide6.QtWidgets import QApplication
    from app.runtime.protocol import Sampling
    from app.ui.bridge import RuntimeBridge
    from app.ui.main_window import MainWindow

    app = QApplication([sys.argv[0]])
    bridge = RuntimeBridge()
    window = MainWindow(bridge)
    window.show()
    page = window.chat_page
    page.sampling = Sampling(max_tokens=2000)
    bridge.sig_ready.connect(lambda info: page.send("Write a long story about a lighthouse keeper and a storm."))
    page.replies.recorder.sig_flushed.connect(lambda n: n > 20 and print("STREAMED", page.conversation.id, flush=True))
    bridge.start()
    app.exec()
""")


def test_a_killed_gui_leaves_a_clean_store_with_the_partial_reply(tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = tmp_path / "gui.py"
    script.write_text(GUI_SCRIPT, encoding="utf-8")
    env = dict(os.environ, HEARTH_HOME=str(home), QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the reply has streamed into the store
        assert line.startswith("STREAMED"), line
        conversation_id = int(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    db_path = home / "data" / "chats.sqlite3"
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with ChatStore(db_path, recover=False) as store:
        user, reply = store.messages(conversation_id)
        assert user.content.startswith("Write a long story") and reply.state is MessageState.STREAMING
        assert len(reply.content) > 20  # the partial text, at most ~0.5 s behind
        assert store.recover() == [reply.id]
        assert store.message(reply.id).state is MessageState.INTERRUPTED
        assert store.message(reply.id).content == reply.content


def test_export_and_import_round_trip(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    win = MainWindow(RuntimeBridge())  # no worker needed: the store alone
    qtbot.addWidget(win)
    page = win.chat_page
    page.set_store(ChatStore(tmp_path / "chats.sqlite3"))
    cid = page.conversation.id
    page.store.rename_conversation(cid, "Export me")
    user = page.store.add_message(cid, Role.USER, "What is **2+2**?")
    reply = page.store.add_message(cid, Role.ASSISTANT, "It is 4.\n\n```python\nprint(2 + 2)\n```")
    page.store.add_version(reply.id, content="Four.", state=MessageState.COMPLETE)
    page.open_conversation(cid)

    md, js = tmp_path / "chat.md", tmp_path / "chat.json"
    page.export_file(str(md))
    page.export_file(str(js))
    assert "What is **2+2**?" in md.read_text(encoding="utf-8") and "Four." in md.read_text(encoding="utf-8")
    imported = page.import_file(str(js))
    assert imported.id != cid and page.conversation.id == imported.id
    texts = [page.transcript.message(r).text for r in range(page.transcript.rowCount())]
    assert texts == [user.content, "Four."] and page.transcript.index(1).data(Roles.VERSION) == (2, 2)
    page.switch_version(1, -1)
    assert page.transcript.message(1).text.startswith("It is 4.")  # every version came through
    with pytest.raises(ValueError):
        page.export_file(str(tmp_path / "chat.txt"))
    page.store.close()
