"""Chat with documents in the studio: files dropped on the chat page are indexed (the real docs.add
job), the answer is given their passages (the real engine and retrieval), stores them as "source"
parts, shows them under the reply, and its [1] marker is a link that opens the passage.

The model is a scripted backend (a small model writes [n] markers unreliably); everything else is
real: the dispatcher, the docs index, the chat store in SQLite, the widgets."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QTextDocument
from PySide6.QtWidgets import QStyleOptionViewItem

from app.chats import ChatStore, PartKind
from app.runtime.backends.base import Completion
from app.runtime.inprocess import InProcessClient
from app.runtime.services import Services
from app.ui.bridge import RuntimeBridge
from app.ui.chat.delegate import PADDING
from app.ui.chat.page import ChatPage
from app.ui.chat.sources import link_markers

REPLY = "The Tarvik ferry leaves at 06:40 [1]."


class ScriptedBackend:
    """Answers every chat with REPLY, token by token, and keeps the messages it was sent."""

    name = "scripted"
    n_ctx = 2048
    settings: dict[str, Any] = {}

    def __init__(self) -> None:
        self.seen: list[Sequence[dict[str, str]]] = []

    def tokenize_chat(self, messages: Sequence[dict[str, str]], chat_template: str | None = None) -> list[str]:
        return " ".join(m["content"] for m in messages).split()

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[str]:
        return text.split()

    def chat(self, messages: Sequence[dict[str, str]], sampling: Any, *, on_token: Any, is_cancelled: Any, **_: Any) -> Completion:
        self.seen.append(list(messages))
        pieces = re.findall(r"\S+\s*", REPLY)
        for piece in pieces:
            on_token(piece)
        return Completion(REPLY, "stop", len(self.tokenize_chat(messages)), len(pieces), 0, 0.01, 0.01)

    def close(self) -> None:
        pass


class ScriptedClient(InProcessClient):
    """The runtime in this process, started at once (the bridge's worker interface)."""

    alive = True
    worker_info: dict[str, Any] = {}

    def start(self) -> ScriptedClient:
        return self


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def page(qtbot: Any, tmp_path: Path, scripted: ScriptedBackend) -> Iterator[ChatPage]:
    services = Services(warm_up=False)
    services.engine._backend = scripted  # type: ignore[assignment]  # the one fake: the model
    bridge = RuntimeBridge(client=ScriptedClient(services))  # type: ignore[arg-type]
    chat = ChatPage(bridge, store=ChatStore(tmp_path / "chats.sqlite3"))
    qtbot.addWidget(chat)
    chat.resize(900, 700)
    chat.show()
    with qtbot.waitSignal(bridge.sig_ready, timeout=10_000):
        bridge.start()
    yield chat
    bridge.close()
    chat.store.close()


def drop(page: ChatPage, *paths: Path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    event = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    page.dropEvent(event)


def anchor_point(page: ChatPage, row: int, href: str) -> QPoint:
    """Where, in the transcript's viewport, the link ``href`` of ``row`` is drawn."""
    index = page.transcript.index(row)
    option = QStyleOptionViewItem()
    page.view.initViewItemOption(option) if hasattr(page.view, "initViewItemOption") else None
    option.rect = page.view.visualRect(index)
    option.font = page.view.font()
    doc: QTextDocument = page._delegate._document(option, index)
    block = doc.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.charFormat().anchorHref() == href:
                pos = fragment.position() - block.position() + 1
                line = block.layout().lineForTextPosition(pos)
                top = doc.documentLayout().blockBoundingRect(block).top() + line.y() + line.height() / 2
                x = line.cursorToX(pos)[0] if isinstance(line.cursorToX(pos), tuple) else line.cursorToX(pos)
                return QPoint(int(option.rect.left() + PADDING + x), int(option.rect.top() + PADDING + top))
            it += 1
        block = block.next()
    raise AssertionError(f"no link {href} in row {row}")


def test_dropped_files_answer_with_sources_that_open_their_passage(qtbot: Any, page: ChatPage, scripted: ScriptedBackend, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "ferry.txt").write_text("Harbour\n\nThe Tarvik ferry leaves the harbour at 06:40 every Thursday.\n", encoding="utf-8")
    (folder / "jam.md").write_text("# Jam\n\nGrandmother Ilse's quince jam needs 400 grams of quince.\n", encoding="utf-8")
    assert page.conversation is not None
    cid = page.conversation.id

    with qtbot.waitSignal(page.docs.sig_indexed, timeout=30_000) as indexed:
        drop(page, folder)
    report = indexed.args[0]
    assert report["status"] == "done" and report["files"] == 2
    assert page.store.conversation(cid).settings["docs"] == f"chat-{cid}"
    assert "2 file(s), 2 indexed now" in page.docs.status.text()

    with qtbot.waitSignal(page.replies.sig_finished, timeout=30_000) as finished:
        page.send("When does the Tarvik ferry leave?")
    assert finished.args[0]["docs"]["mode"] == "whole"
    system = scripted.seen[-1][0]
    assert system["role"] == "system" and "06:40 every Thursday" in system["content"]  # the documents went in whole

    reply_row = page.transcript.rowCount() - 1
    reply = page.transcript.message(reply_row)
    assert reply.text == REPLY
    stored = page.store.parts(reply.message_id, PartKind.SOURCE)  # type: ignore[arg-type]
    assert sorted(p.data["name"] for p in stored) == ["ferry.txt", "jam.md"]
    assert [s["name"] for s in reply.stats["sources"]] == [p.data["name"] for p in stored]
    assert "docs" in page.store.message(reply.message_id).meta and "sources" not in page.store.message(reply.message_id).meta  # type: ignore[arg-type]

    # The [1] in the reply is a link: a real click on it opens the first source's passage.
    first = reply.stats["sources"][0]
    page.view.scrollToBottom()
    qtbot.wait(50)
    qtbot.mouseClick(page.view.viewport(), Qt.MouseButton.LeftButton, pos=anchor_point(page, reply_row, "source:1"))
    assert page.passage_view is not None and page.passage_view.isVisible()
    assert page.passage_view.text.toPlainText() == first["text"]
    assert first["name"] in page.passage_view.windowTitle()
    page.passage_view.close()

    # Opened again, the conversation shows the stored sources; the export carries them.
    page.open_conversation(cid)
    again = page.transcript.message(page.transcript.row_of(reply.message_id))  # type: ignore[arg-type]
    assert [s["name"] for s in again.stats["sources"]] == [s["name"] for s in reply.stats["sources"]]
    exported = json.loads(page.store.export_json(cid))
    assert [p["kind"] for p in exported["messages"][-1]["parts"]] == ["source", "source"]

    # Choosing "No documents" stops sending them.
    page.docs.picker.setCurrentIndex(0)
    page.docs._picked(0)
    assert "docs" not in page.request_params(reply.message_id)  # type: ignore[arg-type]


def test_markers_link_only_to_sources_that_exist_and_never_inside_code() -> None:
    text = "Lyon [1] and Turin [2], not [3].\n```\nx = a[1]\n```\nSee [2](http://x)."
    linked = link_markers(text, 2)
    assert "[\\[1\\]](source:1)" in linked and "[\\[2\\]](source:2)" in linked
    assert "not [3]" in linked and "x = a[1]" in linked and "[2](http://x)" in linked
    assert link_markers(text, 0) == text
