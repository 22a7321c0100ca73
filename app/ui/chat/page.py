"""The chat page: conversations on the left, the transcript, an input box, Send/Stop.

The page owns the conversation store (the GUI process is its one owner). Every turn is written to
the store as it happens; `ReplyRunner` streams the reply into one transcript row and the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QGuiApplication, QKeyEvent
from PySide6.QtWidgets import QAbstractItemView, QHBoxLayout, QLabel, QListView, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from app.chats import ChatStore, Conversation, ConversationSnapshot, MessageState, Role
from app.runtime.protocol import Method, Sampling
from app.ui.bridge import RuntimeBridge
from app.ui.chat import dialogs, generation, transfer
from app.ui.chat.attach import DocsBar
from app.ui.chat.conversations import ConversationListModel, ConversationsPanel, open_store
from app.ui.chat.delegate import MessageDelegate
from app.ui.chat.idle import IdleUnloader
from app.ui.chat.sources import PassageView, source_for_anchor, sources_of
from app.ui.chat.template_dialog import FALLBACK_NOTICE, TemplateEditor
from app.ui.chat.tool_flow import ToolFlow, ToolReplyRunner, tool_rows, tool_turns
from app.ui.chat.toolbar import ChatToolbar, ContextBar
from app.ui.chat.transcript import ChatMessage, TranscriptModel

NEW_TITLE = "New chat"
DOCS_KEY = "docs"  # the conversation's settings: the document collection it answers from


class ChatPage(QWidget):
    sig_speed = Signal(float)  # live decode tokens/s of the reply being streamed
    sig_speculation = Signal(str)  # the last reply's speculative decoding, in a few words (replies.speculation_text)
    sig_model_loading = Signal(str)  # a message such as "Loading SmolLM2…"
    sig_model_used = Signal(str)  # the model id that answered
    sig_planned = Signal(dict)  # the plan a load inside a chat request chose (its progress record)
    sig_status_changed = Signal()  # the engine's state changed (a model was unloaded)

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None, *, store: ChatStore | None = None) -> None:
        super().__init__(parent)
        self._bridge = bridge
        self.sampling = Sampling()
        self.context_length = 0
        self._model: str | None = None  # None: the loaded model, or the embedded one
        self._deleted: ConversationSnapshot | None = None
        self.store = store or open_store()
        self.conversation: Conversation | None = None

        self.transcript = TranscriptModel(self)
        self.replies = ToolReplyRunner(bridge, self.transcript, self)  # a ReplyRunner that hands on tool calls
        self.idle = IdleUnloader(generation.idle_unload_minutes(), self, busy=lambda: self.busy, ask_engine=self._engine_idle)
        self.templates = TemplateEditor(bridge, self)
        self.view = QListView(self)
        self.view.setModel(self.transcript)
        self._delegate = MessageDelegate(self.view)
        self.view.setItemDelegate(self._delegate)
        self.view.setWordWrap(True)
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.view.setAccessibleName("Transcript")
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(lambda pos: dialogs.message_menu(self, pos))
        self.view.doubleClicked.connect(lambda index: dialogs.edit_message(self, index.row()))
        self.view.setToolTip("Right-click a message to copy, edit, regenerate, switch versions or branch")

        self.panel = ConversationsPanel(self)
        self.toolbar = ChatToolbar(self)
        self.context_bar = ContextBar(self)
        self.docs = DocsBar(bridge, self)
        self.tools = ToolFlow(bridge, self)  # MCP tools: the chooser, the call cards, the loop
        self.toolbar.layout().addWidget(self.tools.chooser)
        self.passage_view: PassageView | None = None  # the passage a source link opened last
        self.docs.sig_collection_chosen.connect(self.set_documents)
        self._delegate.sig_link.connect(self.open_link)
        self.setAcceptDrops(True)  # files and folders dropped on the page are attached to the conversation
        self.input = QPlainTextEdit(self)
        self.input.setPlaceholderText("Ask anything. Enter sends, Shift+Enter starts a new line.")
        self.input.setFixedHeight(80)
        self.input.installEventFilter(self)
        self.send_button = QPushButton("Send", self)
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self._send_or_stop)
        self.new_button = QPushButton("New chat", self)
        self.new_button.clicked.connect(self.new_chat)
        self.hint = QLabel("", self)
        self.hint.setObjectName("hint")

        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.new_button)
        row = QHBoxLayout()
        row.addWidget(self.input, 1)
        row.addLayout(buttons)
        chat = QVBoxLayout()
        chat.addWidget(self.toolbar)
        chat.addWidget(self.docs)
        chat.addWidget(self.view, 1)
        chat.addWidget(self.context_bar)
        chat.addWidget(self.hint)
        chat.addWidget(self.tools.cards)
        chat.addLayout(row)
        layout = QHBoxLayout(self)
        layout.addWidget(self.panel)
        layout.addLayout(chat, 1)

        r = self.replies
        r.sig_busy.connect(self._set_busy)
        r.sig_busy.connect(lambda busy: self.idle.touch())  # a request starts or ends: not idle
        self.idle.sig_idle.connect(lambda minutes: self.unload_model(
            hint=f"Unloaded the model after {minutes} minutes without use; it loads again on your next message."))
        r.sig_hint.connect(self.hint.setText)
        r.sig_speed.connect(self.sig_speed)
        r.sig_speculation.connect(self.sig_speculation)
        r.sig_model_loading.connect(self.sig_model_loading)
        r.sig_model_used.connect(self.sig_model_used)
        r.sig_planned.connect(self.sig_planned)
        r.sig_row_changed.connect(self._row_changed)
        r.sig_finished.connect(self._on_reply_finished)
        r.sig_tool_calls.connect(self.tools.on_calls)
        self.tools.sig_continue.connect(self.continue_reply)
        self.tools.sig_hint.connect(self.hint.setText)
        self.tools.sig_busy.connect(lambda busy: self._set_busy(busy or self.replies.busy))  # Stop refuses waiting calls
        self.view.clicked.connect(lambda index: self.tools.toggle(index.row()))  # a tool row's result folds and unfolds
        self.panel.sig_open.connect(self.open_conversation)
        self.panel.sig_rename.connect(self.rename_conversation)
        self.panel.sig_delete.connect(self.delete_conversation)
        self.panel.sig_undo_delete.connect(self.undo_delete)
        self.panel.sig_search.connect(self.search)
        self.toolbar.sig_model_chosen.connect(self._choose_model)
        self.toolbar.sig_unload.connect(self.unload_model)
        self.toolbar.sig_settings.connect(lambda: dialogs.edit_settings(self))
        self.toolbar.sig_template.connect(self.templates.open)
        self.toolbar.sig_export.connect(lambda: dialogs.export_chat(self))
        self.toolbar.sig_import.connect(lambda: dialogs.import_chat(self))
        bridge.sig_worker_died.connect(self._on_worker_died)
        bridge.sig_ready.connect(lambda info: self.docs.refresh())
        bridge.sig_worker_restarted.connect(self._on_worker_restarted)
        self.open_latest()

    @property
    def busy(self) -> bool:
        return self.replies.busy or self.tools.busy

    @property
    def model(self) -> str | None:
        return self._model

    @model.setter
    def model(self, model_id: str | None) -> None:
        self._model = model_id
        self.toolbar.select_model(model_id)
        if self.conversation is not None and self.conversation.model_id != model_id:
            self.conversation = self.store.update_conversation(self.conversation.id, model_id=model_id)

    def set_models(self, models: list[dict[str, Any]]) -> None:
        """The library's models (ModelsPage.sig_models_changed) for the picker."""
        self.toolbar.set_models(models)

    # ---- conversations ------------------------------------------------------------------------

    def set_store(self, store: ChatStore) -> None:
        """Use another store (tests point the page at a fresh file); the old one is closed."""
        self.replies.abandon()
        old, self.store = self.store, store
        if old is not store:
            old.close()
        self.conversation = None
        self.open_latest()

    def open_latest(self) -> None:
        """Show the newest conversation, or a new empty one."""
        newest = self.store.conversations(limit=1)
        self._show(newest[0] if newest else self.store.create_conversation(title=NEW_TITLE))

    def open_conversation(self, conversation_id: int, reveal_message: int | None = None) -> None:
        self.replies.abandon()
        if reveal_message is not None and all(m.id != reveal_message for m in self.store.messages(conversation_id)):
            self.store.switch_version(reveal_message)  # a search hit in an older version
        self._show(self.store.conversation(conversation_id))

    def new_chat(self) -> None:
        """Start a conversation with this one's system prompt and settings (reuses an empty one)."""
        self.replies.abandon()
        current = self.conversation
        if current is not None and not self.store.messages(current.id):
            self._show(current)
            return
        self._show(self.store.create_conversation(
            title=NEW_TITLE, system_prompt=current.system_prompt if current else "",
            settings=generation.settings_blob(self.sampling, self.context_length, base=current.settings if current else None),
            model_id=self._model))

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        renamed = self.store.rename_conversation(conversation_id, title)
        if self.conversation is not None and renamed.id == self.conversation.id:
            self.conversation = renamed
        self.refresh_list()

    def delete_conversation(self, conversation_id: int) -> None:
        """Delete it; `undo_delete` (the panel's Undo button) brings it back."""
        if self.conversation is not None and conversation_id == self.conversation.id:
            self.replies.abandon()
        self._deleted = self.store.delete_conversation(conversation_id)
        self.panel.show_undo(True)
        if self.conversation is not None and conversation_id == self.conversation.id:
            self.conversation = None
            self.open_latest()
        else:
            self.refresh_list()

    def undo_delete(self) -> None:
        if self._deleted is None:
            return
        restored, self._deleted = self.store.restore(self._deleted), None
        self.panel.show_undo(False)
        self._show(restored)

    def search(self, text: str) -> None:
        """Fill the list with conversations whose messages match `text` (all of them for "")."""
        current = self.conversation.id if self.conversation else None
        if text:
            rows = ConversationListModel.from_hits(self.store.search(text))
        else:
            rows = ConversationListModel.from_conversations(self.store.conversations())
        self.panel.set_rows(rows, current)

    def refresh_list(self) -> None:
        self.search(self.panel.search_box.text().strip())

    def branch_at(self, row: int) -> Conversation | None:
        """A new conversation holding this one up to and including the message at `row`."""
        message_id = self.transcript.message(row).message_id
        if message_id is None or self.busy:
            return None
        branch = self.store.branch(message_id)
        self._show(branch)
        return branch

    def _show(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.sampling = generation.sampling_from(conversation.settings)
        self.context_length = generation.context_length_from(conversation.settings)
        if conversation.model_id:
            self._model = conversation.model_id
        self.toolbar.select_model(self._model)
        self.docs.default_name = f"chat-{conversation.id}"
        self.docs.set_collection(conversation.settings.get(DOCS_KEY) or None)
        self.tools.show_conversation(conversation.settings)
        self._reload()
        self.refresh_list()

    def _reload(self) -> None:
        if self.conversation is None:
            return
        messages = self.store.messages(self.conversation.id)
        parts = self.store.conversation_parts(self.conversation.id)
        shown = tool_rows(messages, parts)  # the messages, each tool call (and result) after the reply that made it
        for row in shown:  # a reply's sources are its "source" parts, shown under it
            if row.message_id in parts and sources_of(parts[row.message_id]):
                row.stats = dict(row.stats, sources=sources_of(parts[row.message_id]))
        self.transcript.set_messages(shown)
        replies = [m for m in messages if m.role is Role.ASSISTANT and m.meta.get("context")]
        self.context_bar.show_context(replies[-1].meta["context"] if replies else None)
        self.view.scrollToBottom()

    # ---- turns --------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        text = text.strip()
        if not text or self.busy or self.conversation is None:
            return
        cid = self.conversation.id
        if self.conversation.title == NEW_TITLE and not self.store.messages(cid):
            self.conversation = self.store.rename_conversation(cid, " ".join(text.split())[:48])
        self.store.add_message(cid, Role.USER, text)
        self.input.clear()
        self._run(self.store.add_message(cid, Role.ASSISTANT, state=MessageState.STREAMING).id)

    def edit_message(self, row: int, text: str) -> None:
        """Edit a user message and re-run from there; the old text and replies stay a version."""
        message = self.transcript.message(row)
        if self.busy or message.role != "user" or message.message_id is None or not text.strip():
            return
        self.store.edit_message(message.message_id, text.strip())
        assert self.conversation is not None
        self._run(self.store.add_message(self.conversation.id, Role.ASSISTANT, state=MessageState.STREAMING).id)

    def regenerate(self) -> None:
        """A new version of the last reply; earlier ones stay reachable through the switcher."""
        rows = [r for r in range(self.transcript.rowCount()) if self.transcript.message(r).role == "assistant"]
        if self.busy or not rows or self.transcript.message(rows[-1]).message_id is None:
            return
        self._run(self.store.add_version(self.transcript.message(rows[-1]).message_id).id)  # type: ignore[arg-type]

    def switch_version(self, row: int, step: int) -> None:
        """Show the previous (-1) or next (+1) version of the message at `row`."""
        message = self.transcript.message(row)
        if self.busy or message.message_id is None:
            return
        versions = self.store.versions(message.message_id)
        target = message.version - 1 + step
        if 0 <= target < len(versions):
            self.store.switch_version(versions[target].id)
            self._reload()

    def copy_message(self, row: int) -> str:
        text = self.transcript.message(row).text
        QGuiApplication.clipboard().setText(text)
        return text

    def stop(self) -> None:
        self.replies.stop()
        self.tools.stop()

    def request_params(self, reply_id: int) -> dict[str, Any]:
        """What the worker is sent for the stored reply `reply_id`: the system prompt, the turns
        before it, the conversation's model and settings."""
        assert self.conversation is not None
        turns: list[dict[str, str]] = []
        if self.conversation.system_prompt:
            turns.append({"role": "system", "content": self.conversation.system_prompt})
        messages, parts = self.store.messages(self.conversation.id), self.store.conversation_parts(self.conversation.id)
        turns += tool_turns(messages, parts, reply_id)  # with the tool calls and results of earlier rounds
        params: dict[str, Any] = {"messages": turns, "model": self._model, "sampling": self.sampling.to_dict(),
                                  "context_policy": generation.context_policy_from(self.conversation.settings)}
        if self.chat_template:
            params["chat_template"] = self.chat_template
        if self.conversation.settings.get(DOCS_KEY):
            params["docs"] = {"collection": self.conversation.settings[DOCS_KEY]}
        self.tools.attach(params, [m for m in messages if m.id != reply_id], parts)
        if self.conversation.settings.get("speculate"):  # the chat settings' choice; else the worker's saved default
            params["speculate"] = str(self.conversation.settings["speculate"])
        prefs = {"context_length": self.context_length or None, "kv_policy": self.conversation.settings.get("kv_policy")}
        if any(prefs.values()):
            params["prefs"] = {k: v for k, v in prefs.items() if v}
        return params

    def _run(self, reply_id: int) -> None:
        self._reload()
        self.tools.when_ready(lambda: self.replies.start(self.store, reply_id, self.request_params(reply_id)))
        self.refresh_list()

    def continue_reply(self) -> None:
        """Every tool call of the last reply has its result: the model goes on in a new reply."""
        if self.conversation is not None and not self.replies.busy:
            self._run(self.store.add_message(self.conversation.id, Role.ASSISTANT, state=MessageState.STREAMING).id)

    # ---- settings, model, files ---------------------------------------------------------------

    def apply_settings(self, *, system_prompt: str | None = None, settings: dict[str, Any] | None = None) -> None:
        """Store the conversation's system prompt and/or generation settings; the next request uses them."""
        assert self.conversation is not None
        changes: dict[str, Any] = {}
        if system_prompt is not None:
            changes["system_prompt"] = system_prompt
        if settings is not None:
            docs = self.conversation.settings.get(DOCS_KEY)
            changes["settings"] = {**({DOCS_KEY: docs} if docs and DOCS_KEY not in settings else {}), **settings}
        self.conversation = self.store.update_conversation(self.conversation.id, **changes)
        self.sampling = generation.sampling_from(self.conversation.settings)
        self.context_length = generation.context_length_from(self.conversation.settings)

    @property
    def chat_template(self) -> str:
        """This conversation's template override ("" = the model's own)."""
        return generation.chat_template_from(self.conversation.settings if self.conversation else None)

    def set_chat_template(self, template: str) -> None:
        assert self.conversation is not None
        self.apply_settings(settings=dict(self.conversation.settings, **{generation.TEMPLATE_KEY: template.strip()}))

    def _engine_idle(self, answer: Callable[[float | None], None]) -> None:
        """How long the loaded model has been idle, by the engine's count (API requests included)."""
        self._bridge.run(Method.ENGINE_STATUS, owner=self).on_success(
            lambda status: answer(status.get("idle_s"))).on_failure(lambda failure: answer(None))

    def set_idle_unload(self, minutes: int) -> None:
        """Unload the model after `minutes` without a request (0 = never); kept for every chat."""
        generation.save_idle_unload_minutes(minutes)
        self.idle.set_minutes(minutes)

    def apply_preset(self, name: str) -> None:
        self.apply_settings(system_prompt=generation.load_presets()[name])

    def unload_model(self, *, hint: str = "Model unloaded; its memory is free.") -> None:
        self._bridge.run(Method.ENGINE_UNLOAD, owner=self).on_success(lambda result: self._unloaded(hint))

    def export_file(self, path: str) -> None:
        assert self.conversation is not None
        transfer.export_conversation(self.store, self.conversation.id, path)

    def import_file(self, path: str) -> Conversation:
        conversation = transfer.import_conversation(self.store, path)
        self._show(conversation)
        return conversation

    # ---- documents ----------------------------------------------------------------------------

    def set_documents(self, name: str | None) -> None:
        """Answer this conversation from the collection ``name`` (None: from no documents)."""
        assert self.conversation is not None
        settings = {k: v for k, v in self.conversation.settings.items() if k != DOCS_KEY}
        self.conversation = self.store.update_conversation(self.conversation.id, settings={**settings, **({DOCS_KEY: name} if name else {})})
        self.docs.set_collection(name)

    def attach_paths(self, paths: list[str]) -> None:
        """Attach files and folders to the conversation (its collection is made when it has none)."""
        self.docs.attach(paths)

    def open_link(self, row: int, anchor: str) -> PassageView | None:
        """A link in the transcript: a reply's source ([n] or the sources line) opens its passage."""
        source = source_for_anchor(anchor, self.transcript.message(row).stats.get("sources") or [])
        if source is None:
            return None
        view = PassageView(source, self)
        view.setModal(False)
        view.show()
        self.passage_view = view
        return view

    def dragEnterEvent(self, event: Any) -> None:
        if event.mimeData().hasUrls() and any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: Any) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.attach_paths(paths)

    def _choose_model(self, model_id: str | None) -> None:
        self.model = model_id

    def _send_or_stop(self) -> None:
        if self.busy:
            self.stop()
        else:
            self.send(self.input.toPlainText())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.input and event.type() == QEvent.Type.KeyPress:
            key = QKeyEvent(event)  # type: ignore[call-overload]
            if key.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not key.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self._send_or_stop()
                return True
        return super().eventFilter(watched, event)

    # ---- events -------------------------------------------------------------------------------

    def _row_changed(self, row: int) -> None:
        self._delegate.sizeHintChanged.emit(self.transcript.index(row))
        self.view.scrollToBottom()

    def _on_reply_finished(self, meta: dict[str, Any]) -> None:
        if meta.get("context"):
            self.context_bar.show_context(meta["context"])
        if meta.get("template") == "fallback":
            self.transcript.append(ChatMessage("notice", FALLBACK_NOTICE))
        self.refresh_list()

    def _unloaded(self, hint: str) -> None:
        self.hint.setText(hint)
        self.sig_status_changed.emit()

    def _on_worker_died(self, why: str) -> None:
        self.transcript.append(ChatMessage("notice", f"{why} Your conversation is kept."))
        self.hint.setText("Restarting the runtime…")

    def _on_worker_restarted(self) -> None:
        self.hint.setText("The runtime was restarted. You can continue the conversation.")

    def _set_busy(self, busy: bool) -> None:
        self.send_button.setText("Stop" if busy else "Send")
        self.input.setReadOnly(busy)
