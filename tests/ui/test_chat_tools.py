"""The studio's tool loop under pytest-qt: choose a server for the conversation (its command is
confirmed first), the model's call shows as a card, the person approves it once or always (or
refuses), the result shows folded, the reply continues, and calls and results are saved, exported
and imported. The runtime is the real one in this process with the real MCP server
(tests/data/mcp_server.py); only the model's choice is scripted (a 135M model's "auto" is not)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import settings
from app.chats import ChatStore, PartKind, Role
from app.runtime.inprocess import InProcessClient
from app.runtime.protocol import PROTOCOL_VERSION, Event, EventKind
from app.ui.bridge import RuntimeBridge
from app.ui.chat.page import ChatPage
from app.ui.chat.tool_flow import DENIED

SERVER = Path(__file__).resolve().parents[1] / "data" / "mcp_server.py"


class ScriptedModel(InProcessClient):
    """The real runtime, but a chat is answered by a script: a question gets a ``weather`` call
    for the city it names; after a tool's result, an answer that quotes it."""

    def __init__(self) -> None:
        super().__init__()
        self.worker_info = {"protocol": PROTOCOL_VERSION}
        self.chats: list[dict[str, Any]] = []

    def start(self) -> ScriptedModel:
        return self

    @property
    def alive(self) -> bool:
        return True

    def _send(self, request_id: str, method: str, params: dict[str, Any]) -> None:
        if method != "chat":
            super()._send(request_id, method, params)
            return
        self.chats.append(params)
        last = params["messages"][-1]
        if last["role"] == "tool":
            text = f"Here is what I found: {last['content']}"
            result = {"text": text, "finish_reason": "stop", "usage": {"completion_tokens": 8}}
            events = [Event(request_id, EventKind.TOKEN, {"text": text})]
        else:
            city = next(c for c in ("Paris", "Oslo", "Lima") if c in last["content"])
            calls = [{"id": f"call_{len(self.chats)}", "type": "function",
                      "function": {"name": "weather", "arguments": json.dumps({"city": city})}}]
            result = {"text": "", "tool_calls": calls, "finish_reason": "tool_calls", "usage": {"completion_tokens": 9}}
            events = []
        events.append(Event(request_id, EventKind.RESULT, {"status": "done", **result}))
        threading.Thread(target=lambda: [self._route(e) for e in events]).start()  # as a worker would: later, elsewhere


@pytest.fixture
def no_servers() -> Iterator[None]:
    saved = settings.load()
    settings.save(settings.Settings())
    yield
    settings.save(saved)


@pytest.fixture
def page(qtbot: Any, tmp_path: Path, no_servers: None) -> Iterator[tuple[ChatPage, ScriptedModel]]:
    model = ScriptedModel()
    bridge = RuntimeBridge(model)  # type: ignore[arg-type]
    with qtbot.waitSignal(bridge.sig_ready, timeout=30_000):
        bridge.start()
    chat = ChatPage(bridge, store=ChatStore(tmp_path / "chats.sqlite3"))
    qtbot.addWidget(chat)
    chat.show()
    yield chat, model
    bridge.close()
    chat.store.close()


def _answered(chat: ChatPage) -> bool:
    last = chat.transcript.message(chat.transcript.rowCount() - 1)
    return not chat.busy and last.role == "assistant" and last.state == "complete" and bool(last.text)


def test_a_tool_call_is_approved_run_shown_and_saved(qtbot: Any, page: tuple[ChatPage, ScriptedModel], tmp_path: Path) -> None:
    chat, model = page
    chooser = chat.tools.chooser
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {"x": {}}}', encoding="utf-8")
    with qtbot.waitSignal(chooser.sig_problem, timeout=10_000) as said:
        chooser.import_file(str(bad))
    assert said.args[0].startswith("This is not an mcp.json Hearth can read: server x: needs either a command")
    mcp_json = tmp_path / "mcp.json"  # the shape LM Studio, Cursor and Claude Desktop use
    mcp_json.write_text(json.dumps({"mcpServers": {"test": {
        "command": sys.executable, "args": [str(SERVER)], "env": {"HEARTH_TEST_TOOLS": "weather,add"}}}}), encoding="utf-8")
    chooser.import_file(str(mcp_json))
    qtbot.waitUntil(lambda: [s["name"] for s in chooser.servers] == ["test"], timeout=10_000)
    assert chooser.servers[0]["confirmed"] is False  # imported: its command is someone else's

    asked: list[tuple[str, str]] = []
    chooser.confirm = lambda parent, name, command: asked.append((name, command)) is not None  # the person says no
    assert not chooser.choose("test", True) and chooser.chosen == []
    chooser.confirm = lambda parent, name, command: asked.append((name, command)) is None  # ... then yes
    assert chooser.choose("test", True)
    assert asked[0][0] == "test" and asked[0][1].endswith("mcp_server.py")  # the command was shown
    assert settings.load().mcp_servers[0]["confirmed"] is True  # and the yes is kept
    assert chat.conversation is not None and chat.conversation.settings["mcp_servers"] == ["test"]
    qtbot.waitUntil(lambda: chat.tools.offered is not None, timeout=30_000)  # the server started, its tools listed

    # 1. run once
    chat.send("What is the weather in Paris?")
    qtbot.waitUntil(lambda: len(chat.tools.cards.cards) == 1, timeout=10_000)
    assert {t["function"]["name"] for t in model.chats[0]["tools"]} == {"weather", "add"}
    assert model.chats[0]["tool_choice"] == "auto"
    card = next(iter(chat.tools.cards.cards.values()))
    assert card.name == "weather" and json.loads(card.arguments.toPlainText()) == {"city": "Paris"}
    assert chat.busy and chat.send_button.text() == "Stop"  # a call waiting for the person: nothing else is sent meanwhile
    card.once_button.click()
    qtbot.waitUntil(lambda: _answered(chat), timeout=30_000)
    assert chat.transcript.message(chat.transcript.rowCount() - 1).text == "Here is what I found: Sunny and 21 degrees in Paris."
    sent = model.chats[1]["messages"]
    assert sent[-2] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]}
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "Sunny and 21 degrees in Paris."}

    rows = [chat.transcript.message(r) for r in range(chat.transcript.rowCount())]
    assert [r.role for r in rows] == ["user", "tool", "assistant"]  # the call's empty reply is shown by its call
    tool_row = chat.transcript.index(1)
    assert rows[1].text == '**weather** `{"city": "Paris"}` on test\n\nResult: Sunny and 21 degrees in Paris.'
    chat.tools.toggle(1)
    assert "```\nSunny and 21 degrees in Paris.\n```" in chat.transcript.data(tool_row)

    # 2. refused: the model hears why, and answers
    chat.send("And in Oslo?")
    qtbot.waitUntil(lambda: len(chat.tools.cards.cards) == 1, timeout=10_000)
    next(iter(chat.tools.cards.cards.values())).deny_button.click()
    qtbot.waitUntil(lambda: _answered(chat), timeout=30_000)
    assert model.chats[-1]["messages"][-1]["content"] == DENIED

    # 3. Stop while a card waits: the call is refused and the reply ends there
    chat.send("What about Lima?")
    qtbot.waitUntil(lambda: len(chat.tools.cards.cards) == 1, timeout=10_000)
    asked = len(model.chats)
    chat.send_button.click()
    assert chat.tools.cards.cards == {} and not chat.busy and chat.send_button.text() == "Send"
    assert len(model.chats) == asked

    # 4. always: this call runs, and the next one without a card
    chat.send("And in Lima?")
    qtbot.waitUntil(lambda: len(chat.tools.cards.cards) == 1, timeout=10_000)
    next(iter(chat.tools.cards.cards.values())).always_button.click()
    qtbot.waitUntil(lambda: _answered(chat), timeout=30_000)
    assert chat.conversation.settings["tools_always"] == ["weather"]
    chat.send("Paris again?")
    qtbot.waitUntil(lambda: _answered(chat) and len(model.chats) == 9, timeout=30_000)
    assert chat.tools.cards.cards == {} and model.chats[-1]["messages"][-1]["content"] == "Sunny and 21 degrees in Paris."

    # saved as message parts, exported and imported with the conversation
    parts_of = chat.conversation.id
    parts = chat.store.conversation_parts(parts_of)
    kinds = [p.kind for ps in parts.values() for p in ps]
    assert kinds.count(PartKind.TOOL_CALL) == 5 and kinds.count(PartKind.TOOL_RESULT) == 5
    path = tmp_path / "chat.json"
    chat.export_file(str(path))
    imported = chat.import_file(str(path))
    assert chat.conversation.id == imported.id != parts_of
    again = [r for r in range(chat.transcript.rowCount()) if chat.transcript.message(r).role == "tool"]
    assert len(again) == 5 and "Error: " + DENIED in chat.transcript.message(again[1]).text
    reply = chat.store.add_message(imported.id, Role.ASSISTANT)
    resent = chat.request_params(reply.id)["messages"]
    assert [m["role"] for m in resent].count("tool") == 5 and resent[2]["content"] == "Sunny and 21 degrees in Paris."
