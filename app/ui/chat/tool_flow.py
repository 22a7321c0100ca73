"""The studio's tool loop: the model's calls become cards, approved calls run on their MCP server,
results go back to the model, and the reply continues.

One round: a chat request that offers the chosen servers' tools ends with ``tool_calls``; the
calls are saved as ``tool_call`` parts of that (empty) assistant message and shown as cards; each
approved call runs through ``mcp.call`` (a call of a tool the person allowed "always" runs without
a card); each result is saved as a ``tool_result`` part and shown collapsed in the transcript;
once every call of the round has its result, the page starts the next assistant message, whose
request carries the calls and results (`turns`). A refused call is answered with `DENIED`, so the
model hears why. After `MAX_ROUNDS` rounds in one turn the model is asked without tools.
"""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.chats import Message, MessagePart, PartKind, Role
from app.runtime.protocol import Method
from app.ui.bridge import RuntimeBridge
from app.ui.chat.replies import ReplyRunner
from app.ui.chat.tool_cards import ALWAYS, DENY, ToolCardsPanel
from app.ui.chat.tool_chooser import SETTINGS_KEY, ToolChooser
from app.ui.chat.transcript import ChatMessage, Roles
from app.ui.errors import worded

MAX_ROUNDS = 5
ALWAYS_KEY = "tools_always"  # in a conversation's settings: tools the person allowed without asking
DENIED = "The person did not allow this tool call."
NOT_RUN = "The tool call was not run."
PREVIEW = 100  # characters of a result shown while it is collapsed


class ToolReplyRunner(ReplyRunner):
    """A `ReplyRunner` that also hands on the tool calls a finished reply asked for."""

    sig_tool_calls = Signal(int, list)  # the assistant message's id, its calls (OpenAI shape)

    def _on_finished(self, result: dict[str, Any]) -> None:
        message_id, calls = self._message_id, list(result.get("tool_calls") or [])
        super()._on_finished(result)
        if calls and message_id is not None and result.get("finish_reason") != "cancelled":
            self.sig_tool_calls.emit(message_id, calls)


# ---- the conversation as the model and the person see it ------------------------------------------


def _calls_and_results(parts: list[MessagePart]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    calls = [p.data for p in parts if p.kind is PartKind.TOOL_CALL]
    results = {str(p.data.get("tool_call_id")): p.data for p in parts if p.kind is PartKind.TOOL_RESULT}
    return calls, results


def tool_turns(messages: list[Message], parts: dict[int, list[MessagePart]], reply_id: int) -> list[dict[str, Any]]:
    """The messages before ``reply_id`` as chat turns: an assistant message that called tools is
    sent with its ``tool_calls``, followed by one ``tool`` message per call."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.id == reply_id:
            break
        calls, results = _calls_and_results(parts.get(m.id, []))
        if m.role is Role.ASSISTANT and calls:
            out.append({"role": "assistant", "content": m.content, "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]})
            out += [{"role": "tool", "tool_call_id": c["id"], "content": str(results.get(c["id"], {}).get("content", NOT_RUN))}
                    for c in calls]
        elif m.content or m.role is not Role.ASSISTANT:
            out.append({"role": m.role.value, "content": m.content})
    return out


def tool_row(call: dict[str, Any], result: dict[str, Any] | None, *, expanded: bool = False) -> ChatMessage:
    """One call and its result as a transcript row; the result collapsed to its first line."""
    head = f"**{call['name']}** `{call['arguments']}`" + (f" on {call['server']}" if call.get("server") else "")
    if result is None:
        return ChatMessage("tool", head + "\n\nWaiting…", "streaming", {"tool_call_id": call["id"], "expanded": False})
    content = str(result.get("content", ""))
    label = "Error" if result.get("is_error") else "Result"
    if expanded:
        body = f"{label} ({len(content):,} characters, click to fold):\n\n```\n{content}\n```"
    else:
        first = content.strip().splitlines()[0] if content.strip() else "(empty)"
        more = len(first) > PREVIEW or len(content.strip()) > len(first)
        body = f"{label}: {first[:PREVIEW]}" + (f" … ({len(content):,} characters, click to show)" if more else "")
    return ChatMessage("tool", f"{head}\n\n{body}", "failed" if result.get("is_error") else "complete",
                       {"tool_call_id": call["id"], "expanded": expanded})


def tool_rows(messages: list[Message], parts: dict[int, list[MessagePart]]) -> list[ChatMessage]:
    """Transcript rows: the messages, each call after the message that made it (an assistant
    message with nothing but calls is shown by its calls alone)."""
    out: list[ChatMessage] = []
    for m in messages:
        calls, results = _calls_and_results(parts.get(m.id, []))
        if not (m.role is Role.ASSISTANT and calls and not m.content.strip()):
            out.append(ChatMessage.from_record(m))
        out += [tool_row(c, results.get(c["id"])) for c in calls]
    return out


# ---- the loop -------------------------------------------------------------------------------------


class ToolFlow(QObject):
    sig_continue = Signal()  # every call of the round has its result: the reply goes on
    sig_hint = Signal(str)
    sig_busy = Signal(bool)  # calls wait for the person or run, or the tools are being listed

    def __init__(self, bridge: RuntimeBridge, page: Any) -> None:
        super().__init__(page)
        self._bridge = bridge
        self._page = page  # the ChatPage: its store, conversation, transcript, settings
        self.chooser = ToolChooser(bridge, page)
        self.cards = ToolCardsPanel(page)
        self.offered: dict[str, Any] | None = None  # the mcp.tools result for `self.chooser.chosen`
        self._fetching = False
        self._waiting_run: list[Any] = []  # request starts waiting for the tools to be listed
        self._open: dict[str, tuple[int, dict[str, Any]]] = {}  # call id -> (message id, call): no result yet
        self._was_busy = False
        self.chooser.sig_changed.connect(self._chosen)
        self.chooser.sig_problem.connect(self.sig_hint)
        self.cards.sig_answered.connect(self.answer)

    @property
    def busy(self) -> bool:
        return self._fetching or bool(self._open)

    def _tell_busy(self) -> None:
        if self.busy != self._was_busy:
            self._was_busy = self.busy
            self.sig_busy.emit(self._was_busy)

    # ---- the conversation's servers ---------------------------------------------------------------

    def show_conversation(self, settings: dict[str, Any]) -> None:
        """Another conversation is shown: forget this one's waiting calls, list its servers' tools."""
        self.abandon()
        self.chooser.set_chosen([n for n in settings.get(SETTINGS_KEY, []) if isinstance(n, str)])
        self._fetch()

    def _chosen(self, names: list[str]) -> None:
        page = self._page
        if page.conversation is not None:
            page.apply_settings(settings=dict(page.conversation.settings, **{SETTINGS_KEY: names}))
        self._fetch()

    def _fetch(self) -> None:
        names = list(self.chooser.chosen)
        self.offered = None
        self._fetching = bool(names)
        self._tell_busy()
        if not names:
            self._start_waiting()
            return
        self._bridge.run(Method.MCP_TOOLS, {"servers": names}, owner=self).on_success(
            lambda result: self._fetched(names, result)).on_failure(lambda failure: self._fetched(names, None, worded(failure)))

    def _fetched(self, names: list[str], result: dict[str, Any] | None, problem: str = "") -> None:
        if names != self.chooser.chosen:
            return  # the choice changed meanwhile; its own listing is on its way
        self._fetching = False
        self._tell_busy()
        self.offered = result
        problems = [f"MCP server {n}: {p}" for n, p in (result or {}).get("problems", {}).items()]
        if problem or problems:
            self.sig_hint.emit("; ".join([problem, *problems]).strip("; "))
        self._start_waiting()

    def _start_waiting(self) -> None:
        waiting, self._waiting_run = self._waiting_run, []
        for start in waiting:
            start()

    def when_ready(self, start: Any) -> None:
        """Run ``start`` (a chat request) once the chosen servers' tools are known."""
        if self._fetching:
            self._waiting_run.append(start)
        else:
            start()

    def attach(self, params: dict[str, Any], messages: list[Message], parts: dict[int, list[MessagePart]]) -> None:
        """Offer the tools in a chat request (``tool_choice`` "none" after `MAX_ROUNDS` rounds)."""
        if not self.offered or not self.offered.get("tools"):
            return
        rounds = 0
        for m in reversed(messages):
            if m.role is Role.USER:
                break
            rounds += any(p.kind is PartKind.TOOL_CALL for p in parts.get(m.id, []))
        params.update(tools=self.offered["tools"], tool_choice="auto" if rounds < MAX_ROUNDS else "none",
                      parallel_tool_calls=True)

    # ---- calls --------------------------------------------------------------------------------------

    def on_calls(self, message_id: int, calls: list[dict[str, Any]]) -> None:
        """A reply asked for tools: save the calls, then run or show each."""
        functions = (self.offered or {}).get("functions", {})
        saved = []
        for call in calls:
            function = call.get("function", {})
            name = str(function.get("name", ""))
            target = functions.get(name, {})
            saved.append({"id": str(call.get("id", "")), "name": name, "arguments": str(function.get("arguments", "{}")),
                          "server": target.get("server", ""), "tool": target.get("tool", "")})
        self._page.store.add_parts(message_id, [(PartKind.TOOL_CALL, c) for c in saved])
        for call in saved:
            self._open[call["id"]] = (message_id, call)
        self._tell_busy()
        self._page._reload()
        always = set(self._always())
        for call in saved:
            if not call["server"]:
                self._settle(call["id"], {"content": f"There is no tool named {call['name']!r}.", "is_error": True})
            elif call["name"] in always:
                self._run(call)
            else:
                self.cards.add(call["id"], call["name"], call["server"], call["arguments"])

    def answer(self, call_id: str, answer: str) -> None:
        """The person's answer on a card: run once, always run this tool, or don't run."""
        self.cards.remove(call_id)
        opened = self._open.get(call_id)
        if opened is None:
            return
        call = opened[1]
        if answer == DENY:
            self._settle(call_id, {"content": DENIED, "is_error": True})
            return
        if answer == ALWAYS:
            page = self._page
            page.apply_settings(settings=dict(page.conversation.settings, **{ALWAYS_KEY: sorted({*self._always(), call["name"]})}))
        self._run(call)

    def _always(self) -> list[str]:
        conversation = self._page.conversation
        return list(conversation.settings.get(ALWAYS_KEY, [])) if conversation is not None else []

    def _run(self, call: dict[str, Any]) -> None:
        try:
            arguments = json.loads(call["arguments"] or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            self._settle(call["id"], {"content": f"The arguments of {call['name']} are not a JSON object: {call['arguments']}",
                                      "is_error": True})
            return
        self.sig_hint.emit(f"Running {call['name']}…")
        self._bridge.run(Method.MCP_CALL, {"server": call["server"], "tool": call["tool"], "arguments": arguments}, owner=self).on_success(
            lambda result: self._settle(call["id"], result)).on_failure(
            lambda failure: self._settle(call["id"], {"content": worded(failure), "is_error": True}))

    def _settle(self, call_id: str, result: dict[str, Any], *, go_on: bool = True) -> None:
        opened = self._open.pop(call_id, None)
        if opened is None:
            return  # the conversation was left meanwhile
        message_id, call = opened
        data = {"tool_call_id": call_id, "name": call["name"], "content": str(result.get("content", result.get("text", ""))),
                "is_error": bool(result.get("is_error")), "truncated": bool(result.get("truncated"))}
        self._page.store.add_part(message_id, PartKind.TOOL_RESULT, data)
        row = self._row_of(call_id)
        if row >= 0:
            self._set_row(row, tool_row(call, data))
        self.sig_hint.emit("")
        self._tell_busy()
        if go_on and not any(m == message_id for m, _ in self._open.values()):
            self.sig_continue.emit()

    # ---- the transcript -----------------------------------------------------------------------------

    def _row_of(self, call_id: str) -> int:
        transcript = self._page.transcript
        for row in range(transcript.rowCount()):
            message = transcript.message(row)
            if message.role == "tool" and message.stats.get("tool_call_id") == call_id:
                return row
        return -1

    def _set_row(self, row: int, shown: ChatMessage) -> None:
        transcript = self._page.transcript
        message = transcript.message(row)
        message.text, message.state, message.stats = shown.text, shown.state, shown.stats
        index = transcript.index(row)
        transcript.dataChanged.emit(index, index, [Roles.TEXT, Roles.STATE, Roles.STATS])
        self._page._row_changed(row)

    def toggle(self, row: int) -> None:
        """Show a tool row's whole result, or fold it again (a click on the row)."""
        message = self._page.transcript.message(row)
        call_id = message.stats.get("tool_call_id") if message.role == "tool" else None
        if call_id is None or self._page.conversation is None:
            return
        for parts in self._page.store.conversation_parts(self._page.conversation.id).values():
            calls, results = _calls_and_results(parts)
            call = next((c for c in calls if c["id"] == call_id), None)
            if call is not None and call_id in results:
                self._set_row(row, tool_row(call, results[call_id], expanded=not message.stats.get("expanded")))
                return

    def stop(self) -> None:
        """Stop pressed while calls wait: refuse them all, and the reply ends here."""
        for call_id in list(self.cards.cards):
            self.cards.remove(call_id)
            self._settle(call_id, {"content": DENIED, "is_error": True}, go_on=False)
        self._open.clear()  # a call already running: its result is no longer waited for
        self._tell_busy()

    def abandon(self) -> None:
        """The conversation is left: waiting calls stay unanswered (sent as "not run" later)."""
        self.cards.clear()
        self._open.clear()
        self._waiting_run.clear()
        self._tell_busy()
